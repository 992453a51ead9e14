package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/policies"
)

// runCmd runs the keybroker command in process.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestPolicyCheck(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{
			name:       "good",
			args:       []string{"policy", "check", "testdata/policy_good.hcl"},
			wantStdout: []string{"policy \"db\": ok\npolicy \"web\": ok\n2 policies ok, policy hash "},
		},
		{
			name:     "bad, every error with its position",
			args:     []string{"policy", "check", "testdata/policy_good.hcl", "testdata/policy_bad.hcl"},
			wantCode: 1,
			wantStderr: []string{
				"testdata/policy_bad.hcl:1:8: policy \"web\" is already defined at testdata/policy_good.hcl:1:8",
				"testdata/policy_bad.hcl:6:5: policy \"web\": require[0] at expression 1:16: syntax error",
				"testdata/policy_bad.hcl:11:19: policy \"web\": release \"web-tls\": mode \"sealed\" is not supported",
			},
		},
		{
			name:       "facts",
			args:       []string{"policy", "check", "--facts"},
			wantStdout: []string{"FACT", "TYPE", "MEANING", "history.rebooted", "bool", "the TPM was reset"},
		},
		{
			name:       "facts and a check",
			args:       []string{"policy", "check", "--facts", "testdata/policy_good.hcl"},
			wantStdout: []string{"history.first_seen", "policy \"web\": ok"},
		},
		{
			name:       "help",
			args:       []string{"policy", "check", "--help"},
			wantStdout: []string{"keybroker policy check [--facts] [--config broker.hcl] FILE|DIR... [flags]", "--facts"},
		},
		{
			name:       "no file",
			args:       []string{"policy", "check"},
			wantCode:   2,
			wantStderr: []string{"keybroker policy check: no policy file or directory given\nRun 'keybroker policy check --help' for usage.\n"},
		},
		{
			name:       "missing file",
			args:       []string{"policy", "check", "testdata/nonexistent.hcl"},
			wantCode:   1,
			wantStderr: []string{"unable to read policies", "nonexistent.hcl"},
		},
		{
			name:       "no subcommand",
			args:       []string{"policy"},
			wantCode:   2,
			wantStderr: []string{"keybroker policy: missing command", "check", "eval", "Usage:"},
		},
		{
			name:       "unknown subcommand",
			args:       []string{"policy", "apply"},
			wantCode:   2,
			wantStderr: []string{`keybroker policy: unknown command "apply"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout, stderr)
			}
			for _, want := range tt.wantStdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout)
				}
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
		})
	}
}

// Every fact policies document is listed by --facts.
func TestPolicyCheckFactsListsEveryFact(t *testing.T) {
	_, stdout, _ := runCmd(t, "policy", "check", "--facts")
	for _, name := range policies.FactNames() {
		if !strings.Contains(stdout, "\n"+name+" ") {
			t.Errorf("--facts does not list %s", name)
		}
	}
}

func TestPolicyEvalUsage(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no config", []string{"policy", "eval", "--policy", "p.hcl"}, 2, "keybroker policy eval: missing required flag --config\n"},
		{"no policy", []string{"policy", "eval", "--config", "broker.hcl"}, 2, "keybroker policy eval: missing required flag --policy\n"},
		{"every problem at once", []string{"policy", "eval", "--node", "x", "--evidence", "e.json"}, 2,
			"policy eval: missing required flag --config\nkeybroker policy eval: missing required flag --policy\nkeybroker policy eval: --node and --evidence cannot be used together\n"},
		{"node and evidence", []string{"policy", "eval", "--config", "b.hcl", "--policy", "p.hcl", "--node", "x", "--evidence", "e.json"}, 2, "--node and --evidence cannot be used together"},
		{"bad config", []string{"policy", "eval", "--config", "testdata/bad.hcl", "--policy", "testdata/policy_good.hcl"}, 1, `"data_dir" is required`},
		{"evidence without a store", []string{"evidence", "show", "--node", "x"}, 2, "keybroker evidence show: --config or --data-dir is required\n"},
		{"evidence without a node", []string{"evidence", "show", "--data-dir", "x"}, 2, "keybroker evidence show: missing required flag --node\n"},
		{"evidence without show", []string{"evidence"}, 2, "keybroker evidence: missing command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d containing %q (stdout %q)", code, stderr, tt.wantCode, tt.wantErr, stdout)
			}
		})
	}
	for _, args := range [][]string{{"policy", "eval", "--help"}, {"evidence", "show", "--help"}} {
		if code, stdout, _ := runCmd(t, args...); code != 0 || !strings.Contains(stdout, "keybroker "+strings.Join(args[:2], " ")+" ") || !strings.Contains(stdout, "--config string") {
			t.Errorf("%v: exit %d, stdout %q; want 0 with the usage and flags", args, code, stdout)
		}
	}
}

// TestPolicyEvalOnDemo tries policies on the demo's node, whose last
// attestation (PCR 7 changed) the demo's policy denied: that policy still
// denies it, naming PCR 7, and a policy accepting any PCR 7 would allow it;
// its exported evidence gives the same answers.
func TestPolicyEvalOnDemo(t *testing.T) {
	dir := t.TempDir()
	if code, stdout, stderr := runCmd(t, "demo", "--keep", dir); code != 0 {
		t.Fatalf("demo exit %d\n%s%s", code, stdout, stderr)
	}
	config := filepath.Join(dir, "broker.hcl")
	current := filepath.Join(dir, "policy.hcl")
	lenient := filepath.Join(dir, "lenient.hcl")
	src, err := os.ReadFile(current)
	if err != nil {
		t.Fatal(err)
	}
	// The demo policy with its PCR 7 condition replaced.
	var lines []string
	for _, l := range strings.Split(string(src), "\n") {
		if strings.Contains(l, "pcrs.sha256[7]") {
			l = `    "7 in pcrs.sha256",`
		}
		lines = append(lines, strings.Replace(l, `policy "demo"`, `policy "lenient"`, 1))
	}
	if err := os.WriteFile(lenient, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}

	code, denied, stderr := runCmd(t, "policy", "eval", "--config", config, "--policy", current)
	if code != 0 || !strings.Contains(denied, "\n  denied\n") || !strings.Contains(denied, `policy "demo": require[1] pcrs.sha256[7] ==`) ||
		!strings.Contains(denied, "0 allowed, 1 denied, 0 not evaluated") {
		t.Errorf("eval of the demo policy: exit %d\n%s%s\nwant the node denied on PCR 7", code, denied, stderr)
	}
	code, allowed, stderr := runCmd(t, "policy", "eval", "--config", config, "--policy", lenient)
	if code != 0 || !strings.Contains(allowed, "  allowed by lenient\n") || !strings.Contains(allowed, "node-tls") ||
		!strings.Contains(allowed, "pcr_sealed sha256[0 7]") || !strings.Contains(allowed, "ttl 1h0m0s") {
		t.Errorf("eval of the lenient policy: exit %d\n%s%s\nwant the node allowed with node-tls sealed to sha256 [0 7]", code, allowed, stderr)
	}

	// Through an exported evidence file, in JSON.
	ekHash := strings.Fields(strings.SplitN(denied, "\n", 2)[0])[1]
	code, ev, stderr := runCmd(t, "evidence", "show", "--config", config, "--node", ekHash)
	if code != 0 || !json.Valid([]byte(ev)) {
		t.Fatalf("evidence show: exit %d\n%s%s", code, ev, stderr)
	}
	mesh := filepath.Join(dir, "mesh.hcl")
	if err := os.WriteFile(mesh, []byte(`policy "mesh" {
  select { ek_hashes = ["`+ekHash+`"] }
  release "node-svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
  }
  workload "web" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000", "unix:path:/usr/bin/web"]
  }
}`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCmd(t, "policy", "eval", "--config", config, "--policy", mesh)
	if code != 0 || !strings.Contains(out, "  allowed by mesh\n") ||
		!strings.Contains(out, "x509_svid  tpm_bound  ttl 24h0m0s  spiffe_id spiffe://example.org/node/"+ekHash[:16]) ||
		!strings.Contains(out, "  workload entries:\n    web  spiffe://example.org/web  ttl 1h0m0s  unix:uid:1000 unix:path:/usr/bin/web\n") {
		t.Errorf("eval of a SPIFFE policy: exit %d\n%s%s\nwant the node SVID and the workload entry", code, out, stderr)
	}

	evFile := filepath.Join(dir, "evidence.json")
	if err := os.WriteFile(evFile, []byte(ev), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		policy  string
		allowed bool
	}{{current, false}, {lenient, true}} {
		var fromNode, fromFile evalResult
		for _, by := range []struct {
			args []string
			into *evalResult
		}{
			{[]string{"--node", ekHash}, &fromNode},
			{[]string{"--evidence", evFile}, &fromFile},
		} {
			args := append([]string{"policy", "eval", "--config", config, "--policy", tc.policy, "--json"}, by.args...)
			code, out, stderr := runCmd(t, args...)
			if code != 0 || json.Unmarshal([]byte(out), by.into) != nil {
				t.Fatalf("%v: exit %d\n%s%s", args, code, out, stderr)
			}
		}
		if fromNode.Allowed != tc.allowed || fromNode.EKHash != ekHash || fromFile.EKHash != ekHash ||
			fromNode.Allowed != fromFile.Allowed || strings.Join(fromNode.Failures, "\n") != strings.Join(fromFile.Failures, "\n") ||
			len(fromNode.Releases) != len(fromFile.Releases) {
			t.Errorf("%s: --node gives %+v, --evidence %+v; want the same, allowed %v", filepath.Base(tc.policy), fromNode, fromFile, tc.allowed)
		}
	}

	// Evidence that no longer verifies is an error for that node.
	var doctored map[string]any
	if err := json.Unmarshal([]byte(ev), &doctored); err != nil {
		t.Fatal(err)
	}
	doctored["secret_hash"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	b, _ := json.Marshal(doctored)
	if err := os.WriteFile(evFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCmd(t, "policy", "eval", "--config", config, "--policy", lenient, "--evidence", evFile)
	if code != 1 || !strings.Contains(out, "error: evidence does not verify: quote_nonce:") || !strings.Contains(out, "1 not evaluated") {
		t.Errorf("eval of doctored evidence: exit %d\n%s; want 1 naming quote_nonce", code, out)
	}
	if code, _, stderr := runCmd(t, "policy", "eval", "--config", config, "--policy", lenient, "--node", "01234567"); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("eval of an unknown node: exit %d, stderr %q; want 1, not found", code, stderr)
	}
}
