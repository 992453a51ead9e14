// Package vaultrecords reads, through Vault's API, what the Vault auth
// method (plugins/vaultauth) keeps of its decisions: the receipts, the node
// records with the evidence of each node's last verified login, and the
// mount's trust configuration, in the broker's own types (store.Receipt,
// store.NodeRecord, verify.Opts). keybroker's `receipts list` and `policy
// eval` read Vault-attested nodes with it exactly as they read the broker's
// store.
//
// It also exports the auth method's receipt chain with its signed
// checkpoints (ExportChain) for `receipts verify`, and reads the public key
// of its checkpoints (CheckpointKey).
//
// It needs a token with read and list on the mount's receipts/ and nodes/
// paths (and read on config for the trust configuration; read and list on
// checkpoints/, read on checkpoint-key for the chain, and update on
// checkpoints to have the head signed before an export), for example:
//
//	path "auth/tpm/receipts/*"    { capabilities = ["read", "list"] }
//	path "auth/tpm/nodes/*"       { capabilities = ["read", "list"] }
//	path "auth/tpm/config"        { capabilities = ["read"] }
//	path "auth/tpm/checkpoints/*" { capabilities = ["read", "list"] }
//	path "auth/tpm/checkpoints"   { capabilities = ["list", "update"] }
//	path "auth/tpm/checkpoint-key" { capabilities = ["read"] }
package vaultrecords

import (
	"cmp"
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
	"strconv"
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
	var out []store.Receipt
	err = r.eachReceipt(ctx, opts.Before, func(rec store.Receipt, _ []byte) bool {
		if opts.EKHash == "" || rec.EKHash == opts.EKHash {
			out = append(out, rec)
		}
		return len(out) < limit
	})
	return out, err
}

// eachReceipt reads the receipts whose IDs sort before before (all when
// empty), newest first, and calls fn with each and, for a chained one,
// its stored canonical encoding, until fn answers false.
func (r *Reader) eachReceipt(ctx context.Context, before string, fn func(rec store.Receipt, encoded []byte) bool) error {
	ids, err := r.list(ctx, "receipts/")
	if err != nil {
		return err
	}
	slices.Sort(ids)
	slices.Reverse(ids) // IDs begin with their time
	for _, id := range ids {
		if before != "" && id >= before {
			continue
		}
		data, err := r.read(ctx, "receipts/"+id)
		if err != nil {
			return err
		}
		if data == nil {
			continue // deleted since the list
		}
		rec, encoded, err := receiptOf(data)
		if err != nil {
			return fmt.Errorf("receipt %s: %w", id, err)
		}
		if !fn(rec, encoded) {
			return nil
		}
	}
	return nil
}

// ExportChain exports the auth method's receipt chain for "keybroker
// receipts verify", as broker.ExportChain exports the broker's: it has the
// auth method sign its chain head (a write to checkpoints, skipped when
// the token may not), then gives emitReceipt every receipt, newest first,
// in the bytes its chain hash covers (a chained receipt's stored encoding
// as it is, one from before the chain encoded by store.EncodeReceipt), and
// emitCheckpoint every checkpoint. Receipts chained after the newest
// checkpoint are left out. It returns how many receipts it exported.
func (r *Reader) ExportChain(ctx context.Context, emitReceipt func([]byte) error, emitCheckpoint func(store.Checkpoint) error) (int, error) {
	full := r.mount + "/checkpoints"
	if _, err := r.c.Logical().WriteWithContext(ctx, full, nil); err != nil {
		var re *api.ResponseError
		if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
			return 0, vaultError("update", full, err)
		}
	}
	cps, err := r.Checkpoints(ctx)
	if err != nil {
		return 0, err
	}
	var through uint64
	for _, c := range cps {
		through = max(through, c.Seq)
	}
	n := 0
	var emitErr error
	err = r.eachReceipt(ctx, "", func(rec store.Receipt, encoded []byte) bool {
		if through > 0 && rec.Seq > through {
			return true
		}
		if encoded == nil {
			encoded, emitErr = store.EncodeReceipt(&rec)
		}
		if emitErr == nil {
			emitErr = emitReceipt(encoded)
		}
		if emitErr == nil {
			n++
		}
		return emitErr == nil
	})
	if err = cmp.Or(err, emitErr); err != nil {
		return n, err
	}
	for _, c := range cps {
		if err := emitCheckpoint(c); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Checkpoints returns the signed checkpoints of the auth method's receipt
// chain, lowest seq first. Each is one read.
func (r *Reader) Checkpoints(ctx context.Context) ([]store.Checkpoint, error) {
	seqs, err := r.list(ctx, "checkpoints/")
	if err != nil {
		return nil, err
	}
	slices.Sort(seqs) // 20 digits each
	var out []store.Checkpoint
	for _, seq := range seqs {
		data, err := r.read(ctx, "checkpoints/"+seq)
		if err != nil {
			return nil, err
		}
		if data == nil {
			continue
		}
		var w struct {
			Seq       string `json:"seq"`
			Head      string `json:"head"`
			Time      string `json:"time"`
			KeyID     string `json:"key_id"`
			Signature []byte `json:"signature"`
		}
		if err := remarshal(data, &w); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", seq, err)
		}
		c := store.Checkpoint{Head: w.Head, KeyID: w.KeyID, Signature: w.Signature}
		c.Seq, err = strconv.ParseUint(w.Seq, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s: seq %q is not a number", seq, w.Seq)
		}
		if c.Time, err = time.Parse(time.RFC3339Nano, w.Time); err != nil {
			return nil, fmt.Errorf("checkpoint %s: time %q: %w", seq, w.Time, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// CheckpointKey returns the PEM public key that verifies the auth method's
// checkpoints, as its checkpoint-key path answers it.
func (r *Reader) CheckpointKey(ctx context.Context) ([]byte, error) {
	data, err := r.read(ctx, "checkpoint-key")
	if err != nil {
		return nil, err
	}
	key, _ := data["public_key"].(string)
	if key == "" {
		return nil, fmt.Errorf("%s answers no checkpoint key (is it keybroker's auth method, of a version that chains receipts?)", r.mount)
	}
	return []byte(key), nil
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
// pcr_banks, identity_log_pcr) and parses it with verify.ParseOpts, as the auth method does:
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
		AllowSHA1      bool     `json:"allow_sha1"`
		PCRBanks       []string `json:"pcr_banks"`
		IdentityLogPCR *int     `json:"identity_log_pcr"`
	}
	if err := remarshal(data, &c); err != nil {
		return verify.Opts{}, fmt.Errorf("%s/config: %w", r.mount, err)
	}
	oc := verify.OptsConfig{AllowSHA1: c.AllowSHA1, IdentityLogPCR: c.IdentityLogPCR}
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

// receiptOf is a receipt as receipts/<id> answers it, and for a chained
// receipt its stored canonical encoding ("encoded", base64), which is
// what it is decoded from.
func receiptOf(data map[string]any) (store.Receipt, []byte, error) {
	if s, ok := data["encoded"].(string); ok {
		encoded, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return store.Receipt{}, nil, errors.New("encoded is not base64")
		}
		var rec store.Receipt
		if err := json.Unmarshal(encoded, &rec); err != nil {
			return store.Receipt{}, nil, fmt.Errorf("encoded is not a receipt: %w", err)
		}
		return rec, encoded, nil
	}
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
		return store.Receipt{}, nil, err
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil {
		return store.Receipt{}, nil, fmt.Errorf("time %q: %w", w.Time, err)
	}
	digest, err := hex.DecodeString(w.QuoteDigest)
	if err != nil {
		return store.Receipt{}, nil, fmt.Errorf("quote_digest %q is not hex", w.QuoteDigest)
	}
	if len(digest) == 0 {
		digest = nil
	}
	return store.Receipt{ID: w.ID, Time: t, ChallengeID: w.ChallengeID, EKHash: w.EKHash, Allowed: w.Allowed,
		Check: w.Check, Policies: w.Policies, PolicyHash: w.PolicyHash, Failures: w.Failures,
		DenyListed: w.DenyListed, QuoteDigest: digest}, nil, nil
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
