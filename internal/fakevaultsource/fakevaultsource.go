// Package fakevaultsource is a fake of the Vault the broker takes vault_kv,
// vault_pki and vault_token releases from (broker/vaultsource): an HTTPS
// server on loopback that answers token lookup-self, AppRole login at
// auth/approle/login, KV version 2 reads under secret/data/, PKI issues
// under pki/issue/ and revocations at pki/revoke, token role reads at
// auth/token/roles/<role>, token creation at auth/token/create/<role> and
// revocation at auth/token/revoke-accessor, and can be told to fail (every
// request or those under a path) or stop listening. It is for
// the broker's error mapping and the agent's file writing; the fake of the
// TPM auth method is internal/fakevault, and the real Vault is tested in
// e2e/vault.
package fakevaultsource

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/vaultsource"
)

// Token is the token the fake accepts; AppRole logins with RoleID and
// SecretID get it.
const (
	Token    = "hvs.fake-token"
	RoleID   = "fake-role-id"
	SecretID = "fake-secret-id"
)

// Fake is a fake Vault.
type Fake struct {
	URL    string
	CAFile string // verifies URL
	// Secret is what every KV read returns, at Version.
	Secret  map[string]any
	Version int

	srv    *httptest.Server
	mu     sync.Mutex
	status int // non-zero: every request but lookup-self fails with it
	// failPrefix, failStatus: requests under failPrefix fail with it.
	failPrefix string
	failStatus int
	paths      []string
	revoked    []string // serial numbers, as pki/revoke received them
	// TokenLease, if set, is the lease the fake answers for the tokens it
	// creates, instead of the ttl asked for.
	TokenLease time.Duration
	// RoleMaxTTL is the token_explicit_max_ttl of every token role.
	RoleMaxTTL time.Duration
	tokens     []CreatedToken
	revokedAcc []string
}

// CreatedToken is a token the fake created: its role, the request's body,
// and its token and accessor.
type CreatedToken struct {
	Role            string
	Request         map[string]any
	Token, Accessor string
}

// Tokens lists the tokens auth/token/create/<role> created.
func (f *Fake) Tokens() []CreatedToken {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]CreatedToken(nil), f.tokens...)
}

// RevokedAccessors lists the accessors auth/token/revoke-accessor was asked
// to revoke.
func (f *Fake) RevokedAccessors() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.revokedAcc...)
}

// FailPath makes later requests whose path (without /v1/) starts with
// prefix answer status; "" stops it.
func (f *Fake) FailPath(prefix string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failPrefix, f.failStatus = prefix, status
}

// Revoked lists the serial numbers pki/revoke was asked to revoke.
func (f *Fake) Revoked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.revoked...)
}

// New starts a fake Vault, stopped at the end of the test.
func New(tb testing.TB) *Fake {
	tb.Helper()
	f := &Fake{Secret: map[string]any{"password": "s3cret", "port": 5432}, Version: 3}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	tb.Cleanup(f.srv.Close)
	f.URL = f.srv.URL
	f.CAFile = filepath.Join(tb.TempDir(), "vault-ca.pem")
	if err := os.WriteFile(f.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return f
}

// Client is a vaultsource.Client logged in to f.
func (f *Fake) Client(tb testing.TB) *vaultsource.Client {
	tb.Helper()
	c, err := vaultsource.New(context.Background(), vaultsource.Opts{Address: f.URL, CACert: f.CAFile, Token: Token, Timeout: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// Fail makes every later request but the token lookup answer status with
// an error; 0 answers normally again.
func (f *Fake) Fail(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = status
}

// Stop closes the listener: Vault is unreachable.
func (f *Fake) Stop() { f.srv.Close() }

// Paths lists the paths requested, without /v1/.
func (f *Fake) Paths() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.paths...)
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	f.mu.Lock()
	f.paths = append(f.paths, path)
	status := f.status
	if f.failPrefix != "" && strings.HasPrefix(path, f.failPrefix) {
		status = f.failStatus
	}
	f.mu.Unlock()
	reply := func(code int, body any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(body)
	}
	if path == "auth/approle/login" {
		var req map[string]string
		json.NewDecoder(r.Body).Decode(&req)
		if req["role_id"] != RoleID || req["secret_id"] != SecretID {
			reply(http.StatusBadRequest, map[string]any{"errors": []string{"invalid role or secret ID"}})
			return
		}
		reply(http.StatusOK, map[string]any{"auth": map[string]any{"client_token": Token, "lease_duration": 0, "renewable": false}})
		return
	}
	if r.Header.Get("X-Vault-Token") != Token {
		reply(http.StatusForbidden, map[string]any{"errors": []string{"permission denied"}})
		return
	}
	if status != 0 && path != "auth/token/lookup-self" {
		reply(status, map[string]any{"errors": []string{http.StatusText(status)}})
		return
	}
	switch {
	case path == "auth/token/lookup-self":
		reply(http.StatusOK, map[string]any{"data": map[string]any{"ttl": 0, "renewable": false, "policies": []string{"root"}}})
	case strings.HasPrefix(path, "secret/data/") && r.Method == http.MethodGet:
		reply(http.StatusOK, map[string]any{"data": map[string]any{"data": f.Secret, "metadata": map[string]any{"version": f.Version}}})
	case strings.HasPrefix(path, "pki/issue/") && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		var req map[string]any
		json.NewDecoder(r.Body).Decode(&req)
		cn, _ := req["common_name"].(string)
		data, err := issue(cn)
		if err != nil {
			reply(http.StatusInternalServerError, map[string]any{"errors": []string{err.Error()}})
			return
		}
		reply(http.StatusOK, map[string]any{"data": data})
	case path == "pki/revoke" && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		f.record(r, "serial_number", &f.revoked)
		reply(http.StatusOK, map[string]any{"data": map[string]any{"revocation_time": time.Now().Unix()}})
	case strings.HasPrefix(path, "auth/token/roles/") && r.Method == http.MethodGet:
		reply(http.StatusOK, map[string]any{"data": map[string]any{"token_explicit_max_ttl": int(f.RoleMaxTTL / time.Second)}})
	case strings.HasPrefix(path, "auth/token/create/") && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		reply(http.StatusOK, f.createToken(strings.TrimPrefix(path, "auth/token/create/"), r))
	case path == "auth/token/revoke-accessor" && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		f.record(r, "accessor", &f.revokedAcc)
		w.WriteHeader(http.StatusNoContent)
	default:
		reply(http.StatusNotFound, map[string]any{"errors": []string{}})
	}
}

// record appends the string field of r's JSON body to list.
func (f *Fake) record(r *http.Request, field string, list *[]string) {
	var req map[string]any
	json.NewDecoder(r.Body).Decode(&req)
	v, _ := req[field].(string)
	f.mu.Lock()
	*list = append(*list, v)
	f.mu.Unlock()
}

// createToken creates a token for role as auth/token/create/<role>
// answers: the lease is the ttl asked for (or TokenLease), the metadata
// and policies those asked for.
func (f *Fake) createToken(role string, r *http.Request) map[string]any {
	var req map[string]any
	json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.tokens) + 1
	tok := CreatedToken{Role: role, Request: req, Token: fmt.Sprintf("hvs.fake-node-token-%d", n), Accessor: fmt.Sprintf("fake-accessor-%d", n)}
	f.tokens = append(f.tokens, tok)
	lease, _ := time.ParseDuration(fmt.Sprint(req["ttl"]))
	if f.TokenLease != 0 {
		lease = f.TokenLease
	}
	policies, _ := req["policies"].([]any)
	return map[string]any{"auth": map[string]any{
		"client_token": tok.Token, "accessor": tok.Accessor, "policies": append([]any{"default"}, policies...),
		"metadata": req["meta"], "lease_duration": int(lease / time.Second), "renewable": req["renewable"], "orphan": true,
	}}
}

// issue makes a CA and a leaf for cn, as pki/issue answers.
func issue(cn string) (map[string]any, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake vault CA"}, NotBefore: now.Add(-time.Minute),
		NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(0x1234), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(30 * time.Minute), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caTmpl, key.Public(), caKey)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	return map[string]any{
		"certificate":   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})),
		"private_key":   string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})),
		"issuing_ca":    caPEM,
		"ca_chain":      []string{caPEM},
		"serial_number": "12:34",
	}, nil
}
