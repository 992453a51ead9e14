package packaging

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/policies"
)

// TestExampleConfig loads the example configuration as the broker would,
// installed as the units expect it: /etc/keybroker/broker.hcl with its
// policies and an EK root, here in a temporary directory.
func TestExampleConfig(t *testing.T) {
	etc := t.TempDir()
	copyFile(t, "broker.hcl", filepath.Join(etc, "broker.hcl"))
	copyFile(t, filepath.Join("policies", "example.hcl"), filepath.Join(etc, "policies", "example.hcl"))
	writeTestRoot(t, filepath.Join(etc, "ek-roots", "vendor-root.pem"))

	cfg, err := broker.LoadConfig(filepath.Join(etc, "broker.hcl"))
	if err != nil {
		t.Fatalf("example broker.hcl does not load: %v", err)
	}
	u := readUnit(t, filepath.Join("systemd", "keybroker.service"))
	if want := "/var/lib/" + u.service(t, "StateDirectory"); cfg.DataDir != want {
		t.Errorf("data_dir = %s, want the unit's StateDirectory %s", cfg.DataDir, want)
	}
	if cfg.Listen != "0.0.0.0:8443" {
		t.Errorf("listen = %s, want 0.0.0.0:8443 (the container's EXPOSE)", cfg.Listen)
	}
	if len(cfg.Verify.Trust.CAs) != 1 || cfg.Verify.Trust.CAs[0].Name != "vendors" {
		t.Errorf("ek_ca = %+v, want one named vendors", cfg.Verify.Trust.CAs)
	}
	set, err := policies.Load(cfg.PolicyPaths...)
	if err != nil {
		t.Fatalf("example policies do not load: %v", err)
	}
	if got := set.Names(); !slices.Equal(got, []string{"secure-boot-nodes"}) {
		t.Errorf("example policies = %q, want [secure-boot-nodes]", got)
	}

	// The broker unit's --config is broker.hcl in its ConfigurationDirectory.
	wantConfig := "--config /etc/" + u.service(t, "ConfigurationDirectory") + "/broker.hcl"
	if exec := u.service(t, "ExecStart"); !strings.HasSuffix(exec, wantConfig) {
		t.Errorf("ExecStart=%s, want it to end in %s", exec, wantConfig)
	}
}

func TestExamplePolicyRefusesBrokenCopy(t *testing.T) {
	// The load above must be able to fail: the same policy with a
	// misspelled release mode is refused, naming the file.
	src, err := os.ReadFile(filepath.Join("policies", "example.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(src), `"pcr_sealed"`, `"pcr_seeled"`, 1)
	path := filepath.Join(t.TempDir(), "example.hcl")
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policies.Load(path); err == nil || !strings.Contains(err.Error(), "example.hcl:") {
		t.Fatalf("policies.Load(misspelled mode) = %v, want an error naming example.hcl:LINE", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatalf("unable to read %s: %v", from, err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeTestRoot writes a self-signed CA certificate, standing in for a TPM
// vendor's EK root.
func writeTestRoot(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test EK root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}
