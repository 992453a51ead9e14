package vaulte2e

// One attestation, every credential: under one policy the real `keybroker
// serve` releases a TLS certificate from its CA, the node's X.509-SVID and
// a Vault token that a token role of the test cluster created, and the real
// keybroker-agent on swtpm opens them all.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// tokenBrokerPolicy is the Vault ACL policy of a broker that releases
// vault_token (token role "nodes", read for its maximum TTL when the
// release has a period) and vault_kv.
const tokenBrokerPolicy = brokerVaultPolicy + `
path "auth/token/create/nodes"    { capabilities = ["create", "update"] }
path "auth/token/roles/nodes"     { capabilities = ["read"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
`

// nodeKVPolicy is the Vault ACL policy the released tokens carry.
const nodeKVPolicy = `path "kv/data/nodes/*" { capabilities = ["read"] }`

// everyCredentialPolicy admits nodes of the ek_ca "swtpm" whose sha256
// PCR 7 holds %s and releases a TLS certificate, the node's SVID and a
// Vault token (sealed to PCR 7, 30 minutes at most, renewable by 10).
const everyCredentialPolicy = `policy "swtpm-nodes" {
  select {
    ek_cas = ["swtpm"]
  }
  require = ["pcrs.sha256[7] == '%s'"]
  release "node-tls" {
    type        = "tls_certificate"
    common_name = "${ek_hash_short}.nodes.example.com"
    ttl         = "1h"
  }
  release "node-svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
    ttl       = "1h"
  }
  release "vault" {
    type         = "vault_token"
    mode         = "pcr_sealed"
    pcrs         = [7]
    token_role   = "nodes"
    policies     = ["node-kv"]
    ttl          = "30m"
    period       = "10m"
    display_name = "node-${ek_hash_short}"
  }
}
`

// tokenRole sets up what a broker releasing Vault tokens needs: the policy
// node-kv and the token role "nodes" that may grant it, making orphan
// tokens (not revoked with the broker's own token) renewable for at most
// 30 minutes (Vault bounds renewals of a role's tokens by the role's
// token_explicit_max_ttl).
func (c *cluster) tokenRole(t *testing.T) {
	t.Helper()
	if err := c.root.Sys().PutPolicy("node-kv", nodeKVPolicy); err != nil {
		t.Fatal(err)
	}
	if _, err := c.root.Logical().Write("auth/token/roles/nodes", map[string]any{
		"allowed_policies": "node-kv", "orphan": true, "renewable": true, "token_explicit_max_ttl": "30m",
	}); err != nil {
		t.Fatalf("write the token role: %v", err)
	}
}

// receipt is what `keybroker receipts list --json` prints of a receipt.
type receipt struct {
	ID       string   `json:"id"`
	Allowed  bool     `json:"allowed"`
	Check    string   `json:"check"`
	Failures []string `json:"failures"`
	Released []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		Mode     string `json:"mode"`
		Serial   string `json:"serial"`
		SPIFFEID string `json:"spiffe_id"`
	} `json:"released"`
}

// receipts lists k's receipts, newest first, and their JSON.
func (k *keybroker) receipts(t *testing.T) ([]receipt, string) {
	t.Helper()
	out, err := exec.Command(bins.broker, "receipts", "list", "--config", k.config, "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("keybroker receipts list: %v\n%s", err, out)
	}
	var recs []receipt
	for line := range strings.Lines(string(out)) {
		var r receipt
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("receipt %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs, string(out)
}

// TestBrokerReleasesVaultToken: one attestation under one policy releases
// a TLS certificate, the node's X.509-SVID and a Vault token created by
// the token role "nodes". The agent writes key.pem, cert.pem, chain.pem
// and vault.token (0600); the token works against Vault: lookup-self shows
// the role's policy, the display name, the metadata naming the node's EK
// hash and the receipt, a TTL of the period (10m) and an explicit maximum
// TTL of the release's ttl (30m) that a renewal cannot pass; it reads the
// KV secret its policy allows and nothing else. The receipt records the
// token's accessor, never the token, which shows in no log or output. A
// decision whose later release fails (a vault_kv Vault answers 404)
// leaves no token: the one created is revoked by its accessor. After PCR 7
// changes, the attestation is refused and no token is created.
func TestBrokerReleasesVaultToken(t *testing.T) {
	c, ca, n, ekHash, _ := brokerSetup(t)
	short := ekHash[:16]
	c.writeKV(t, "kv/data/nodes/"+short, map[string]any{"password": "s3cret-db-password"})
	c.writeKV(t, "kv/data/other", map[string]any{"password": "not-for-nodes"})
	c.tokenRole(t)
	brokerToken := c.brokerTokenWith(t, tokenBrokerPolicy)
	k := startKeybrokerWith(t, c, ca, fmt.Sprintf(everyCredentialPolicy, n.pcr7), brokerToken, `spiffe {
  trust_domain = "example.org"
}`)

	out := filepath.Join(t.TempDir(), "creds")
	before := c.accessors(t)
	r := runAgent(t, n.home, bootstrapArgs(k, n, out)...)
	if r.code != 0 {
		t.Fatalf("bootstrap: exit %d: %s", r.code, r.stderr)
	}
	files := dirFiles(t, out)
	if names := slices.Sorted(maps.Keys(files)); !slices.Equal(names, []string{"cert.pem", "chain.pem", "key.pem", "vault.token"}) {
		t.Fatalf("bootstrap wrote %v", names)
	}
	tokenFile := filepath.Join(out, "vault.token")
	token := files["vault.token"]
	if m := fileMode(t, tokenFile); m != 0o600 {
		t.Errorf("vault.token mode %v, want 0600", m)
	}
	if !strings.HasPrefix(token, "hvs.") || strings.ContainsAny(token, " \n") {
		t.Fatalf("vault.token holds %d bytes that are not a service token alone", len(token))
	}
	created := slices.DeleteFunc(c.accessors(t), func(a string) bool { return slices.Contains(before, a) })
	if len(created) != 1 {
		t.Fatalf("the attestation created tokens with accessors %v; want one", created)
	}

	// The receipt: one decision, three credentials, the token's accessor.
	recs, recJSON := k.receipts(t)
	if len(recs) != 1 || !recs[0].Allowed || len(recs[0].Released) != 3 {
		t.Fatalf("receipts %s", recJSON)
	}
	rec := recs[0]
	types := map[string]string{}
	for _, it := range rec.Released {
		types[it.Type] = it.Serial
	}
	if types["tls_certificate"] == "" || types["x509_svid"] == "" || types["vault_token"] != created[0] {
		t.Errorf("receipt released %+v; want a certificate, an SVID and the token accessor %s", rec.Released, created[0])
	}

	// The token, as Vault sees it.
	self, err := c.tokenClient(t, token).Auth().Token().LookupSelf()
	if err != nil {
		t.Fatalf("lookup-self with the released token: %v", err)
	}
	d := self.Data
	policies, _ := self.TokenPolicies()
	meta, _ := self.TokenMetadata()
	ttl, _ := self.TokenTTL()
	explicit, _ := d["explicit_max_ttl"].(json.Number).Int64()
	renewable, _ := self.TokenIsRenewable()
	if !slices.Equal(policies, []string{"default", "node-kv"}) || d["accessor"] != created[0] || d["orphan"] != true ||
		d["display_name"] != "token-node-"+short || d["path"] != "auth/token/create/nodes" {
		t.Errorf("lookup-self: policies %v, accessor %v, orphan %v, display_name %v, path %v", policies, d["accessor"], d["orphan"], d["display_name"], d["path"])
	}
	if meta["keybroker_ek_hash"] != ekHash || meta["keybroker_receipt_id"] != rec.ID || meta["keybroker_release"] != "vault" {
		t.Errorf("token metadata %v; want EK hash %s, receipt %s, release vault", meta, ekHash, rec.ID)
	}
	if ttl <= 0 || ttl > 10*time.Minute || explicit != 1800 || !renewable {
		t.Errorf("token ttl %v, explicit_max_ttl %ds, renewable %v; want at most the 10m period, 1800s, renewable", ttl, explicit, renewable)
	}
	// A renewal asking for more than the ttl gets what is left of it.
	renewed, err := c.tokenClient(t, token).Auth().Token().RenewSelf(int((2 * time.Hour).Seconds()))
	if err != nil {
		t.Fatalf("renew-self: %v", err)
	}
	if got := time.Duration(renewed.Auth.LeaseDuration) * time.Second; got > 30*time.Minute {
		t.Errorf("renewed for %v: past the release's ttl of 30m", got)
	}
	// What its policy allows, and nothing more.
	kv, err := c.tokenClient(t, token).Logical().Read("kv/data/nodes/" + short)
	if err != nil || kv == nil {
		t.Fatalf("read the node's KV secret with the released token: %v", err)
	}
	if data, _ := kv.Data["data"].(map[string]any); data["password"] != "s3cret-db-password" {
		t.Errorf("KV read = %v", kv.Data)
	}
	if _, err := c.tokenClient(t, token).Logical().Read("kv/data/other"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("reading kv/data/other with the node's token: %v; want 403", err)
	}
	// The token shows nowhere but in its file.
	if strings.Contains(k.log.String(), token) || strings.Contains(recJSON, token) || strings.Contains(r.stdout+r.stderr, token) {
		t.Error("the token shows in the broker's log, a receipt or the agent's output")
	}

	t.Run("a failed release revokes the token", func(t *testing.T) {
		failing := startKeybrokerWith(t, c, ca, fmt.Sprintf(`policy "swtpm-nodes" {
  select { ek_cas = ["swtpm"] }
  require = ["pcrs.sha256[7] == '%s'"]
  release "a-vault" {
    type       = "vault_token"
    token_role = "nodes"
    policies   = ["node-kv"]
    ttl        = "30m"
  }
  release "b-db" {
    type = "vault_kv"
    path = "kv/data/nodes/missing"
  }
}
`, n.pcr7), brokerToken, "")
		before := refusedKeepsTokens(t, c, failing, n, filepath.Join(t.TempDir(), "creds"),
			"bootstrap failed at attest: broker refused (FailedPrecondition): release: vault refused the broker (not found (404))")
		recs, recJSON := failing.receipts(t)
		if len(recs) != 1 || recs[0].Allowed || recs[0].Check != "release" {
			t.Fatalf("receipts %s", recJSON)
		}
		var revoked string
		for _, f := range recs[0].Failures {
			if strings.HasPrefix(f, `release "a-vault": token (accessor `) && strings.HasSuffix(f, ") was issued but not released; revoked") {
				revoked = strings.TrimSuffix(strings.TrimPrefix(f, `release "a-vault": token (accessor `), ") was issued but not released; revoked")
			}
		}
		if revoked == "" || slices.Contains(before, revoked) {
			t.Fatalf("the receipt's failures %q do not name a revoked token", recs[0].Failures)
		}
		if _, err := c.root.Logical().Write("auth/token/lookup-accessor", map[string]any{"accessor": revoked}); err == nil {
			t.Errorf("accessor %s still names a token", revoked)
		}
		if !strings.Contains(failing.log.String(), `msg="vault token revoked: its decision was not released"`) {
			t.Error("the broker log does not say it revoked the token")
		}
	})

	t.Run("a refused attestation creates no token", func(t *testing.T) {
		n.tpm.extend(t, 7, "secure boot off")
		prev := dirFiles(t, out)
		refusedKeepsTokens(t, c, k, n, out, "bootstrap failed at attest: broker refused (PermissionDenied): policy: no policy allows this node")
		if now := dirFiles(t, out); !maps.Equal(now, prev) {
			t.Error("a refused bootstrap changed the output directory")
		}
	})
}

// refusedKeepsTokens bootstraps n against k into out, requires the
// refusal want (a prefix of stderr) and that Vault holds the same tokens
// after as before, and returns their accessors.
func refusedKeepsTokens(t *testing.T, c *cluster, k *keybroker, n *node, out, want string) []string {
	t.Helper()
	before := c.accessors(t)
	r := runAgent(t, n.home, bootstrapArgs(k, n, out)...)
	if r.code != 1 || !strings.HasPrefix(r.stderr, want) {
		t.Fatalf("bootstrap: exit %d, stderr %q; want 1 and %q…", r.code, r.stderr, want)
	}
	if after := c.accessors(t); !sameSet(before, after) {
		t.Errorf("a refused attestation left Vault's tokens changed: %d before, %d after", len(before), len(after))
	}
	return before
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}
