package vaultauth

import (
	"strings"
	"testing"

	"github.com/google/go-tpm/legacy/tpm2"
	tpm2b "github.com/google/go-tpm/tpm2"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/agent"
)

// The config endpoint's allow_sha1 and pcr_banks reach the login's checks
// through the one verify.Opts: a SHA-1 quote is refused by default,
// accepted with allow_sha1, and left out when pcr_banks leaves it out.
func TestConfigOptsReachLogin(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	n.n.Close()
	sha1Node, err := agent.NewNode(n.rw, agent.NodeOpts{Banks: []tpm2.Algorithm{tpm2.AlgSHA1, tpm2.AlgSHA256}})
	if err != nil {
		t.Fatal(err)
	}
	n.n = sha1Node
	e.configure(map[string]any{"ek_allow": n.ekHash})
	e.write("role/any", map[string]any{"policy": `policy "nodes" {
  select { ek_hashes = ["` + n.ekHash + `"] }
}`})

	resp, err := e.login(n, "any")
	wantDenied(t, resp, err, "pcr_bank")
	cfg, err := e.b.config(t.Context(), e.storage)
	if err != nil || cfg.verify.AllowSHA1 || cfg.verify.Banks != nil || len(cfg.verify.Trust.EKHashes) != 1 {
		t.Fatalf("default options = %+v, %v", cfg.verify, err)
	}

	e.configure(map[string]any{"allow_sha1": true})
	if resp, err := e.login(n, "any"); err != nil || resp.Auth == nil {
		t.Fatalf("login with allow_sha1: %v %v", err, resp.Error())
	}
	rec, err := e.b.store(e.storage).GetNode(t.Context(), n.ekHash)
	if err != nil || len(rec.Evidence.Quotes) != 2 {
		t.Fatalf("node record after a SHA-1 login: %d quotes, %v", len(rec.Evidence.Quotes), err)
	}

	e.configure(map[string]any{"allow_sha1": false, "pcr_banks": "sha256"})
	cfg, err = e.b.config(t.Context(), e.storage)
	if err != nil || cfg.verify.AllowSHA1 || len(cfg.verify.Banks) != 1 || cfg.verify.Banks[0] != tpm2b.TPMAlgSHA256 {
		t.Fatalf("options = %+v, %v", cfg.verify, err)
	}
	resp, err = e.login(n, "any")
	wantDenied(t, resp, err, "pcr_bank") // SHA-1 is refused even when it does not count
}

// identity_log_pcr reaches the login through the one verify.Opts: a node
// whose PCR 15 was extended and that sends no identity log is refused by
// default, accepted with the record turned off (0); a PCR a dynamic launch
// resets is refused when written.
func TestConfigIdentityLogPCR(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	e.configure(map[string]any{"ek_allow": n.ekHash, "identity_log_pcr": 0})
	e.write("role/any", map[string]any{"policy": `policy "nodes" {
  select { ek_hashes = ["` + n.ekHash + `"] }
}`})
	n.extend(15)
	if resp, err := e.login(n, "any"); err != nil || resp.Auth == nil {
		t.Fatalf("login with the identity record off: %v %v", err, resp.Error())
	}

	resp, err := e.request(logical.UpdateOperation, "config", map[string]any{"identity_log_pcr": 17})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "identity_log_pcr: PCR 17 cannot hold the identity record: use one of 10-15") {
		t.Fatalf("identity_log_pcr = 17: %v %v", err, resp.Error())
	}

	e.configure(map[string]any{"identity_log_pcr": 15})
	cfg, err := e.b.config(t.Context(), e.storage)
	if err != nil || cfg.verify.IdentityLogOff || cfg.verify.IdentityLogPCR != 15 {
		t.Fatalf("options = %+v, %v", cfg.verify, err)
	}
	resp, err = e.login(n, "any")
	wantDenied(t, resp, err, "identity_log")
}
