package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The README's first command: the demo runs end to end on the embedded
// simulator, and the receipts it leaves show one release and one refusal.
func TestDemoAndReceipts(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if code := run([]string{"demo", "--keep", dir}, &out, &errOut); code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"activate", "opened inside the TPM (PCR_SEALED)", "policy: no policy allows this node", "demo OK"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	for _, f := range []string{"key.pem", "cert.pem", "chain.pem"} {
		if _, err := os.Stat(filepath.Join(dir, "node", f)); err != nil {
			t.Errorf("demo did not write %s: %v", f, err)
		}
	}

	out.Reset()
	if code := run([]string{"receipts", "list", "--data-dir", filepath.Join(dir, "broker")}, &out, &errOut); code != 0 {
		t.Fatalf("receipts list exit %d: %s", code, errOut.String())
	}
	text := out.String()
	if strings.Count(text, "allowed") != 1 || !strings.Contains(text, "denied: policy") || !strings.Contains(text, "pcrs.sha256[7]") {
		t.Errorf("receipts list does not show one release and the policy refusal with its failed condition:\n%s", text)
	}

	out.Reset()
	if code := run([]string{"receipts", "list", "--data-dir", filepath.Join(dir, "broker"), "--json", "--limit", "1"}, &out, &errOut); code != 0 {
		t.Fatalf("receipts list --json exit %d: %s", code, errOut.String())
	}
	if lines := strings.Count(strings.TrimSpace(out.String()), "\n") + 1; lines != 1 || !strings.Contains(out.String(), `"allowed":false`) {
		t.Errorf("receipts list --json --limit 1 = %q; want the newest (denied) receipt only", out.String())
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command", nil, 2, "keybroker: missing command\n\nUsage:"},
		{"unknown command", []string{"frobnicate"}, 2, `keybroker: unknown command "frobnicate"`},
		{"misspelt command", []string{"serv"}, 2, `keybroker: unknown command "serv" (did you mean "serve"?)`},
		{"serve without config", []string{"serve"}, 2, "keybroker serve: missing required flag --config\nRun 'keybroker serve --help' for usage.\n"},
		{"serve with an unknown flag", []string{"serve", "--config", "x.hcl", "--port", "1"}, 2, "keybroker serve: unknown flag: --port\n"},
		{"serve with a bad config", []string{"serve", "--config", "testdata/bad.hcl"}, 1, `"data_dir" is required`},
		{"serve with a single-dash flag", []string{"serve", "-config=testdata/bad.hcl"}, 1, `"data_dir" is required`},
		{"receipts without a store", []string{"receipts", "list"}, 2, "keybroker receipts list: --config or --data-dir is required\n"},
		{"receipts with a bad limit", []string{"receipts", "list", "--data-dir", "x", "--limit", "many"}, 2, `invalid argument "many" for "--limit" flag`},
		{"receipts without list", []string{"receipts"}, 2, "keybroker receipts: missing command"},
		{"demo with an argument", []string{"demo", "now"}, 2, `keybroker demo: unexpected arguments ["now"]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(tc.args, &out, &errOut); code != tc.wantCode || !strings.Contains(errOut.String(), tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d containing %q", code, errOut.String(), tc.wantCode, tc.wantErr)
			}
		})
	}
}
