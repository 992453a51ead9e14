package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/issue"
)

// TestEarJWKS: "keybroker ear jwks" prints the JWKS of the configured
// result key, and refuses a configuration without attestation_results or
// whose key the broker has not made yet (it never makes one).
func TestEarJWKS(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, "ear.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	head := "data_dir = \"data\"\npolicies = [\"p.hcl\"]\nek_allow = [\"" + strings.Repeat("ab", 32) + "\"]\n"
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(head+body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	code, stdout, stderr := runCmd(t, "ear", "jwks", "--config", write("with-key.hcl", "attestation_results {\n  key_file = \"ear.pem\"\n}\n"))
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal([]byte(stdout), &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("stdout %q: %v; want a JWKS of one key", stdout, err)
	}
	kid, _ := issue.KeyID(key.Public())
	if k := set.Keys[0]; k["kid"] != kid || k["alg"] != "ES256" || k["use"] != "sig" || k["d"] != nil {
		t.Errorf("key %v; want kid %s, alg ES256, use sig and no private part", k, kid)
	}

	for _, tt := range []struct{ name, body, want string }{
		{"no block", "", "has no attestation_results block"},
		{"key not made yet", "attestation_results {}\n", "unable to load the result key (has the broker started with attestation_results?)"},
	} {
		code, stdout, stderr := runCmd(t, "ear", "jwks", "--config", write(tt.name+".hcl", tt.body))
		if code != 1 || stdout != "" || !strings.Contains(stderr, tt.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 1 and %q", tt.name, code, stdout, stderr, tt.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("ear jwks made the data directory: %v", err)
	}
}
