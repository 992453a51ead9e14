package vaulte2e

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
)

// sealedOutput is what vault-login -format=json prints for a sealed token.
type sealedOutput struct {
	Auth   api.SecretAuth `json:"auth"`
	Sealed string         `json:"sealed"`
}

// configureSelf points the plugin's vault_addr at the cluster itself.
func (c *cluster) configureSelf(t *testing.T, addr string) {
	t.Helper()
	if _, err := c.root.Logical().Write("auth/"+mount+"/config", map[string]any{
		"vault_addr": addr, "vault_ca_cert": readFile(t, c.caFile),
	}); err != nil {
		t.Fatalf("write vault_addr: %v", err)
	}
}

// TestSealedTokenLogin: a role with token_envelope=tpm_bound. Vault's own
// login creates the token (entity alias = EK hash, the role's policies),
// the plugin seals it to the node's EK; the login answer on the wire holds
// no token; the agent opens it in its TPM. The same answer handed to
// another trusted machine (a stolen response) does not open there. Without
// vault_addr, or with it unreachable, the login fails clearly and no token
// exists.
func TestSealedTokenLogin(t *testing.T) {
	c, a, ca := setup(t, map[string]any{"token_envelope": "tpm_bound"})
	b := newNode(t, ca) // trusted too: same CA, same boot
	p := startProxy(t, c)

	before := c.accessors(t)
	r := runAgent(t, a.home, vaultLoginArgs(p.url, p.caFile, a.tpm, "web")...)
	if want := `role "web" seals tokens (token_envelope=tpm_bound) but the config has no vault_addr`; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("login before vault_addr: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}

	// vault_addr on a port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "https://" + l.Addr().String()
	l.Close()
	c.configureSelf(t, dead)
	r = runAgent(t, a.home, vaultLoginArgs(p.url, p.caFile, a.tpm, "web")...)
	if want := "token_envelope: unable to complete the login through vault_addr"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("login with vault_addr down: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	if after := c.accessors(t); len(after) != len(before) {
		t.Fatalf("%d → %d tokens after failed logins", len(before), len(after))
	}

	c.configureSelf(t, c.addr)
	tokenFile := filepath.Join(t.TempDir(), "token")
	r = runAgent(t, a.home, vaultLoginArgs(p.url, p.caFile, a.tpm, "web", "-format", "json", "--token-file", tokenFile)...)
	if r.code != 0 {
		t.Fatalf("vault-login: exit %d: %s", r.code, r.stderr)
	}
	var out sealedOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatal(err)
	}
	token := out.Auth.ClientToken
	if out.Sealed != "tpm_bound" || token == "" || readFile(t, tokenFile) != token {
		t.Fatalf("output: sealed %q, token set %v, file matches %v", out.Sealed, token != "", readFile(t, tokenFile) == token)
	}
	if after := c.accessors(t); len(after) != len(before)+1 {
		t.Errorf("%d → %d tokens; want exactly the delivered one more", len(before), len(after))
	}

	// On the wire: no auth, no token, an envelope.
	login := p.last(t, "auth/tpm/login")
	if strings.Contains(string(login.response), token) {
		t.Fatal("the token travelled in the login answer")
	}
	var wire api.Secret
	if err := json.Unmarshal(login.response, &wire); err != nil {
		t.Fatal(err)
	}
	env, _ := wire.Data["token_envelope"].(map[string]any)
	info, _ := wire.Data["auth"].(map[string]any)
	if wire.Auth != nil || wire.WrapInfo != nil || env == nil || env["mode"] != "TPM_BOUND" || info["accessor"] != out.Auth.Accessor {
		t.Fatalf("the login answer on the wire: auth %v, wrap %v, data %v", wire.Auth, wire.WrapInfo, wire.Data)
	}

	// The token is Vault's, made by this mount's login: the role's
	// policy, the EK hash as entity alias, renewable.
	self, err := c.tokenClient(t, token).Auth().Token().LookupSelf()
	if err != nil {
		t.Fatalf("lookup-self: %v", err)
	}
	ekHash := strings.TrimSpace(runAgent(t, a.home, "ek-hash", "--tpm", a.tpm.spec()).stdout)
	meta, _ := self.Data["meta"].(map[string]any)
	policies, _ := self.TokenPolicies()
	if self.Data["path"] != "auth/tpm/login" || meta["ek_hash"] != ekHash || !slices.Contains(policies, "node-read") {
		t.Errorf("token: path %v, meta %v, policies %v", self.Data["path"], meta, policies)
	}
	entityID, _ := self.Data["entity_id"].(string)
	entity, err := c.root.Logical().Read("identity/entity/id/" + entityID)
	if err != nil || entity == nil {
		t.Fatalf("entity %q: %v", entityID, err)
	}
	aliases, _ := entity.Data["aliases"].([]any)
	if len(aliases) != 1 || aliases[0].(map[string]any)["name"] != ekHash {
		t.Errorf("entity aliases = %v; want one named %s", aliases, ekHash)
	}
	if _, err := c.tokenClient(t, token).Auth().Token().RenewSelf(60); err != nil {
		t.Errorf("renew-self: %v", err)
	}

	// B, another trusted machine, is handed A's answer in place of its
	// own: its TPM cannot open it, and it writes nothing.
	stolen := login.response
	p.setRewrite(func(e *exchange) {
		if e.path == "auth/tpm/login" {
			e.status, e.response = http.StatusOK, stolen
		}
	})
	bFile := filepath.Join(t.TempDir(), "token")
	r = runAgent(t, b.home, vaultLoginArgs(p.url, p.caFile, b.tpm, "web", "--token-file", bFile)...)
	if want := "vault-login failed at open: the TPM refused to open the envelope"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("B opening A's token: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	if _, err := os.Stat(bFile); !errors.Is(err, os.ErrNotExist) {
		t.Error("B wrote a token file")
	}
	// The same answer handed to A again opens: it was B's TPM that
	// refused, not the envelope that broke.
	aFile := filepath.Join(t.TempDir(), "token")
	r = runAgent(t, a.home, vaultLoginArgs(p.url, p.caFile, a.tpm, "web", "--token-file", aFile)...)
	if r.code != 0 || readFile(t, aFile) != token {
		t.Errorf("A opening its own answer again: exit %d: %s", r.code, r.stderr)
	}
	p.setRewrite(nil)

	// B's own login gets B a token of its own.
	r = runAgent(t, b.home, vaultLoginArgs(p.url, p.caFile, b.tpm, "web", "--token-file", bFile)...)
	if r.code != 0 || readFile(t, bFile) == token {
		t.Errorf("B's own login: exit %d: %s", r.code, r.stderr)
	}
}

// TestPCRSealedTokenLogin: with token_envelope=pcr_sealed the TPM opens
// the token only while PCR 7 holds the value the login attested: an answer
// replayed to the node after it booted something else does not open.
func TestPCRSealedTokenLogin(t *testing.T) {
	c, a, _ := setup(t, map[string]any{"token_envelope": "pcr_sealed", "token_envelope_pcrs": "7"})
	c.configureSelf(t, c.addr)
	p := startProxy(t, c)
	r := runAgent(t, a.home, vaultLoginArgs(p.url, p.caFile, a.tpm, "web", "-format", "json")...)
	if r.code != 0 {
		t.Fatalf("vault-login: exit %d: %s", r.code, r.stderr)
	}
	var out sealedOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Sealed != "pcr_sealed" || out.Auth.ClientToken == "" {
		t.Fatalf("output: %+v %v", out.Sealed, err)
	}
	saved := p.last(t, "auth/tpm/login").response

	a.tpm.extend(t, 7, "secure boot off")
	p.setRewrite(func(e *exchange) {
		if e.path == "auth/tpm/login" {
			e.status, e.response = http.StatusOK, saved
		}
	})
	r = runAgent(t, a.home, vaultLoginArgs(p.url, p.caFile, a.tpm, "web")...)
	if want := "vault-login failed at open: the TPM refused to open the envelope"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("opening after PCR 7 changed: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
}
