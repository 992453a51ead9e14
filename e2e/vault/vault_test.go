package vaulte2e

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
)

// node is a swtpm whose PCR 7 measured a boot, and the role policy value
// that admits it.
type node struct {
	tpm  *swtpm
	pcr7 string // hex
	home string // HOME for its agent runs
}

func newNode(t *testing.T, ca localCA) *node {
	t.Helper()
	tpm := startSWTPM(t, ca)
	ev := tpm.extend(t, 7, "secure boot on")
	return &node{tpm: tpm, pcr7: extendedFromZero(ev), home: t.TempDir()}
}

// setup is a cluster with the plugin enabled at auth/tpm, trusting the
// swtpm CA, a role "web" admitting a node of that CA as it booted, and that
// node.
func setup(t *testing.T, roleExtra map[string]any) (*cluster, *node, localCA) {
	t.Helper()
	skipUnlessE2E(t)
	requireTools(t)
	c := startCluster(t)
	c.enablePlugin(t)
	ca := newLocalCA(t)
	n := newNode(t, ca)
	c.configure(t, map[string]localCA{"swtpm": ca})
	c.writeRole(t, "web", n.pcr7, roleExtra)
	return c, n, ca
}

// TestLoginEndToEnd: the real agent logs in to the real plugin in a real
// Vault; the token carries the role's policies, its entity alias is the EK
// hash, the token file is 0600; without --token-file the text output goes
// to ~/.vault-token where the vault CLI reads it.
func TestLoginEndToEnd(t *testing.T) {
	c, n, _ := setup(t, nil)
	ekHash := strings.TrimSpace(runAgent(t, n.home, "ek-hash", "--tpm", n.tpm.spec()).stdout)
	if len(ekHash) != 64 {
		t.Fatalf("ek-hash printed %q", ekHash)
	}

	tokenFile := filepath.Join(t.TempDir(), "token")
	r := runAgent(t, n.home, vaultLoginArgs(c.addr, c.caFile, n.tpm, "web", "-format", "json", "--token-file", tokenFile)...)
	if r.code != 0 {
		t.Fatalf("vault-login exit %d: %s", r.code, r.stderr)
	}
	out := parseLoginOutput(t, r)
	if out.Auth.ClientToken == "" || out.Unwrapped || out.TokenFile != tokenFile {
		t.Fatalf("output = %+v", out)
	}
	if got := readFile(t, tokenFile); got != out.Auth.ClientToken {
		t.Errorf("token file holds %q, the output %q", got, out.Auth.ClientToken)
	}
	if m := fileMode(t, tokenFile); m != 0o600 {
		t.Errorf("token file mode %v, want 0600", m)
	}
	if !slices.Contains(out.Auth.TokenPolicies, "node-read") || out.Auth.Metadata["ek_hash"] != ekHash ||
		out.Auth.Metadata["role"] != "web" || out.Auth.Metadata["ek_ca"] != "swtpm" || out.Auth.LeaseDuration != 3600 {
		t.Errorf("auth = %+v", out.Auth)
	}

	// The token works, with the role's policy.
	self, err := c.tokenClient(t, out.Auth.ClientToken).Auth().Token().LookupSelf()
	if err != nil {
		t.Fatalf("lookup-self: %v", err)
	}
	policies, _ := self.TokenPolicies()
	if !slices.Contains(policies, "node-read") {
		t.Errorf("lookup-self policies = %v", policies)
	}
	if path, _ := self.Data["path"].(string); path != "auth/tpm/login" {
		t.Errorf("token path = %q", path)
	}
	// Its entity alias is the EK hash, on the tpm mount.
	auths, err := c.root.Sys().ListAuth()
	if err != nil {
		t.Fatal(err)
	}
	entity, err := c.root.Logical().Read("identity/entity/id/" + out.Auth.EntityID)
	if err != nil || entity == nil {
		t.Fatalf("read entity %q: %v", out.Auth.EntityID, err)
	}
	aliases, _ := entity.Data["aliases"].([]any)
	if len(aliases) != 1 {
		t.Fatalf("entity aliases = %v", entity.Data["aliases"])
	}
	alias := aliases[0].(map[string]any)
	if alias["name"] != ekHash || alias["mount_accessor"] != auths[mount+"/"].Accessor {
		t.Errorf("alias = %v; want name %s on accessor %s", alias, ekHash, auths[mount+"/"].Accessor)
	}

	// Text output, default token file: ~/.vault-token.
	r = runAgent(t, n.home, vaultLoginArgs(c.addr, c.caFile, n.tpm, "web")...)
	if r.code != 0 {
		t.Fatalf("vault-login exit %d: %s", r.code, r.stderr)
	}
	for _, step := range []string{"challenge", "activate", "quote", "login", "write"} {
		if !strings.Contains(r.stdout, step+" ") {
			t.Errorf("text output lacks step %s:\n%s", step, r.stdout)
		}
	}
	home := filepath.Join(n.home, ".vault-token")
	second := readFile(t, home)
	if second == "" || second == out.Auth.ClientToken || strings.Contains(r.stdout, second) {
		t.Errorf("~/.vault-token = %q (first token %q); stdout must not show it", second, out.Auth.ClientToken)
	}
	if m := fileMode(t, home); m != 0o600 {
		t.Errorf("~/.vault-token mode %v, want 0600", m)
	}
	if _, err := c.tokenClient(t, second).Auth().Token().LookupSelf(); err != nil {
		t.Errorf("lookup-self with the second token: %v", err)
	}
}

// TestReplayedChallengeRefused: a login request captured on the wire and
// sent again is refused, issues no token, and stays refused after the core
// is sealed and unsealed (the plugin restarted, its state read back from
// storage); a fresh login then still works.
func TestReplayedChallengeRefused(t *testing.T) {
	c, n, _ := setup(t, nil)
	p := startProxy(t, c)
	if r := runAgent(t, n.home, vaultLoginArgs(p.url, p.caFile, n.tpm, "web", "-format", "json")...); r.code != 0 {
		t.Fatalf("vault-login through the proxy: exit %d: %s", r.code, r.stderr)
	}
	login := p.last(t, "auth/tpm/login")
	if login.status != http.StatusOK {
		t.Fatalf("login answered %d: %s", login.status, login.response)
	}
	var body map[string]any
	if err := json.Unmarshal(login.request, &body); err != nil {
		t.Fatal(err)
	}

	replay := func(when string) {
		t.Helper()
		before := c.accessors(t)
		s, err := c.unauthenticated(t).Logical().Write("auth/tpm/login", body)
		var re *api.ResponseError
		if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden || !strings.Contains(err.Error(), "challenge") {
			t.Errorf("replay %s: secret %v, err %v; want 403 naming the challenge", when, s, err)
		}
		if after := c.accessors(t); len(after) != len(before) {
			t.Errorf("replay %s created a token (%d → %d accessors)", when, len(before), len(after))
		}
	}
	replay("right after the login")

	// The login presented the challenge request's EK and AK material again;
	// the challenge is bound to it: the same answer with other material is
	// refused as a mismatch before its use is even looked up.
	var chBody map[string]any
	if err := json.Unmarshal(p.last(t, "auth/tpm/challenge").request, &chBody); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ek_public", "ek_certificate", "ak_public"} {
		if s, _ := body[k].(string); s == "" || body[k] != chBody[k] {
			t.Errorf("login %s = %.16v…, want the challenge request's", k, body[k])
		}
	}
	other := maps.Clone(body)
	other["ak_public"] = body["ek_public"]
	_, err := c.unauthenticated(t).Logical().Write("auth/tpm/login", other)
	if err == nil || !strings.Contains(err.Error(), "challenge: challenge was issued for another EK or AK") {
		t.Errorf("login with another AK: %v; want 403 naming the mismatch", err)
	}

	c.sealAndUnseal(t)
	replay("after seal and unseal")
	if r := runAgent(t, n.home, vaultLoginArgs(c.addr, c.caFile, n.tpm, "web", "-format", "json")...); r.code != 0 {
		t.Errorf("a fresh login after seal and unseal: exit %d: %s", r.code, r.stderr)
	}
}

// TestPCRMismatchDenied: once PCR 7 no longer holds what the role's policy
// requires, the login is denied with only the policy's generic message,
// no token is created and no token file written.
func TestPCRMismatchDenied(t *testing.T) {
	c, n, _ := setup(t, nil)
	n.tpm.extend(t, 7, "secure boot off")
	before := c.accessors(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	r := runAgent(t, n.home, vaultLoginArgs(c.addr, c.caFile, n.tpm, "web", "--token-file", tokenFile)...)
	if want := "vault-login failed at login: vault refused (403): policy: no policy allows this node\n"; r.code != 1 || r.stderr != want {
		t.Errorf("exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	if after := c.accessors(t); len(after) != len(before) {
		t.Errorf("a denied login created a token (%d → %d accessors)", len(before), len(after))
	}
	if _, err := os.Stat(tokenFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("token file after a denied login: %v", err)
	}
	if !grepLog(c.logFile, "login refused", "check=policy") {
		t.Error("the Vault log has no 'login refused ... check=policy' line for the operator")
	}
}

// TestUntrustedEKCA: an EK certificate from a CA that is not configured is
// refused at challenge (ek_trust); no token, no file.
func TestUntrustedEKCA(t *testing.T) {
	c, _, _ := setup(t, nil)
	stranger := newNode(t, newLocalCA(t)) // same kind of TPM, another CA
	before := c.accessors(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	r := runAgent(t, stranger.home, vaultLoginArgs(c.addr, c.caFile, stranger.tpm, "web", "--token-file", tokenFile)...)
	if want := "vault-login failed at challenge: vault refused (403): ek_trust: ek_certificate does not chain to a trusted EK CA\n"; r.code != 1 || r.stderr != want {
		t.Errorf("exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	if after := c.accessors(t); len(after) != len(before) {
		t.Errorf("an untrusted EK got a token (%d → %d accessors)", len(before), len(after))
	}
	if _, err := os.Stat(tokenFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("token file after a refused challenge: %v", err)
	}
}

// TestChallengeBoundToTPM: a challenge issued to one TPM cannot be answered
// by another, even one Vault trusts: a second swtpm handed the first one's
// challenge fails to activate it, so never reaches login.
func TestChallengeBoundToTPM(t *testing.T) {
	c, a, ca := setup(t, nil)
	b := newNode(t, ca) // trusted too: same CA, same boot
	p := startProxy(t, c)

	// A asks for a challenge; the proxy keeps Vault's answer and tells A
	// the request failed, so the challenge stays unused.
	var stolen []byte
	p.setRewrite(func(e *exchange) {
		if e.path == "auth/tpm/challenge" && stolen == nil {
			stolen = e.response
			e.status, e.response = http.StatusBadGateway, []byte(`{"errors":["proxy: upstream unavailable"]}`)
		}
	})
	if r := runAgent(t, a.home, vaultLoginArgs(p.url, p.caFile, a.tpm, "web")...); r.code != 1 || !strings.Contains(r.stderr, "failed at challenge: vault refused (502)") {
		t.Fatalf("A's run: exit %d, stderr %q", r.code, r.stderr)
	}
	p.setRewrite(nil)
	if stolen == nil {
		t.Fatal("the proxy saw no challenge")
	}

	// B gets A's challenge in place of its own.
	p.setRewrite(func(e *exchange) {
		if e.path == "auth/tpm/challenge" {
			e.status, e.response = http.StatusOK, stolen
		}
	})
	before := c.accessors(t)
	r := runAgent(t, b.home, vaultLoginArgs(p.url, p.caFile, b.tpm, "web")...)
	if want := "vault-login failed at activate: the TPM refused to activate the credential"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("B's run: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	if p.reached("auth/tpm/login") {
		t.Error("B reached login with A's challenge")
	}
	if after := c.accessors(t); len(after) != len(before) {
		t.Errorf("%d → %d accessors", len(before), len(after))
	}

	// Without the proxy's meddling both log in.
	p.setRewrite(nil)
	for name, n := range map[string]*node{"A": a, "B": b} {
		if r := runAgent(t, n.home, vaultLoginArgs(p.url, p.caFile, n.tpm, "web", "-format", "json")...); r.code != 0 {
			t.Errorf("%s's own login: exit %d: %s", name, r.code, r.stderr)
		}
	}
}

// TestResponseWrappedLogin: with the role's response_wrap_ttl the login
// answer holds only a single-use wrapping token, which the agent unwraps;
// replaying that wrapping token fails, and an agent whose wrapping token
// someone else unwrapped first says so and writes nothing.
func TestResponseWrappedLogin(t *testing.T) {
	c, n, _ := setup(t, map[string]any{"response_wrap_ttl": "60s"})
	// Wrapping a sealed token adds nothing: the role refuses both.
	_, err := c.root.Logical().Write("auth/tpm/role/web", map[string]any{"token_envelope": "tpm_bound"})
	if err == nil || !strings.Contains(err.Error(), "token_envelope and response_wrap_ttl exclude each other") {
		t.Errorf("role with token_envelope and response_wrap_ttl: %v; want it refused", err)
	}
	p := startProxy(t, c)
	tokenFile := filepath.Join(t.TempDir(), "token")
	r := runAgent(t, n.home, vaultLoginArgs(p.url, p.caFile, n.tpm, "web", "-format", "json", "--token-file", tokenFile)...)
	if r.code != 0 {
		t.Fatalf("vault-login: exit %d: %s", r.code, r.stderr)
	}
	out := parseLoginOutput(t, r)
	if !out.Unwrapped || out.Auth.ClientToken == "" || readFile(t, tokenFile) != out.Auth.ClientToken {
		t.Fatalf("output = %+v", out)
	}
	login := p.last(t, "auth/tpm/login")
	var wrapped api.Secret
	if err := json.Unmarshal(login.response, &wrapped); err != nil {
		t.Fatal(err)
	}
	if wrapped.Auth != nil || wrapped.WrapInfo == nil || wrapped.WrapInfo.CreationPath != "auth/tpm/login" {
		t.Fatalf("the login answer on the wire: auth %v, wrap_info %+v", wrapped.Auth, wrapped.WrapInfo)
	}
	if strings.Contains(string(login.response), out.Auth.ClientToken) {
		t.Error("the token travelled in the login answer")
	}
	if _, err := c.unauthenticated(t).Logical().Unwrap(wrapped.WrapInfo.Token); err == nil {
		t.Error("the spent wrapping token unwrapped a second time")
	}
	if _, err := c.tokenClient(t, out.Auth.ClientToken).Auth().Token().LookupSelf(); err != nil {
		t.Errorf("lookup-self: %v", err)
	}

	// Someone on the path unwraps first.
	var thief *api.Secret
	thiefClient := c.unauthenticated(t)
	p.setRewrite(func(e *exchange) {
		if e.path != "auth/tpm/login" || e.status != http.StatusOK {
			return
		}
		var s api.Secret
		if json.Unmarshal(e.response, &s) == nil && s.WrapInfo != nil {
			thief, _ = thiefClient.Logical().Unwrap(s.WrapInfo.Token)
		}
	})
	stolenFile := filepath.Join(t.TempDir(), "token")
	r = runAgent(t, n.home, vaultLoginArgs(p.url, p.caFile, n.tpm, "web", "--token-file", stolenFile)...)
	if want := "vault-login failed at unwrap: unable to unwrap the login (was the wrapping token used by someone else?)"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	p.setRewrite(nil)
	if thief == nil || thief.Auth == nil {
		t.Error("the proxy did not manage to unwrap first: the test proves nothing")
	}
	if _, err := os.Stat(stolenFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("token file after a failed unwrap: %v", err)
	}
}
