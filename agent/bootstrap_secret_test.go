package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/fakevaultsource"
	"github.com/keybroker/keybroker/policies"
)

// bootstrapFromVault bootstraps a node of a broker whose Vault is a fake
// and whose policies add to the TLS release a policy "vault" for the node
// with the releases given; it returns the fake, the broker, the output
// directory and the result.
func bootstrapFromVault(t *testing.T, releases string) (*fakevaultsource.Fake, *brokertest.Env, string, *agent.Result) {
	t.Helper()
	fake := fakevaultsource.New(t)
	env := brokertest.New(t, brokertest.Opts{Server: func(o *broker.ServerOpts) { o.Vault = fake.Client(t) }})
	pol, err := policies.Parse([]byte(env.PolicySource+fmt.Sprintf(`
policy "vault" {
  select { ek_hashes = [%q] }%s
}`, env.EKHash, releases)), "test.hcl")
	if err != nil {
		t.Fatal(err)
	}
	env.Server.SetPolicies(pol)
	out := t.TempDir()
	res, err := agent.Bootstrap(context.Background(), direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out})
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	return fake, env, out, res
}

// TestBootstrapWritesSecrets: a SECRET credential (vault_kv) is written as
// OUT/<release name>.json, 0600, with the TLS files; when Vault fails,
// nothing in OUT changes.
func TestBootstrapWritesSecrets(t *testing.T) {
	fake, env, out, res := bootstrapFromVault(t, `
  release "db" {
    type = "vault_kv"
    path = "secret/data/nodes/${ek_hash_short}"
  }`)
	file := filepath.Join(out, "db"+agent.SecretFileExt)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var sf agent.SecretFile
	if err := json.Unmarshal(b, &sf); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if sf.Data["password"] != "s3cret" || sf.Version != 3 || sf.Path != "secret/data/nodes/"+env.EKHash[:16] {
		t.Errorf("%s = %+v", file, sf)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", file, fi.Mode().Perm())
	}
	if len(res.Files) != 4 || res.Files[3] != file {
		t.Errorf("Files = %v", res.Files)
	}

	before := readSet(t, out)
	fake.Fail(http.StatusServiceUnavailable)
	if _, err := agent.Bootstrap(context.Background(), direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out}); err == nil {
		t.Fatal("Bootstrap succeeded while Vault is sealed")
	}
	if after := readSet(t, out); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Error("a refused bootstrap changed the TLS files")
	}
	if b2, _ := os.ReadFile(file); string(b2) != string(b) {
		t.Error("a refused bootstrap changed the secret file")
	}
}

// TestBootstrapWritesVaultToken: a VAULT_TOKEN credential (vault_token) is
// written as OUT/<release name>.token, 0600, the token alone; the token
// Vault created names the node's EK hash and the receipt the broker
// answered with.
func TestBootstrapWritesVaultToken(t *testing.T) {
	fake, env, out, res := bootstrapFromVault(t, `
  release "vault" {
    type       = "vault_token"
    token_role = "nodes"
    ttl        = "1h"
  }`)
	created := fake.Tokens()
	if len(created) != 1 {
		t.Fatalf("Vault created %d tokens", len(created))
	}
	meta, _ := created[0].Request["meta"].(map[string]any)
	if meta["keybroker_ek_hash"] != env.EKHash || meta["keybroker_receipt_id"] != res.ReceiptID || res.ReceiptID == "" {
		t.Errorf("token metadata %v; want EK hash %s and receipt %q", meta, env.EKHash, res.ReceiptID)
	}
	file := filepath.Join(out, "vault"+agent.TokenFileExt)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != created[0].Token {
		t.Errorf("%s = %q, want the token alone", file, b)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", file, fi.Mode().Perm())
	}
	if len(res.Files) != 4 || res.Files[3] != file {
		t.Errorf("Files = %v", res.Files)
	}
	// The result's validity is the earliest of the files': the token's
	// hour, not the certificate's two.
	if left := time.Until(res.NotAfter); left > time.Hour || left < 55*time.Minute {
		t.Errorf("NotAfter in %v, want the token's 1h", left)
	}
	// The result's validity is the earliest of the files': the token's
	// hour, not the certificate's two.
	if left := time.Until(res.NotAfter); left > time.Hour || left < 55*time.Minute {
		t.Errorf("NotAfter in %v, want the token's 1h", left)
	}
	// The receipt keeps the accessor, never the token.
	recs := env.Receipts(t)
	rec, _ := json.Marshal(recs)
	if len(recs) != 1 || recs[0].ID != res.ReceiptID || !slices.ContainsFunc(recs[0].Released, func(it store.ReleasedItem) bool {
		return it.Type == policies.TypeVaultToken && it.Serial == created[0].Accessor
	}) || strings.Contains(string(rec), created[0].Token) {
		t.Errorf("receipts %s; want the token's accessor %s and never the token", rec, created[0].Accessor)
	}
}
