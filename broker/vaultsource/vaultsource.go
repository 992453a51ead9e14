// Package vaultsource is the broker's client of the Vault that vault_kv,
// vault_pki and vault_token releases take their material from: it logs in
// (a token or AppRole), keeps its token alive in the background, reads KV
// version 2 secrets, has PKI roles issue certificates and token roles
// create tokens, and revokes what it had issued. Every failure it returns
// is an *Error that says whether Vault was unavailable or refused, without
// secrets.
package vaultsource

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

// Opts configure New. Address and one way to log in are required.
type Opts struct {
	Address   string
	CACert    string // PEM file that verifies Address; empty: the system's roots
	Namespace string
	// Token is the token to use; TokenFile, if Token is empty, holds it.
	Token     string
	TokenFile string
	// RoleID, SecretIDFile and AppRoleMount (default "approle") log in
	// with AppRole when RoleID is set; the broker logs in again when the
	// token can no longer be renewed.
	RoleID       string
	SecretIDFile string
	AppRoleMount string
	// Timeout bounds each request to Vault; default 10s.
	Timeout time.Duration
	Logger  *slog.Logger // default: discard
	// Observe, if set, is told of every call to Vault: its op (OpLogin,
	// OpRenew, OpKVRead, OpPKIIssue, OpPKIRevoke, OpTokenCreate,
	// OpTokenRole, OpTokenRevoke), its outcome (OutcomeOK,
	// OutcomeRefused, OutcomeUnavailable) and how long it took, negative
	// when not measured (renewals, which the Vault client's lifetime
	// watcher makes). A failure before Vault is asked (a file that cannot
	// be read) is not a call. It must not block.
	Observe func(op, outcome string, took time.Duration)
}

// Operations of Vault calls, as Opts.Observe names them.
const (
	OpLogin     = "login" // AppRole login or token lookup
	OpRenew     = "renew" // token renewal
	OpKVRead    = "kv_read"
	OpPKIIssue  = "pki_issue"
	OpPKIRevoke = "pki_revoke"
	// OpTokenCreate, OpTokenRole and OpTokenRevoke are vault_token
	// releases: a token role creating a token, a token role read (its
	// maximum TTL, for renewable tokens), a token revoked by its accessor.
	OpTokenCreate = "token_create"
	OpTokenRole   = "token_role_read"
	OpTokenRevoke = "token_revoke"
)

// Outcomes of Vault calls, as Opts.Observe names them.
const (
	OutcomeOK          = "ok"
	OutcomeRefused     = "refused"     // Vault answered with an error (Error.Unavailable false)
	OutcomeUnavailable = "unavailable" // Vault could not answer (Error.Unavailable)
)

// Client is a logged-in Vault client. Close stops its token renewal.
type Client struct {
	api  *api.Client
	opts Opts
	log  *slog.Logger
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// ReloginInterval is how long the renewal waits before trying an AppRole
// login again after one failed.
var ReloginInterval = 10 * time.Second

// New logs in to Vault and starts renewing the token's lease in the
// background (api.LifetimeWatcher), logging renewals and failures.
func New(ctx context.Context, opts Opts) (*Client, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.AppRoleMount == "" {
		opts.AppRoleMount = "approle"
	}
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("unable to configure the vault client: %w", cfg.Error)
	}
	cfg.Address, cfg.Timeout, cfg.MaxRetries = opts.Address, opts.Timeout, 0
	if opts.CACert != "" {
		if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: opts.CACert}); err != nil {
			return nil, fmt.Errorf("unable to load vault ca_cert: %w", err)
		}
	}
	cl, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("unable to create the vault client: %w", err)
	}
	cl.ClearToken() // never VAULT_TOKEN from the environment
	if opts.Namespace != "" {
		cl.SetNamespace(opts.Namespace)
	}
	c := &Client{api: cl, opts: opts, log: opts.Logger, stop: make(chan struct{})}
	auth, err := c.login(ctx)
	if err != nil {
		return nil, err
	}
	c.wg.Go(func() { c.renew(auth) })
	return c, nil
}

// login logs in and returns the token's auth for renewal; nil auth means
// the token does not expire or cannot be renewed.
func (c *Client) login(ctx context.Context) (_ *api.Secret, err error) {
	defer c.observe(OpLogin, time.Now(), &err)
	if c.opts.RoleID != "" {
		secretID, err := os.ReadFile(c.opts.SecretIDFile)
		if err != nil {
			return nil, fmt.Errorf("unable to read the approle secret_id: %w", err)
		}
		c.api.ClearToken()
		s, err := c.api.Logical().WriteWithContext(ctx, "auth/"+c.opts.AppRoleMount+"/login",
			map[string]any{"role_id": c.opts.RoleID, "secret_id": strings.TrimSpace(string(secretID))})
		clear(secretID)
		if err != nil {
			return nil, classify("approle login", err)
		}
		if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
			return nil, &Error{Op: "approle login", Reason: "answer holds no token"}
		}
		c.api.SetToken(s.Auth.ClientToken)
		c.log.Info("logged in to vault", "method", "approle", "ttl", time.Duration(s.Auth.LeaseDuration)*time.Second, "renewable", s.Auth.Renewable)
		return s, nil
	}
	token := c.opts.Token
	if token == "" {
		b, err := os.ReadFile(c.opts.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("unable to read the vault token_file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	c.api.SetToken(token)
	self, err := c.api.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, classify("token lookup", err)
	}
	ttl, _ := self.TokenTTL()
	renewable, _ := self.TokenIsRenewable()
	c.log.Info("logged in to vault", "method", "token", "ttl", ttl, "renewable", renewable)
	return &api.Secret{Auth: &api.SecretAuth{ClientToken: token, Renewable: renewable, LeaseDuration: int(ttl / time.Second)}}, nil
}

// renew keeps the token alive until Close: it renews the lease with a
// LifetimeWatcher and, with AppRole, logs in again when the token can no
// longer be renewed.
func (c *Client) renew(auth *api.Secret) {
	for {
		if auth.Auth.LeaseDuration == 0 {
			c.log.Info("the vault token does not expire; not renewing it")
			return
		}
		if !auth.Auth.Renewable && c.opts.RoleID == "" {
			c.log.Warn("the vault token is not renewable; vault releases fail once it expires", "ttl", time.Duration(auth.Auth.LeaseDuration)*time.Second)
			return
		}
		if auth.Auth.Renewable {
			w, err := c.api.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: auth})
			if err != nil {
				c.log.Error("unable to renew the vault token", "error", err)
				return
			}
			go w.Start()
			if !c.watch(w) {
				return
			}
		}
		if c.opts.RoleID == "" {
			c.log.Error("the vault token can no longer be renewed; vault releases fail until the broker has a new token")
			return
		}
		if !auth.Auth.Renewable {
			// A batch or non-renewable token: use most of it, then log in
			// again (not at once: that would loop on logins).
			wait := relogAfter(time.Duration(auth.Auth.LeaseDuration) * time.Second)
			c.log.Info("the vault token is not renewable; logging in again before it expires", "in", wait)
			select {
			case <-c.stop:
				return
			case <-time.After(wait):
			}
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
			a, err := c.login(ctx)
			cancel()
			if err == nil {
				auth = a
				break
			}
			c.log.Error("unable to log in to vault again", "error", err, "retry_in", ReloginInterval)
			select {
			case <-c.stop:
				return
			case <-time.After(ReloginInterval):
			}
		}
	}
}

// relogAfter is when to replace a non-renewable token of lifetime ttl: at
// two thirds of it, and not sooner than a second.
func relogAfter(ttl time.Duration) time.Duration {
	return max(ttl*2/3, time.Second)
}

// watch reports renewals until w is done (true) or Close (false).
func (c *Client) watch(w *api.LifetimeWatcher) bool {
	defer w.Stop()
	for {
		select {
		case <-c.stop:
			return false
		case r := <-w.RenewCh():
			c.report(OpRenew, OutcomeOK, -1)
			c.log.Info("vault token renewed", "ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second)
		case err := <-w.DoneCh():
			if err != nil {
				c.report(OpRenew, outcome(classify("token renewal", err)), -1)
				c.log.Error("vault token renewal failed", "error", err)
			} else {
				c.log.Warn("the vault token reached its maximum TTL")
			}
			return true
		}
	}
}

// Close stops the token renewal.
func (c *Client) Close() {
	c.once.Do(func() { close(c.stop) })
	c.wg.Wait()
}

// Error is a failed Vault request. Unavailable says Vault could not answer
// (unreachable, sealed, a server error); otherwise it refused (permission
// denied, not found, a bad request). Reason is short and holds no secret.
type Error struct {
	Op          string
	Unavailable bool
	Reason      string
	Err         error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("vault %s: %s", e.Op, e.Reason)
	}
	return fmt.Sprintf("vault %s: %s: %v", e.Op, e.Reason, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// outcome is the Opts.Observe outcome of a call that failed with e.
func outcome(e error) string {
	var ve *Error
	if errors.As(e, &ve) && !ve.Unavailable {
		return OutcomeRefused
	}
	return OutcomeUnavailable
}

// observe reports to Opts.Observe the call of op that started at start and
// ended with *err: deferred with the call's named error. An error that is
// not an *Error is the broker's own, before Vault was asked: no call.
func (c *Client) observe(op string, start time.Time, err *error) {
	if c.opts.Observe == nil {
		return
	}
	var ve *Error
	switch {
	case *err == nil:
		c.opts.Observe(op, OutcomeOK, time.Since(start))
	case errors.As(*err, &ve):
		c.opts.Observe(op, outcome(ve), time.Since(start))
	}
}

// report tells Opts.Observe of a call.
func (c *Client) report(op, outcome string, took time.Duration) {
	if c.opts.Observe != nil {
		c.opts.Observe(op, outcome, took)
	}
}

// classify turns an error from the Vault client into an *Error.
func classify(op string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch code := re.StatusCode; {
		case code == 503:
			return &Error{Op: op, Unavailable: true, Reason: "sealed or not active (503)", Err: err}
		case code >= 500:
			return &Error{Op: op, Unavailable: true, Reason: fmt.Sprintf("server error (%d)", code), Err: err}
		case code == 403:
			return &Error{Op: op, Reason: "permission denied (403)", Err: err}
		case code == 404:
			return &Error{Op: op, Reason: "not found (404)", Err: err}
		default:
			return &Error{Op: op, Reason: fmt.Sprintf("refused (%d)", code), Err: err}
		}
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &Error{Op: op, Unavailable: true, Reason: "unreachable", Err: err}
	}
	return &Error{Op: op, Unavailable: true, Reason: "unreachable", Err: err}
}

// KVSecret is one version of a KV version 2 secret.
type KVSecret struct {
	Data    map[string]string // values that are not strings are JSON
	Version int64
}

// ReadKV reads the latest version of the KV version 2 secret at path
// ("<mount>/data/<key>").
func (c *Client) ReadKV(ctx context.Context, path string) (_ *KVSecret, err error) {
	defer c.observe(OpKVRead, time.Now(), &err)
	s, err := c.api.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return nil, classify("kv read", err)
	}
	if s == nil || s.Data == nil {
		return nil, &Error{Op: "kv read", Reason: "not found (404)"}
	}
	data, ok := s.Data["data"].(map[string]any)
	if !ok {
		return nil, &Error{Op: "kv read", Reason: "no data (deleted, or not a KV version 2 path)"}
	}
	out := &KVSecret{Data: make(map[string]string, len(data))}
	for k, v := range data {
		if str, ok := v.(string); ok {
			out.Data[k] = str
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, &Error{Op: "kv read", Reason: fmt.Sprintf("value of %q cannot be encoded", k)}
		}
		out.Data[k] = string(b)
	}
	if md, ok := s.Data["metadata"].(map[string]any); ok {
		if n, ok := md["version"].(json.Number); ok {
			out.Version, _ = n.Int64()
		}
	}
	return out, nil
}

// CertRequest is what a PKI role is asked to issue.
type CertRequest struct {
	CommonName  string // default: the first of DNSNames
	DNSNames    []string
	IPAddresses []net.IP
	TTL         time.Duration
}

// Certificate is a certificate a PKI role issued, with its key.
type Certificate struct {
	KeyPEM         []byte // PKCS#8
	CertificatePEM []byte
	ChainPEM       []byte // issuing CA first
	Serial         string // lowercase hex, no colons
	NotAfter       time.Time
}

// IssueCertificate has the PKI role at path ("<mount>/issue/<role>")
// issue a certificate and its key.
func (c *Client) IssueCertificate(ctx context.Context, path string, req CertRequest) (_ *Certificate, err error) {
	defer c.observe(OpPKIIssue, time.Now(), &err)
	cn := req.CommonName
	if cn == "" && len(req.DNSNames) > 0 {
		cn = req.DNSNames[0]
	}
	ips := make([]string, len(req.IPAddresses))
	for i, ip := range req.IPAddresses {
		ips[i] = ip.String()
	}
	data := map[string]any{
		"common_name":        cn,
		"private_key_format": "pkcs8",
		"format":             "pem",
	}
	if len(req.DNSNames) > 0 {
		data["alt_names"] = strings.Join(req.DNSNames, ",")
	}
	if len(ips) > 0 {
		data["ip_sans"] = strings.Join(ips, ",")
	}
	if req.TTL > 0 {
		data["ttl"] = seconds(req.TTL)
	}
	s, err := c.api.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		return nil, classify("pki issue", err)
	}
	if s == nil || s.Data == nil {
		return nil, &Error{Op: "pki issue", Reason: "empty answer"}
	}
	str := func(k string) string { v, _ := s.Data[k].(string); return v }
	out := &Certificate{KeyPEM: []byte(str("private_key")), CertificatePEM: []byte(str("certificate"))}
	if chain, ok := s.Data["ca_chain"].([]any); ok && len(chain) > 0 {
		var b strings.Builder
		for _, c := range chain {
			if cs, ok := c.(string); ok {
				b.WriteString(strings.TrimSpace(cs) + "\n")
			}
		}
		out.ChainPEM = []byte(b.String())
	} else if ca := str("issuing_ca"); ca != "" {
		out.ChainPEM = []byte(strings.TrimSpace(ca) + "\n")
	}
	block, _ := pem.Decode(out.CertificatePEM)
	if block == nil || len(out.KeyPEM) == 0 {
		return nil, &Error{Op: "pki issue", Reason: "answer lacks the certificate or key"}
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, &Error{Op: "pki issue", Reason: "answer holds a malformed certificate", Err: err}
	}
	out.Serial = strings.ReplaceAll(strings.ToLower(str("serial_number")), ":", "")
	if out.Serial == "" {
		out.Serial = cert.SerialNumber.Text(16)
	}
	out.NotAfter = cert.NotAfter
	return out, nil
}

// RevokeCertificate revokes a certificate that the PKI role at issuePath
// ("<mount>/issue/<role>") issued, by its serial (lowercase hex, as
// Certificate.Serial): the broker revokes what it had Vault issue for a
// decision it then could not release.
func (c *Client) RevokeCertificate(ctx context.Context, issuePath, serial string) (err error) {
	i := strings.LastIndex(issuePath, "/issue/")
	if i <= 0 {
		return &Error{Op: "pki revoke", Reason: fmt.Sprintf("%q is not a <mount>/issue/<role> path", issuePath)}
	}
	defer c.observe(OpPKIRevoke, time.Now(), &err)
	if len(serial)%2 == 1 {
		serial = "0" + serial
	}
	pairs := make([]string, 0, len(serial)/2)
	for j := 0; j < len(serial); j += 2 {
		pairs = append(pairs, serial[j:j+2])
	}
	if _, err := c.api.Logical().WriteWithContext(ctx, issuePath[:i]+"/revoke", map[string]any{"serial_number": strings.Join(pairs, ":")}); err != nil {
		return classify("pki revoke", err)
	}
	return nil
}
