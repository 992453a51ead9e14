// Package vaultrecords reads, through Vault's API, what the Vault auth
// method (plugins/vaultauth) keeps of its decisions: the receipts, the node
// records with the evidence of each node's last verified login, and the
// mount's trust configuration, in the broker's own types (store.Receipt,
// store.NodeRecord, verify.Opts). keybroker's `receipts list` and `policy
// eval` read Vault-attested nodes with it exactly as they read the broker's
// store.
//
// It needs a token with read and list on the mount's receipts/ and nodes/
// paths (and read on config for the trust configuration), for example:
//
//	path "auth/tpm/receipts/*" { capabilities = ["read", "list"] }
//	path "auth/tpm/nodes/*"    { capabilities = ["read", "list"] }
//	path "auth/tpm/config"     { capabilities = ["read"] }
package vaultrecords

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
)

// MaxResponseBytes bounds each answer read from Vault: a node record at its
// largest (store.MaxNodeRecordBytes), base64-encoded in Vault's JSON,
// fits with room to spare.
const MaxResponseBytes = 8 << 20

// Opts configure New. The zero value reads Vault's environment as the
// vault CLI does (VAULT_ADDR, VAULT_TOKEN or else ~/.vault-token,
// VAULT_CACERT, VAULT_NAMESPACE…); Mount is required.
type Opts struct {
	// Address overrides VAULT_ADDR.
	Address string
	// Token overrides VAULT_TOKEN.
	Token string
	// Mount is the auth method's path, such as "auth/tpm".
	Mount string
	// Timeout bounds each request; default 30s.
	Timeout time.Duration
}

// Reader reads one auth method's records.
type Reader struct {
	c     *api.Client
	mount string
}

// New returns a Reader of the auth method mounted at opts.Mount.
func New(opts Opts) (*Reader, error) {
	mount := strings.Trim(opts.Mount, "/")
	if mount == "" {
		return nil, errors.New("the auth method's mount (such as auth/tpm) is required")
	}
	if !strings.HasPrefix(mount, "auth/") {
		mount = "auth/" + mount
	}
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("unable to read Vault's environment: %w", cfg.Error)
	}
	if opts.Address != "" {
		cfg.Address = opts.Address
	}
	cfg.Timeout = opts.Timeout
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	cfg.HttpClient.Transport = limitedTransport{cfg.HttpClient.Transport}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("unable to make a Vault client: %w", err)
	}
	if opts.Token != "" {
		c.SetToken(opts.Token)
	}
	if c.Token() == "" {
		tok, err := tokenFile()
		if err != nil {
			return nil, err
		}
		c.SetToken(tok)
	}
	return &Reader{c: c, mount: mount}, nil
}

// maxTokenFile bounds ~/.vault-token.
const maxTokenFile = 4 << 10

// tokenFile reads the token `vault login` left in ~/.vault-token.
func tokenFile() (string, error) {
	const none = "no Vault token: set VAULT_TOKEN or log in with 'vault login'"
	home, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New(none)
	}
	f, err := os.Open(filepath.Join(home, ".vault-token"))
	if err != nil {
		return "", errors.New(none)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	switch tok := strings.TrimSpace(string(b)); {
	case err != nil:
		return "", fmt.Errorf("unable to read ~/.vault-token: %w", err)
	case len(b) > maxTokenFile:
		return "", errors.New("~/.vault-token is too large to hold a token")
	case tok == "":
		return "", errors.New(none)
	default:
		return tok, nil
	}
}

// ListReceipts returns the auth method's receipts newest first, as
// store.Receipts.ListReceipts does: at most opts.Limit, only opts.EKHash's
// when set, only those before opts.Before when set. Each receipt is one
// read.
func (r *Reader) ListReceipts(ctx context.Context, opts store.ListOpts) ([]store.Receipt, error) {
	limit, err := listLimit(opts.Limit)
	if err != nil {
		return nil, err
	}
	ids, err := r.list(ctx, "receipts/")
	if err != nil {
		return nil, err
	}
	slices.Sort(ids)
	slices.Reverse(ids) // IDs begin with their time
	var out []store.Receipt
	for _, id := range ids {
		if len(out) == limit {
			break
		}
		if opts.Before != "" && id >= opts.Before {
			continue
		}
		data, err := r.read(ctx, "receipts/"+id)
		if err != nil {
			return nil, err
		}
		if data == nil {
			continue // deleted since the list
		}
		rec, err := receiptOf(data)
		if err != nil {
			return nil, fmt.Errorf("receipt %s: %w", id, err)
		}
		if opts.EKHash != "" && rec.EKHash != opts.EKHash {
			continue
		}
		out = append(out, rec)
	}
	return out, nil
}

// ListNodes returns node records in EK hash order, evidence included, as
// store.Nodes.ListNodes does.
func (r *Reader) ListNodes(ctx context.Context, opts store.ListNodesOpts) ([]store.NodeRecord, error) {
	limit, err := listLimit(opts.Limit)
	if err != nil {
		return nil, err
	}
	hashes, err := r.list(ctx, "nodes/")
	if err != nil {
		return nil, err
	}
	slices.Sort(hashes)
	var out []store.NodeRecord
	for _, h := range hashes {
		if len(out) == limit {
			break
		}
		if h <= opts.After {
			continue
		}
		n, err := r.GetNode(ctx, h)
		if errors.Is(err, store.ErrNotFound) {
			continue // forgotten since the list
		}
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// GetNode returns the record of the node with this EK hash, evidence
// included, or an error wrapping store.ErrNotFound.
func (r *Reader) GetNode(ctx context.Context, ekHash string) (store.NodeRecord, error) {
	if !verify.ValidEKHash(ekHash) {
		return store.NodeRecord{}, fmt.Errorf("%q is not an EK hash (64 lowercase hex digits)", ekHash)
	}
	data, err := r.read(ctx, "nodes/"+ekHash)
	switch {
	case err != nil:
		return store.NodeRecord{}, err
	case data == nil:
		return store.NodeRecord{}, fmt.Errorf("%s has no record of node %s: %w", r.mount, ekHash, store.ErrNotFound)
	}
	s, _ := data["record"].(string)
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || s == "" {
		return store.NodeRecord{}, fmt.Errorf("node %s: Vault's answer holds no base64 record (is %s keybroker's auth method?)", ekHash, r.mount)
	}
	var n store.NodeRecord
	if err := json.Unmarshal(raw, &n); err != nil {
		return store.NodeRecord{}, fmt.Errorf("node %s: the record is not a node record: %w", ekHash, err)
	}
	if n.EKHash != ekHash {
		return store.NodeRecord{}, fmt.Errorf("node %s: the record read is of node %q", ekHash, n.EKHash)
	}
	return n, nil
}

// GetDenial returns the deny-list entry of the node with this EK hash, as
// nodes/<ek_hash> answers it, or an error wrapping store.ErrNotFound when
// the node is not on the deny list. (The auth method answers only for
// nodes with a record.)
func (r *Reader) GetDenial(ctx context.Context, ekHash string) (store.Denial, error) {
	if !verify.ValidEKHash(ekHash) {
		return store.Denial{}, fmt.Errorf("%q is not an EK hash (64 lowercase hex digits)", ekHash)
	}
	data, err := r.read(ctx, "nodes/"+ekHash)
	if err != nil {
		return store.Denial{}, err
	}
	raw, ok := data["denial"]
	if !ok || raw == nil {
		return store.Denial{}, fmt.Errorf("node %s is not on %s's deny list: %w", ekHash, r.mount, store.ErrNotFound)
	}
	var w struct {
		Check     string `json:"check"`
		ReceiptID string `json:"receipt_id"`
		Time      string `json:"time"`
	}
	if err := remarshal(raw, &w); err != nil {
		return store.Denial{}, fmt.Errorf("node %s: denial: %w", ekHash, err)
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil {
		return store.Denial{}, fmt.Errorf("node %s: denial time %q: %w", ekHash, w.Time, err)
	}
	return store.Denial{EKHash: ekHash, Time: t, ReceiptID: w.ReceiptID, Check: w.Check}, nil
}

// VerifyOpts reads the mount's config (ek_allow, ek_ca, allow_sha1,
// pcr_banks) and parses it with verify.ParseOpts, as the auth method does:
// the trust its logins were verified with.
func (r *Reader) VerifyOpts(ctx context.Context) (verify.Opts, error) {
	data, err := r.read(ctx, "config")
	switch {
	case err != nil:
		return verify.Opts{}, err
	case data == nil:
		return verify.Opts{}, fmt.Errorf("%s is not configured", r.mount)
	}
	var c struct {
		EKAllow []string `json:"ek_allow"`
		EKCA    map[string]struct {
			Roots         string `json:"roots"`
			Intermediates string `json:"intermediates"`
		} `json:"ek_ca"`
		AllowSHA1 bool     `json:"allow_sha1"`
		PCRBanks  []string `json:"pcr_banks"`
	}
	if err := remarshal(data, &c); err != nil {
		return verify.Opts{}, fmt.Errorf("%s/config: %w", r.mount, err)
	}
	oc := verify.OptsConfig{AllowSHA1: c.AllowSHA1}
	if len(c.EKAllow) > 0 { // the config read answers [] for none
		oc.EKAllow = c.EKAllow
	}
	if len(c.PCRBanks) > 0 {
		oc.PCRBanks = c.PCRBanks
	}
	names := make([]string, 0, len(c.EKCA))
	for name := range c.EKCA {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		ca := c.EKCA[name]
		oc.EKCAs = append(oc.EKCAs, verify.CAConfig{Name: name, Roots: verify.PEMBundle(ca.Roots), Intermediates: verify.PEMBundle(ca.Intermediates)})
	}
	o, problems := verify.ParseOpts(oc)
	if len(problems) > 0 {
		errs := make([]error, len(problems))
		for i, p := range problems {
			errs[i] = p
		}
		return verify.Opts{}, fmt.Errorf("%s/config does not parse: %w", r.mount, errors.Join(errs...))
	}
	return o, nil
}

// read reads path under the mount: nil data when Vault has nothing there.
func (r *Reader) read(ctx context.Context, path string) (map[string]any, error) {
	full := r.mount + "/" + path
	s, err := r.c.Logical().ReadWithContext(ctx, full)
	if err != nil {
		return nil, vaultError("read", full, err)
	}
	if s == nil {
		return nil, nil
	}
	return s.Data, nil
}

// list lists path under the mount: none when Vault has nothing there.
func (r *Reader) list(ctx context.Context, path string) ([]string, error) {
	full := r.mount + "/" + path
	s, err := r.c.Logical().ListWithContext(ctx, full)
	if err != nil {
		return nil, vaultError("list", full, err)
	}
	if s == nil {
		return nil, nil
	}
	keys, _ := s.Data["keys"].([]any)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if s, ok := k.(string); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// vaultError says what Vault answered to capability (read, list) on path.
func vaultError(capability, path string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusForbidden:
			return fmt.Errorf("Vault refused: token lacks %s on %s (403)", capability, path)
		case http.StatusServiceUnavailable:
			return fmt.Errorf("Vault is unavailable (sealed or not active): %s %s (503)", capability, path)
		}
		return fmt.Errorf("Vault answered %d to %s %s: %s", re.StatusCode, capability, path, strings.Join(re.Errors, "; "))
	}
	return fmt.Errorf("unable to %s %s from Vault: %w", capability, path, err)
}

// receiptOf is a receipt as receipts/<id> answers it.
func receiptOf(data map[string]any) (store.Receipt, error) {
	var w struct {
		ID          string   `json:"id"`
		Time        string   `json:"time"`
		ChallengeID string   `json:"challenge_id"`
		EKHash      string   `json:"ek_hash"`
		Allowed     bool     `json:"allowed"`
		Check       string   `json:"check"`
		Policies    []string `json:"policies"`
		PolicyHash  string   `json:"policy_hash"`
		Failures    []string `json:"failures"`
		DenyListed  bool     `json:"deny_listed"`
		QuoteDigest string   `json:"quote_digest"`
	}
	if err := remarshal(data, &w); err != nil {
		return store.Receipt{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil {
		return store.Receipt{}, fmt.Errorf("time %q: %w", w.Time, err)
	}
	digest, err := hex.DecodeString(w.QuoteDigest)
	if err != nil {
		return store.Receipt{}, fmt.Errorf("quote_digest %q is not hex", w.QuoteDigest)
	}
	if len(digest) == 0 {
		digest = nil
	}
	return store.Receipt{ID: w.ID, Time: t, ChallengeID: w.ChallengeID, EKHash: w.EKHash, Allowed: w.Allowed,
		Check: w.Check, Policies: w.Policies, PolicyHash: w.PolicyHash, Failures: w.Failures,
		DenyListed: w.DenyListed, QuoteDigest: digest}, nil
}

// remarshal decodes v, a value of Vault's JSON answer, into out.
func remarshal(v, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// listLimit applies store's list limits.
func listLimit(limit int) (int, error) {
	switch {
	case limit < 0:
		return 0, errors.New("limit cannot be negative")
	case limit == 0:
		return store.DefaultListLimit, nil
	case limit > store.MaxListLimit:
		return store.MaxListLimit, nil
	}
	return limit, nil
}

// limitedTransport fails an answer larger than MaxResponseBytes.
type limitedTransport struct{ base http.RoundTripper }

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: MaxResponseBytes, path: req.URL.Path}
	return resp, nil
}

// ErrTooLarge is the error of an answer larger than MaxResponseBytes.
var ErrTooLarge = fmt.Errorf("Vault's answer is larger than %d MiB", MaxResponseBytes>>20)

type limitedBody struct {
	rc   io.ReadCloser
	left int64
	path string
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		if n, _ := b.rc.Read(one[:]); n > 0 {
			return 0, fmt.Errorf("%s: %w", b.path, ErrTooLarge)
		}
		return b.rc.Read(p)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
