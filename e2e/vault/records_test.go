package vaulte2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
)

// recordsPolicy is the Vault ACL policy of an operator who reads the auth
// method's receipts, node records and trust configuration, and exports
// its receipt chain.
const recordsPolicy = `
path "auth/tpm/receipts/*"     { capabilities = ["read", "list"] }
path "auth/tpm/nodes/*"        { capabilities = ["read", "list"] }
path "auth/tpm/config"         { capabilities = ["read"] }
path "auth/tpm/checkpoints/*"  { capabilities = ["read", "list"] }
path "auth/tpm/checkpoints"    { capabilities = ["list", "update"] }
path "auth/tpm/checkpoint-key" { capabilities = ["read"] }
`

// runKeybroker runs the keybroker CLI with args, Vault's address and CA
// from c, and token as VAULT_TOKEN.
func runKeybroker(t *testing.T, c *cluster, token string, args ...string) agentRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.broker, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"VAULT_ADDR=" + c.addr, "VAULT_CACERT=" + c.caFile, "VAULT_TOKEN=" + token}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	killWithParent(cmd)
	err := cmd.Run()
	r := agentRun{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("keybroker %v: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	t.Logf("keybroker %s → exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// TestKeybrokerReadsVaultRecords: after a node logs in through the auth
// method, `keybroker receipts list --vault-mount auth/tpm` lists the
// login's receipt, `keybroker nodes list/show` the node's record with its
// evidence, and `keybroker policy eval --vault-mount auth/tpm`
// verifies the node's stored evidence again with the mount's trust and
// evaluates candidate role policies on it: allowed by one that matches its
// PCR 7, denied by one that does not. `keybroker receipts export
// --vault-mount auth/tpm` exports the auth method's receipt chain with a
// checkpoint signed by the auth method's own key (`receipts checkpoint-key
// --vault-mount`), which `receipts verify --key` accepts offline, and
// refuses naming the receipt once one byte of it changed. A token without
// read on the mount's paths is refused with a message naming the path.
func TestKeybrokerReadsVaultRecords(t *testing.T) {
	c, n, _ := setup(t, nil)
	ekHash := strings.TrimSpace(runAgent(t, n.home, "ek-hash", "--tpm", n.tpm.spec()).stdout)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if r := runAgent(t, n.home, vaultLoginArgs(c.addr, c.caFile, n.tpm, "web", "-format", "json", "--token-file", tokenFile)...); r.code != 0 {
		t.Fatalf("vault-login exit %d: %s", r.code, r.stderr)
	}

	if err := c.root.Sys().PutPolicy("tpm-records", recordsPolicy); err != nil {
		t.Fatal(err)
	}
	operator := tokenWith(t, c, "tpm-records")
	mountFlag := "--vault-mount=auth/" + mount

	// The login's receipt.
	r := runKeybroker(t, c, operator, "receipts", "list", mountFlag, "--json")
	if r.code != 0 {
		t.Fatalf("receipts list exit %d: %s", r.code, r.stderr)
	}
	var receipt struct {
		ID       string   `json:"id"`
		EKHash   string   `json:"ek_hash"`
		Allowed  bool     `json:"allowed"`
		Policies []string `json:"policies"`
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if err := json.Unmarshal([]byte(lines[0]), &receipt); err != nil || len(lines) != 1 {
		t.Fatalf("receipts list printed %q: %v", r.stdout, err)
	}
	if receipt.EKHash != ekHash || !receipt.Allowed || receipt.ID == "" || len(receipt.Policies) != 1 || receipt.Policies[0] != "swtpm-nodes" {
		t.Errorf("receipt = %+v; want the allowed login of %s", receipt, ekHash)
	}
	if r := runKeybroker(t, c, operator, "receipts", "list", mountFlag); r.code != 0 || !strings.Contains(r.stdout, receipt.ID) {
		t.Errorf("text receipts list exit %d lacks %s:\n%s", r.code, receipt.ID, r.stdout)
	}

	// The receipt chain, exported and verified offline.
	dir := t.TempDir()
	keyFile, exportFile := filepath.Join(dir, "checkpoint.pub"), filepath.Join(dir, "receipts.jsonl")
	r = runKeybroker(t, c, operator, "receipts", "checkpoint-key", mountFlag)
	if r.code != 0 || !strings.Contains(r.stdout, "PUBLIC KEY") {
		t.Fatalf("receipts checkpoint-key exit %d: %s", r.code, r.stderr)
	}
	if err := os.WriteFile(keyFile, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runKeybroker(t, c, operator, "receipts", "export", mountFlag)
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 || !strings.Contains(lines[0], `"seq":1,`) || !strings.Contains(lines[0], receipt.ID) ||
		!strings.HasPrefix(lines[1], `{"checkpoint":{"seq":1,`) {
		t.Fatalf("receipts export exit %d: %q, want the receipt (seq 1) and a checkpoint of it", r.code, r.stdout)
	}
	if err := os.WriteFile(exportFile, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runKeybroker(t, c, operator, "receipts", "verify", exportFile, "--key", keyFile); r.code != 0 || !strings.Contains(r.stdout, "OK") {
		t.Errorf("receipts verify of the Vault export: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	changed := strings.Replace(r.stdout, `"allowed":true`, `"allowed":false`, 1)
	if err := os.WriteFile(exportFile, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runKeybroker(t, c, operator, "receipts", "verify", exportFile, "--key", keyFile); r.code != 1 ||
		!strings.Contains(r.stdout, "first bad receipt: seq 1 ("+receipt.ID+")") {
		t.Errorf("receipts verify of a changed export: exit %d, want 1 naming seq 1\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The node's record, by an EK hash prefix, with its evidence.
	if r := runKeybroker(t, c, operator, "nodes", "list", mountFlag); r.code != 0 || !strings.Contains(r.stdout, ekHash) || !strings.Contains(r.stdout, receipt.ID) {
		t.Errorf("nodes list exit %d lacks %s and %s:\n%s", r.code, ekHash, receipt.ID, r.stdout)
	}
	r = runKeybroker(t, c, operator, "nodes", "show", mountFlag, "--evidence", ekHash[:12])
	var shown struct {
		EKHash   string `json:"ek_hash"`
		Evidence struct {
			EKPublic []byte `json:"ek_public"`
			Quotes   []any  `json:"quotes"`
		} `json:"evidence"`
		Denial any `json:"denial"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &shown); r.code != 0 || err != nil || shown.EKHash != ekHash ||
		len(shown.Evidence.EKPublic) == 0 || len(shown.Evidence.Quotes) == 0 || shown.Denial != nil {
		t.Errorf("nodes show exit %d (%v): %+v", r.code, err, shown)
	}

	// Candidate role policies on the node's stored evidence.
	write := func(name, pcr7 string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(fmt.Sprintf(rolePolicy, pcr7)), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	type evalLine struct {
		EKHash        string   `json:"ek_hash"`
		LastReceiptID string   `json:"last_receipt_id"`
		Allowed       bool     `json:"allowed"`
		Policies      []string `json:"policies"`
		Failures      []string `json:"failures"`
		Error         string   `json:"error"`
	}
	eval := func(policy string) evalLine {
		t.Helper()
		r := runKeybroker(t, c, operator, "policy", "eval", mountFlag, "--json", policy)
		if r.code != 0 {
			t.Fatalf("policy eval exit %d: %s", r.code, r.stderr)
		}
		var e evalLine
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if err := json.Unmarshal([]byte(lines[0]), &e); err != nil || len(lines) != 1 {
			t.Fatalf("policy eval printed %q: %v", r.stdout, err)
		}
		if e.Error != "" || e.EKHash != ekHash || e.LastReceiptID != receipt.ID {
			t.Fatalf("policy eval = %+v; want node %s, receipt %s", e, ekHash, receipt.ID)
		}
		return e
	}
	if e := eval(write("match.hcl", n.pcr7)); !e.Allowed || len(e.Policies) != 1 || len(e.Failures) != 0 {
		t.Errorf("a policy matching PCR 7: %+v, want allowed", e)
	}
	other := strings.Repeat("00", 32)
	e := eval(write("other.hcl", other))
	if e.Allowed || len(e.Failures) == 0 || !strings.Contains(strings.Join(e.Failures, "\n"), "pcrs.sha256[7]") {
		t.Errorf("a policy wanting another PCR 7: %+v, want denied naming the condition", e)
	}
	if r := runKeybroker(t, c, operator, "policy", "eval", mountFlag, "--node", ekHash[:10], write("again.hcl", n.pcr7)); r.code != 0 ||
		!strings.Contains(r.stdout, "allowed by swtpm-nodes") {
		t.Errorf("policy eval --node exit %d:\n%s", r.code, r.stdout)
	}

	// A token without read on the mount's records.
	plain := tokenWith(t, c, "default")
	r = runKeybroker(t, c, plain, "receipts", "list", mountFlag)
	if want := "Vault refused: token lacks list on auth/tpm/receipts/"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("receipts list with a plain token: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
	r = runKeybroker(t, c, plain, "policy", "eval", mountFlag, write("p.hcl", n.pcr7))
	if want := "Vault refused: token lacks read on auth/tpm/config"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("policy eval with a plain token: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, want)
	}
}

// tokenWith is a new token of c with policy.
func tokenWith(t *testing.T, c *cluster, policy string) string {
	t.Helper()
	s, err := c.root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{policy}})
	if err != nil {
		t.Fatal(err)
	}
	return s.Auth.ClientToken
}
