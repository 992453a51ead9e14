package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const checkEK = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// A broker that trusts one EK hash and has no ek_ca, spiffe or vault block.
const bareBroker = `listen   = "127.0.0.1:0"
data_dir = "data"
policies = ["policies"]
ek_allow = ["` + checkEK + `"]
`

// Policies that load, but that this broker could never serve.
const mismatchedPolicy = `policy "web" {
  select {
    ek_cas = ["swtpm"]
  }
  release "svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
  }
}
`

// Policies this broker can serve.
const fittingPolicy = `policy "web" {
  select {
    ek_hashes = ["` + checkEK + `"]
  }
  release "tls" {
    type        = "tls_certificate"
    common_name = "web-${ek_hash_short}"
  }
}
`

// TestPolicyCheckConfig checks policies against the configuration they
// would run under: refused with every mismatch at its position, accepted
// when they fit; the configuration's own policies without FILE|DIR.
func TestPolicyCheckConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	config := write("broker.hcl", bareBroker)
	bad := write("candidate/bad.hcl", mismatchedPolicy)
	good := write("policies/web.hcl", fittingPolicy)

	code, stdout, stderr := runCmd(t, "policy", "check", "--config", config, bad)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != 1 || stdout != "" || len(lines) != 2 ||
		!strings.HasPrefix(lines[0], bad+":3:") || !strings.Contains(lines[0], `ek_ca "swtpm" is not defined`) ||
		!strings.HasPrefix(lines[1], bad+":") || !strings.Contains(lines[1], "spiffe") {
		t.Errorf("mismatched policies: exit %d, stdout %q, stderr:\n%s\nwant 1 and two file:line:column lines (ek_ca, spiffe)", code, stdout, stderr)
	}
	// Without --config the same file is only checked on its own.
	if code, _, stderr := runCmd(t, "policy", "check", bad); code != 0 {
		t.Errorf("policy check without --config: exit %d, stderr %q; want 0", code, stderr)
	}

	for _, args := range [][]string{{"--config", config, good}, {"--config", config}} {
		code, stdout, stderr := runCmd(t, append([]string{"policy", "check"}, args...)...)
		if want := `policy "web": ok`; code != 0 || !strings.Contains(stdout, want) || !strings.Contains(stdout, "checked against "+config) {
			t.Errorf("policy check %v: exit %d, stdout %q, stderr %q; want 0 and %q", args, code, stdout, stderr, want)
		}
	}

	code, _, stderr = runCmd(t, "policy", "check", "--config", filepath.Join(dir, "missing.hcl"))
	if code != 1 || !strings.Contains(stderr, "policy check: invalid configuration:") {
		t.Errorf("missing configuration: exit %d, stderr %q; want 1", code, stderr)
	}
}
