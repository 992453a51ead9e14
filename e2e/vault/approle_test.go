package vaulte2e

// The broker logging in to Vault with AppRole: the real `keybroker serve`
// with an approle block logs in, renews its short-lived token, logs in again
// when the token reaches its maximum TTL (or, for a batch token, before its
// TTL ends), and keeps releasing vault_kv secrets to the real
// keybroker-agent on swtpm.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// The broker's AppRole tokens live appRoleTokenTTL, renewable up to
// appRoleTokenMaxTTL: short, so that the test sees a token expire.
const (
	appRoleTokenTTL    = 5 * time.Second
	appRoleTokenMaxTTL = 15 * time.Second
)

// enableAppRole enables AppRole at auth/approle, as `vault auth enable
// approle` does (the test cluster's builtin registry has Vault's approle).
func (c *cluster) enableAppRole(t *testing.T) {
	t.Helper()
	if err := c.root.Sys().EnableAuthWithOptions("approle", &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatalf("enable auth approle: %v", err)
	}
}

// appRole creates Vault policy "keybroker" (brokerVaultPolicy) and AppRole
// role name, whose tokens carry it and live appRoleTokenTTL, renewable up
// to appRoleTokenMaxTTL, and returns the role's role_id.
func (c *cluster) appRole(t *testing.T, name string) string {
	t.Helper()
	return c.appRoleWith(t, name, map[string]any{
		"token_ttl":     appRoleTokenTTL.String(),
		"token_max_ttl": appRoleTokenMaxTTL.String(),
	})
}

// appRoleWith creates Vault policy "keybroker" (brokerVaultPolicy) and
// AppRole role name with the role fields in role, whose tokens carry the
// policy, and returns the role's role_id.
func (c *cluster) appRoleWith(t *testing.T, name string, role map[string]any) string {
	t.Helper()
	if err := c.root.Sys().PutPolicy("keybroker", brokerVaultPolicy); err != nil {
		t.Fatal(err)
	}
	fields := map[string]any{"token_policies": "keybroker"}
	maps.Copy(fields, role)
	if _, err := c.root.Logical().Write("auth/approle/role/"+name, fields); err != nil {
		t.Fatalf("write approle role %s: %v", name, err)
	}
	s, err := c.root.Logical().Read("auth/approle/role/" + name + "/role-id")
	if err != nil || s == nil {
		t.Fatalf("read the role_id of %s: %v", name, err)
	}
	return s.Data["role_id"].(string)
}

// The batch tokens of TestBrokerAppRoleBatchToken's role live
// appRoleBatchTTL and cannot be renewed: the broker logs in again after
// appRoleBatchRelogin, two thirds of it. The test watches the broker for
// appRoleBatchWindow, longer than the first token lives.
const (
	appRoleBatchTTL     = 6 * time.Second
	appRoleBatchRelogin = 4 * time.Second
	appRoleBatchWindow  = 10 * time.Second
)

// secretIDUsesLeft is how many logins the secret_id secretID of AppRole
// role name has left: 0 once they are used up and Vault deleted it.
func (c *cluster) secretIDUsesLeft(t *testing.T, name, secretID string) int {
	t.Helper()
	s, err := c.root.Logical().Write("auth/approle/role/"+name+"/secret-id/lookup", map[string]any{"secret_id": secretID})
	if err != nil {
		t.Fatalf("look up the secret_id of %s: %v", name, err)
	}
	if s == nil || s.Data == nil {
		return 0
	}
	n, ok := s.Data["secret_id_num_uses"].(json.Number)
	if !ok {
		t.Fatalf("the secret_id of %s: secret_id_num_uses is %#v", name, s.Data["secret_id_num_uses"])
	}
	left, err := n.Int64()
	if err != nil {
		t.Fatal(err)
	}
	return int(left)
}

// secretID generates a secret_id of AppRole role name.
func (c *cluster) secretID(t *testing.T, name string) string {
	t.Helper()
	s, err := c.root.Logical().Write("auth/approle/role/"+name+"/secret-id", nil)
	if err != nil || s == nil {
		t.Fatalf("generate a secret_id of %s: %v", name, err)
	}
	return s.Data["secret_id"].(string)
}

// appRoleTokens lists the accessors of the live tokens that AppRole logins
// with role name created.
func (c *cluster) appRoleTokens(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	for _, a := range c.accessors(t) {
		s, err := c.root.Auth().Token().LookupAccessor(a)
		if err != nil || s == nil {
			continue // expired since the list
		}
		meta, _ := s.Data["meta"].(map[string]any)
		if s.Data["path"] == "auth/approle/login" && meta["role_name"] == name {
			out = append(out, a)
		}
	}
	return out
}

// writeSecretIDFile replaces path with secretID (0600) in one rename, so
// that the broker never reads half a file.
func writeSecretIDFile(t *testing.T, path, secretID string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(secretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startKeybrokerAppRole runs `keybroker serve` (startBroker) logging in to
// c with AppRole: role_id roleID and the secret_id in secretIDFile.
func startKeybrokerAppRole(t *testing.T, c *cluster, ca localCA, policy, roleID, secretIDFile string) *brokerProcess {
	t.Helper()
	return startBroker(t, c, ca, policy, fmt.Sprintf(`approle {
    role_id        = %q
    secret_id_file = %q
  }`, roleID, secretIDFile), "")
}

var appRoleLoginRE = regexp.MustCompile(`msg="logged in to vault" component=vault method=approle ttl=\S+ renewable=true`)

// appRoleAnyLoginRE matches every AppRole login of the broker, renewable
// or not, with its ttl and renewable.
var appRoleAnyLoginRE = regexp.MustCompile(`msg="logged in to vault" component=vault method=approle ttl=(\S+) renewable=(\S+)`)

// appRoleLogins counts the broker's AppRole logins in its log.
func (p *brokerProcess) appRoleLogins() int {
	return len(appRoleLoginRE.FindAllString(p.log.String(), -1))
}

// waitFor polls cond every 100ms until it holds, failing the test after
// timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kvRelease is what bootstrap writes for a vault_kv release.
type kvRelease struct {
	Path    string            `json:"path"`
	Version int64             `json:"version"`
	Data    map[string]string `json:"data"`
}

// bootstrapKV bootstraps n against p into a new directory, which must
// succeed, and returns the vault_kv release "db" it wrote.
func bootstrapKV(t *testing.T, p *brokerProcess, n *node) kvRelease {
	t.Helper()
	out := filepath.Join(t.TempDir(), "creds")
	r := runAgent(t, n.home, bootstrapArgs(p.keybroker, n, out)...)
	if r.code != 0 {
		t.Fatalf("bootstrap: exit %d: %s", r.code, r.stderr)
	}
	var secret kvRelease
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(out, "db.json"))), &secret); err != nil {
		t.Fatal(err)
	}
	return secret
}

// appRoleSetup is brokerSetup with AppRole enabled and the node's vault_kv
// secret written at kvPath (want is its data).
func appRoleSetup(t *testing.T) (c *cluster, ca localCA, n *node, kvPath string, want map[string]string) {
	t.Helper()
	c, ca, n, ekHash, _ := brokerSetup(t)
	kvPath = "kv/data/nodes/" + ekHash[:16]
	want = map[string]string{"user": "node", "password": "s3cret-db-password"}
	c.writeKV(t, kvPath, map[string]any{"user": "node", "password": "s3cret-db-password"})
	c.enableAppRole(t)
	return c, ca, n, kvPath, want
}

// TestBrokerAppRoleRelogin: `keybroker serve` with an approle block logs in
// to Vault with AppRole, renews its token (TTL 5s), and once the token
// reaches its maximum TTL (15s) logs in again with the secret_id file; a
// bootstrap after the first token expired (Vault no longer has it) still
// gets the vault_kv secret. A second broker whose secret_id is destroyed
// after it started cannot log in again: once its token expired it refuses
// attestations (FailedPrecondition, "release: vault refused the broker
// (permission denied (403))") and writes nothing, logs the failed login,
// retries, and with a new secret_id in the file logs in and releases again. A broker
// with a wrong secret_id does not start: it exits 1 naming the refused
// AppRole login.
func TestBrokerAppRoleRelogin(t *testing.T) {
	c, ca, n, kvPath, want := appRoleSetup(t)
	policy := fmt.Sprintf(releasePolicy, n.pcr7)
	secretDir := t.TempDir()

	// A wrong secret_id: the broker does not start.
	roleID := c.appRole(t, "keybroker")
	wrongFile := filepath.Join(secretDir, "wrong-secret-id")
	wrongID := "00000000-1111-2222-3333-444444444444"
	writeSecretIDFile(t, wrongFile, wrongID)
	wrong := startKeybrokerAppRole(t, c, ca, policy, roleID, wrongFile)
	<-wrong.exited
	wantStart := "serve: unable to log in to vault at " + c.addr + ": vault approle login: refused (400): "
	if log := wrong.log.String(); wrong.addr != "" || wrong.code != 1 ||
		!strings.Contains(log, wantStart) || !strings.Contains(log, "invalid role or secret ID") {
		t.Errorf("broker with a wrong secret_id: listening %q, exit %d, log:\n%s\nwant no listener, exit 1 and %q… invalid role or secret ID",
			wrong.addr, wrong.code, log, wantStart)
	}
	if strings.Contains(wrong.log.String(), wrongID) {
		t.Error("the broker logged the secret_id")
	}

	// Broker a logs in with AppRole and releases.
	secretA := c.secretID(t, "keybroker")
	fileA := filepath.Join(secretDir, "secret-id-a")
	writeSecretIDFile(t, fileA, secretA)
	a := startKeybrokerAppRole(t, c, ca, policy, roleID, fileA)
	startedA := time.Now() // a logged in before it listened
	if a.addr == "" {
		t.Fatalf("broker a exited %d before serving:\n%s", a.code, a.log.String())
	}
	// Broker b, with its own role and secret_id, which is destroyed once
	// b has logged in.
	roleB := c.appRole(t, "keybroker-b")
	secretB := c.secretID(t, "keybroker-b")
	fileB := filepath.Join(secretDir, "secret-id-b")
	writeSecretIDFile(t, fileB, secretB)
	b := startKeybrokerAppRole(t, c, ca, policy, roleB, fileB)
	startedB := time.Now()
	if b.addr == "" {
		t.Fatalf("broker b exited %d before serving:\n%s", b.code, b.log.String())
	}
	if _, err := c.root.Logical().Write("auth/approle/role/keybroker-b/secret-id/destroy", map[string]any{"secret_id": secretB}); err != nil {
		t.Fatalf("destroy b's secret_id: %v", err)
	}

	if got := a.appRoleLogins(); got != 1 {
		t.Errorf("broker a logged %d AppRole logins at start, want 1:\n%s", got, a.log.String())
	}
	firstA := c.appRoleTokens(t, "keybroker")
	if len(firstA) != 1 {
		t.Fatalf("Vault has %d tokens of AppRole role keybroker, want 1 (broker a's)", len(firstA))
	}
	if got := bootstrapKV(t, a, n); got.Path != kvPath || !maps.Equal(got.Data, want) {
		t.Errorf("first bootstrap: db.json = %+v", got)
	}

	// Past the first tokens' maximum TTL: Vault has revoked them.
	time.Sleep(time.Until(startedB.Add(appRoleTokenMaxTTL + time.Second)))
	waitFor(t, 10*time.Second, "Vault revokes broker a's first token", func() bool {
		return !slices.Contains(c.appRoleTokens(t, "keybroker"), firstA[0])
	})
	if _, err := c.root.Auth().Token().LookupAccessor(firstA[0]); err == nil {
		t.Fatal("broker a's first token is still alive past its maximum TTL")
	}
	t.Logf("broker a's first token is gone %v after a started", time.Since(startedA).Round(time.Millisecond))

	// Broker a logged in again and still releases.
	if got := a.appRoleLogins(); got < 2 {
		t.Errorf("broker a logged %d AppRole logins, want a second one:\n%s", got, a.log.String())
	}
	if log := a.log.String(); !strings.Contains(log, `msg="vault token renewed" component=vault`) ||
		!strings.Contains(log, `msg="the vault token reached its maximum TTL" component=vault`) ||
		strings.Contains(log, "unable to log in to vault again") {
		t.Errorf("broker a's log lacks a renewal, the maximum TTL, or has a failed login:\n%s", log)
	}
	if live := c.appRoleTokens(t, "keybroker"); len(live) == 0 {
		t.Error("Vault has no live token of broker a after its re-login")
	}
	if got := bootstrapKV(t, a, n); got.Path != kvPath || got.Version != 1 || !maps.Equal(got.Data, want) {
		t.Errorf("bootstrap after the first token expired: db.json = %+v", got)
	}

	// Broker b could not log in again: refused, nothing written.
	if log := b.log.String(); !strings.Contains(log, `msg="unable to log in to vault again" component=vault error="vault approle login: refused (400): `) ||
		!strings.Contains(log, "invalid role or secret ID") || !strings.Contains(log, "retry_in=10s") {
		t.Errorf("broker b did not log its failed AppRole login:\n%s", log)
	}
	if live := c.appRoleTokens(t, "keybroker-b"); len(live) != 0 {
		t.Errorf("Vault still has %d tokens of broker b", len(live))
	}
	outB := filepath.Join(t.TempDir(), "creds")
	r := runAgent(t, n.home, bootstrapArgs(b.keybroker, n, outB)...)
	wantRefused := "bootstrap failed at attest: broker refused (FailedPrecondition): release: vault refused the broker (permission denied (403)) (receipt "
	if r.code != 1 || !strings.HasPrefix(r.stderr, wantRefused) {
		t.Errorf("bootstrap against b without a token: exit %d, stderr %q; want 1 and %q…", r.code, r.stderr, wantRefused)
	}
	if des, err := os.ReadDir(outB); err == nil && len(des) > 0 {
		t.Errorf("a refused bootstrap wrote %d files", len(des))
	}
	if log := b.log.String(); !strings.Contains(log, `msg="attestation refused"`) || !strings.Contains(log, "check=release") {
		t.Error("broker b's log has no 'attestation refused ... check=release' line")
	}

	// A new secret_id in b's file: b's next attempt logs in, b releases.
	writeSecretIDFile(t, fileB, c.secretID(t, "keybroker-b"))
	waitFor(t, 25*time.Second, "broker b logs in again with the new secret_id", func() bool { return b.appRoleLogins() >= 2 })
	if got := bootstrapKV(t, b, n); got.Path != kvPath || !maps.Equal(got.Data, want) {
		t.Errorf("bootstrap against b after its re-login: db.json = %+v", got)
	}

	for _, p := range []*brokerProcess{wrong, a, b} {
		if log := p.log.String(); strings.Contains(log, secretA) || strings.Contains(log, secretB) || strings.Contains(log, "s3cret") {
			t.Error("a broker logged a secret_id or the secret")
		}
	}
	t.Logf("test done %v after broker a started", time.Since(startedA).Round(time.Millisecond))
}

// TestBrokerAppRoleBatchToken: with an AppRole role that issues batch
// tokens (not renewable, TTL 6s) `keybroker serve` uses each token for two
// thirds of its TTL and then logs in again, rather than at once in a loop:
// over the 10s after it started it logged 2 to 4 AppRole logins (each
// ttl=6s renewable=false, each followed by "the vault token is not
// renewable; logging in again before it expires" in=4s, none failed), and
// Vault counted 2 to 4 uses of its secret_id; a bootstrap then, after the
// first token expired, still gets the vault_kv secret.
func TestBrokerAppRoleBatchToken(t *testing.T) {
	c, ca, n, kvPath, want := appRoleSetup(t)

	const role = "keybroker-batch"
	roleID := c.appRoleWith(t, role, map[string]any{
		"token_type": "batch",
		"token_ttl":  appRoleBatchTTL.String(),
	})
	// A secret_id good for secretIDUses logins: what Vault has left of
	// them counts the broker's logins on Vault's side.
	const secretIDUses = 100
	s, err := c.root.Logical().Write("auth/approle/role/"+role+"/secret-id", map[string]any{"num_uses": secretIDUses})
	if err != nil || s == nil {
		t.Fatalf("generate a secret_id of %s: %v", role, err)
	}
	secretID := s.Data["secret_id"].(string)
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	writeSecretIDFile(t, secretFile, secretID)

	p := startKeybrokerAppRole(t, c, ca, fmt.Sprintf(releasePolicy, n.pcr7), roleID, secretFile)
	started := time.Now() // p logged in before it listened
	if p.addr == "" {
		t.Fatalf("the broker exited %d before serving:\n%s", p.code, p.log.String())
	}

	// Logins at 0s, 4s, 8s (12s) of the window: between 2 and 4 of them
	// allows for a slow start or slow logins on a loaded machine. Logging
	// in again at once used up all secretIDUses within a second.
	time.Sleep(time.Until(started.Add(appRoleBatchWindow)))
	log := p.log.String()
	logins := appRoleAnyLoginRE.FindAllStringSubmatch(log, -1)
	used := secretIDUses - c.secretIDUsesLeft(t, role, secretID)
	t.Logf("%v after the broker started: %d AppRole logins in its log, %d uses of its secret_id in Vault",
		time.Since(started).Round(time.Millisecond), len(logins), used)
	if len(logins) < 2 || len(logins) > 4 {
		t.Errorf("the broker logged %d AppRole logins in %v with %v batch tokens, want 2 to 4 (one every %v)",
			len(logins), appRoleBatchWindow, appRoleBatchTTL, appRoleBatchRelogin)
	}
	if used < 2 || used > 4 {
		t.Errorf("Vault counted %d logins with the broker's secret_id in %v, want 2 to 4", used, appRoleBatchWindow)
	}
	for _, m := range logins {
		if m[1] != appRoleBatchTTL.String() || m[2] != "false" {
			t.Errorf("an AppRole login logged ttl=%s renewable=%s, want ttl=%v renewable=false (a batch token)", m[1], m[2], appRoleBatchTTL)
			break
		}
	}
	wait := `msg="the vault token is not renewable; logging in again before it expires" component=vault in=` + appRoleBatchRelogin.String() + "\n"
	if waits := strings.Count(log, wait); waits < len(logins)-1 || waits > len(logins) || waits == 0 {
		t.Errorf("the broker logged %d times %q after %d logins, want one after each", waits, strings.TrimSpace(wait), len(logins))
	}
	for _, bad := range []string{"unable to log in to vault again", "vault token renewal failed", "vault token renewed"} {
		if strings.Contains(log, bad) {
			t.Errorf("the broker logged %q with batch tokens", bad)
		}
	}

	// The first token expired at the latest appRoleBatchTTL after started;
	// the broker releases with a later one.
	if got := bootstrapKV(t, p, n); got.Path != kvPath || got.Version != 1 || !maps.Equal(got.Data, want) {
		t.Errorf("bootstrap after the first batch token expired: db.json = %+v", got)
	}
	if log := p.log.String(); strings.Contains(log, secretID) || strings.Contains(log, "s3cret") {
		t.Error("the broker logged its secret_id or the secret")
	}
	t.Logf("test done %v after the broker started", time.Since(started).Round(time.Millisecond))
}
