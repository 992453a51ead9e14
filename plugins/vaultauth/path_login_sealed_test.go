package vaultauth

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/agent"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// front stands in for Vault core's HTTP API in front of the backend, for
// the plugin's own logic: a ticket login is routed to the backend and,
// when it answers with an Auth, a token is made up as core would create
// one; revoke-self is recorded. e2e/vault runs the same flow through a
// real Vault.
type front struct {
	e   *env
	srv *httptest.Server

	mu      sync.Mutex
	tickets []string
	tokens  map[string]*logical.Auth // client token -> the Auth it came from
	revoked []string
	// again is the answer to presenting a ticket a second time, right
	// after it was redeemed.
	again []error
	// forgeFor, if set: answer every ticket login with a token of the
	// front's own for this EK hash and role "web", without redeeming the
	// ticket, as a wrong or hostile vault_addr would.
	forgeFor string
}

func newFront(t *testing.T, e *env) *front {
	f := &front{e: e, tokens: map[string]*logical.Auth{}}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// caPEM is the front's TLS certificate, for vault_ca_cert.
func (f *front) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}))
}

func (f *front) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/auth/tpm/login":
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `{"errors":["bad body"]}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.tickets = append(f.tickets, body["ticket"].(string))
		forgeFor := f.forgeFor
		f.mu.Unlock()
		if forgeFor != "" {
			_ = json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{
				"client_token": "hvs.forged", "accessor": "forged",
				"metadata": map[string]string{"role": "web", "ek_hash": forgeFor},
			}})
			return
		}
		resp, err := f.e.b.HandleRequest(r.Context(), &logical.Request{
			Operation: logical.UpdateOperation, Path: "login", Data: body, Storage: f.e.storage,
			MountPoint: "auth/tpm/", Connection: &logical.Connection{RemoteAddr: "127.0.0.1"},
		})
		if err != nil || resp == nil || resp.Auth == nil {
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{"permission denied"}})
			return
		}
		resp2, err2 := f.e.b.HandleRequest(r.Context(), &logical.Request{
			Operation: logical.UpdateOperation, Path: "login", Data: body, Storage: f.e.storage,
			MountPoint: "auth/tpm/", Connection: &logical.Connection{RemoteAddr: "127.0.0.1"},
		})
		if err2 == nil && resp2 != nil && resp2.Auth != nil {
			err2 = errors.New("redeemed twice")
		}
		token, accessor := "hvs."+rand.Text(), rand.Text()
		f.mu.Lock()
		f.tokens[token] = resp.Auth
		f.again = append(f.again, err2)
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{
			"client_token": token, "accessor": accessor, "policies": resp.Auth.Policies,
			"metadata": resp.Auth.Metadata, "lease_duration": int(resp.Auth.TTL / time.Second), "renewable": true,
		}})
	case "/v1/auth/token/revoke-self":
		f.mu.Lock()
		f.revoked = append(f.revoked, r.Header.Get("X-Vault-Token"))
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

// sealedLogin is a login request as Vault routes it to the mount.
func (e *env) sealedLogin(data map[string]any) (*logical.Response, error) {
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.UpdateOperation, Path: "login", Data: data, Storage: e.storage,
		MountPoint: "auth/tpm/", Connection: &logical.Connection{RemoteAddr: "127.0.0.1"},
	})
}

// setupSealed is setup with vault_addr pointing at a front and role "web"
// sealing tokens with envelope (and PCR 7 for pcr_sealed).
func setupSealed(t *testing.T, e *env, n *node, envelope string) *front {
	t.Helper()
	setup(t, e, n)
	f := newFront(t, e)
	e.configure(map[string]any{"vault_addr": f.srv.URL, "vault_ca_cert": f.caPEM()})
	role := map[string]any{"token_envelope": envelope}
	if envelope == "pcr_sealed" {
		role["token_envelope_pcrs"] = "7"
	}
	e.write("role/web", role)
	return f
}

func TestLoginSealedToken(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	f := setupSealed(t, e, n, "tpm_bound")

	resp, err := e.sealedLogin(n.answer(e.challenge(n), "web"))
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	if resp.Auth != nil || resp.WrapInfo != nil {
		t.Fatalf("a sealed login answers with auth %v / wrap info %v; Vault would return that token in the clear", resp.Auth, resp.WrapInfo)
	}
	info, _ := resp.Data["auth"].(map[string]any)
	if info == nil || info["accessor"] == "" || info["client_token"] != nil {
		t.Fatalf("auth outside the envelope = %v; want its accessor and no client_token", info)
	}
	js, _ := json.Marshal(resp.Data)
	f.mu.Lock()
	var issued string
	for tok := range f.tokens {
		issued = tok
	}
	f.mu.Unlock()
	if issued == "" || strings.Contains(string(js), issued) {
		t.Fatalf("token %q appears in the response outside the envelope, or none was issued", issued)
	}

	auth, mode, err := agent.OpenSealedToken(n.n, resp.Data, "web")
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if auth.ClientToken != issued || mode != pb.ReleaseMode_TPM_BOUND || auth.Metadata["ek_hash"] != n.ekHash {
		t.Errorf("opened token %q mode %v metadata %v; want %q, TPM_BOUND, ek_hash %s", auth.ClientToken, mode, auth.Metadata, issued, n.ekHash)
	}
	// The accessor outside must name the token inside.
	tampered := mustData(t, js)
	tampered["auth"].(map[string]any)["accessor"] = "someone-else"
	if _, _, err := agent.OpenSealedToken(n.n, tampered, "web"); err == nil || !strings.Contains(err.Error(), "differs from the response's") {
		t.Errorf("open with another accessor outside: %v", err)
	}
	// It must have been issued to this EK for the role asked for, and come
	// with its auth outside.
	if _, _, err := agent.OpenSealedToken(n.n, resp.Data, "db"); err == nil || !strings.Contains(err.Error(), `for role "web", not to this node's EK for role "db"`) {
		t.Errorf("open for another role: %v", err)
	}
	noAuth := mustData(t, js)
	delete(noAuth, "auth")
	if _, _, err := agent.OpenSealedToken(n.n, noAuth, "web"); err == nil || !strings.Contains(err.Error(), "holds no auth") {
		t.Errorf("open without auth outside: %v", err)
	}
	f.mu.Lock()
	a := f.tokens[issued]
	ticket := f.tickets[0]
	f.mu.Unlock()
	if a.Alias == nil || a.Alias.Name != n.ekHash || a.InternalData["role"] != "web" {
		t.Errorf("the ticket login's auth = %+v; want the node's alias and role", a)
	}
	if keys, _ := e.storage.List(t.Context(), ticketPrefix); len(keys) != 0 {
		t.Errorf("tickets left: %v", keys)
	}
	// The ticket is single use: right after its redemption, and later.
	f.mu.Lock()
	again := f.again[0]
	f.mu.Unlock()
	if again != logical.ErrPermissionDenied {
		t.Errorf("a ticket presented twice: %v, want permission denied", again)
	}
	resp, err = e.sealedLogin(map[string]any{"role": "web", "ticket": ticket})
	wantDenied(t, resp, err, "ticket: unknown or already used")

	// Only this TPM opens the envelope.
	other := openNodeAfter(t, n)
	if _, _, err := agent.OpenSealedToken(other.n, resp2Data(t, e, other), "other"); err != nil {
		t.Fatalf("the other node opens its own token: %v", err)
	}
	if _, _, err := agent.OpenSealedToken(other.n, mustData(t, js), "web"); !errors.Is(err, sealing.ErrImport) {
		t.Errorf("another TPM opening the first node's token: %v, want sealing.ErrImport", err)
	}
}

// resp2Data trusts n too and logs it in with a sealed role of its own.
func resp2Data(t *testing.T, e *env, n *node) map[string]any {
	t.Helper()
	e.configure(map[string]any{"ek_allow": n.ekHash})
	e.write("role/other", map[string]any{"policy": pcrPolicy(n.ekHash, n.pcr(7)), "token_envelope": "tpm_bound"})
	resp, err := e.sealedLogin(n.answer(e.challenge(n), "other"))
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	return resp.Data
}

func mustData(t *testing.T, js []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLoginSealedToPCRs(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setupSealed(t, e, n, "pcr_sealed")

	resp, err := e.sealedLogin(n.answer(e.challenge(n), "web"))
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	if _, mode, err := agent.OpenSealedToken(n.n, resp.Data, "web"); err != nil || mode != pb.ReleaseMode_PCR_SEALED {
		t.Fatalf("open: %v %v", mode, err)
	}
	// The TPM opens it only while PCR 7 holds the attested value.
	n.extend(7)
	if _, _, err := agent.OpenSealedToken(n.n, resp.Data, "web"); !errors.Is(err, sealing.ErrImport) {
		t.Errorf("open after PCR 7 changed: %v, want sealing.ErrImport", err)
	}
}

func TestTicketRefusals(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	f := setupSealed(t, e, n, "tpm_bound")
	e.write("role/plain", map[string]any{"policy": pcrPolicy(n.ekHash, n.pcr(7))})
	set, err := e.b.policy("web", mustRole(t, e, "web"))
	if err != nil {
		t.Fatal(err)
	}
	put := func(ticket, role, policyHash string, expires time.Time) {
		t.Helper()
		entry, _ := logical.StorageEntryJSON(ticketKey(ticket), ticketEntry{
			Role: role, Facts: nodeFacts{EKHash: n.ekHash, PolicyHash: policyHash}, Expires: expires,
		})
		if err := e.storage.Put(t.Context(), entry); err != nil {
			t.Fatal(err)
		}
	}
	later := e.clock.now().Add(time.Minute)
	put("expired", "web", set.Hash(), e.clock.now().Add(-time.Second))
	put("for-plain", "web", set.Hash(), later)
	put("old-policy", "web", "0000", later)
	put("good", "web", set.Hash(), later)
	for _, tt := range []struct{ ticket, role, want string }{
		{"expired", "web", "ticket: expired"},
		{"for-plain", "plain", "ticket: issued for another role"},
		{"old-policy", "web", "ticket: the role's policy changed since the attestation"},
		{"never-issued", "web", "ticket: unknown or already used"},
	} {
		resp, err := e.sealedLogin(map[string]any{"role": tt.role, "ticket": tt.ticket})
		wantDenied(t, resp, err, tt.want)
	}
	if resp, err := e.sealedLogin(map[string]any{"role": "web", "ticket": "good", "challenge_id": "x"}); err != nil || !resp.IsError() ||
		!strings.Contains(resp.Error().Error(), "ticket cannot be combined with challenge_id") {
		t.Errorf("ticket with challenge_id: %v %v", resp, err)
	}
	// A role that stopped sealing tokens redeems no ticket.
	e.write("role/web", map[string]any{"token_envelope": "none"})
	resp, err := e.sealedLogin(map[string]any{"role": "web", "ticket": "good"})
	wantDenied(t, resp, err, "ticket: the role no longer seals tokens")
	if len(f.tokens) != 0 {
		t.Errorf("tokens issued: %d", len(f.tokens))
	}

	// The periodic function removes tickets never redeemed.
	put("stale", "web", set.Hash(), e.clock.now().Add(time.Second))
	e.clock.add(time.Minute)
	if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if keys, _ := e.storage.List(t.Context(), ticketPrefix); len(keys) != 0 {
		t.Errorf("tickets left after the periodic function: %v", keys)
	}
}

func mustRole(t *testing.T, e *env, name string) *roleEntry {
	t.Helper()
	r, err := e.b.role(t.Context(), e.storage, name)
	if err != nil || r == nil {
		t.Fatalf("role %s: %v %v", name, r, err)
	}
	return r
}

func TestLoginSealedFailures(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	e.write("role/web", map[string]any{"token_envelope": "tpm_bound"})

	// Without vault_addr the login is refused before the challenge is
	// consumed: once configured, the same answer logs in.
	data := n.answer(e.challenge(n), "web")
	resp, err := e.sealedLogin(data)
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), `role "web" seals tokens (token_envelope=tpm_bound) but the config has no vault_addr`) {
		t.Fatalf("login without vault_addr: %v %v", resp, err)
	}
	f := newFront(t, e)
	e.configure(map[string]any{"vault_addr": f.srv.URL, "vault_ca_cert": f.caPEM()})
	if resp, err := e.sealedLogin(data); err != nil || resp.IsError() || resp.Data["token_envelope"] == nil {
		t.Fatalf("login once configured: %v %v", resp, err)
	}

	// vault_addr unreachable: an error, no token, no ticket left.
	f.srv.Close()
	resp, err = e.sealedLogin(n.answer(e.challenge(n), "web"))
	if err == nil || !strings.Contains(err.Error(), "token_envelope: unable to complete the login through vault_addr") || (resp != nil && resp.Data["token_envelope"] != nil) {
		t.Fatalf("login with vault_addr down: %v %v", resp, err)
	}
	if keys, _ := e.storage.List(t.Context(), ticketPrefix); len(keys) != 0 {
		t.Errorf("tickets left: %v", keys)
	}

	// vault_addr answers with a token that is not the one made for this
	// login: not delivered, and revoked.
	f3 := newFront(t, e)
	f3.forgeFor = n.ekHash
	e.configure(map[string]any{"vault_addr": f3.srv.URL, "vault_ca_cert": f3.caPEM()})
	resp, err = e.sealedLogin(n.answer(e.challenge(n), "web"))
	if err == nil || !strings.Contains(err.Error(), "token_envelope: vault_addr answered with another token") || (resp != nil && resp.Data["token_envelope"] != nil) {
		t.Fatalf("login with a forging vault_addr: %v %v", resp, err)
	}
	if f3.revoked == nil || f3.revoked[0] != "hvs.forged" {
		t.Errorf("revoked = %v; want the forged token revoked", f3.revoked)
	}

	// pcr_sealed to a PCR the node did not quote.
	f2 := newFront(t, e)
	e.configure(map[string]any{"vault_addr": f2.srv.URL, "vault_ca_cert": f2.caPEM()})
	e.write("role/web", map[string]any{"token_envelope": "pcr_sealed", "token_envelope_pcrs": "7", "token_envelope_pcr_bank": "sha512"})
	resp, err = e.sealedLogin(n.answer(e.challenge(n), "web"))
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "token_envelope: PCR sha512:7 was not quoted") {
		t.Fatalf("login sealed to an unquoted bank: %v %v", resp, err)
	}
	if len(f2.tokens) != 0 {
		t.Error("a token was issued")
	}

	// pcr_sealed to a bank the config does not count: refused when the
	// role is written, and at login before the challenge is consumed.
	e.write("role/web", map[string]any{"token_envelope_pcr_bank": "sha256"})
	data = n.answer(e.challenge(n), "web")
	e.configure(map[string]any{"pcr_banks": "sha384"})
	resp, err = e.sealedLogin(data)
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), `role "web" seals tokens to sha256 PCRs but the config's pcr_banks leaves that bank out`) {
		t.Fatalf("login sealed to an uncounted bank: %v %v", resp, err)
	}
	resp, err = e.request(logical.UpdateOperation, "role/web", map[string]any{"token_envelope_pcrs": "7"})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "token_envelope_pcr_bank sha256 is not among the config's pcr_banks") {
		t.Errorf("role write with an uncounted bank: %v %v", resp, err)
	}
	e.configure(map[string]any{"pcr_banks": "sha256,sha384"})
	if resp, err := e.sealedLogin(data); err != nil || resp.IsError() {
		t.Errorf("the same answer once the bank counts: %v %v", resp, err)
	}
}

func TestConfigVaultAddr(t *testing.T) {
	for _, tt := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{"vault_addr": "http://vault.example:8200"}, "plain http is only accepted on a loopback address"},
		{map[string]any{"vault_addr": "https://vault.example:8200/v1/auth"}, "must be https://host[:port]"},
		{map[string]any{"vault_addr": "vault.example:8200"}, "vault_addr"},
		{map[string]any{"vault_ca_cert": "garbage"}, "vault_addr is required when vault_ca_cert or vault_tls_server_name is set"},
		{map[string]any{"vault_addr": "https://127.0.0.1:8200", "vault_ca_cert": "garbage"}, "vault_ca_cert: holds no PEM certificate"},
	} {
		e := newEnv(t)
		tt.data["ek_allow"] = hashA
		resp, err := e.request(logical.UpdateOperation, "config", tt.data)
		if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), tt.want) {
			t.Errorf("config %v: %v %v; want an error with %q", tt.data, resp, err, tt.want)
		}
	}
	e := newEnv(t)
	e.configure(map[string]any{"ek_allow": hashA, "vault_addr": "http://127.0.0.1:8200/"})
	resp, _ := e.request(logical.ReadOperation, "config", nil)
	if resp.Data["vault_addr"] != "http://127.0.0.1:8200" {
		t.Errorf("vault_addr read back as %v", resp.Data["vault_addr"])
	}
}
