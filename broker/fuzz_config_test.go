package broker_test

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
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// FuzzLoadConfig writes arbitrary bytes as broker.hcl, next to the files a
// configuration names (an EK CA, a Vault CA, token and AppRole secret), and
// loads it: LoadConfig must never panic, every refusal must name the file,
// and whatever it accepts must hold what a broker needs to start.
func FuzzLoadConfig(f *testing.F) {
	dir := f.TempDir()
	files := map[string][]byte{
		"ek-root.pem":     selfSignedPEM(f),
		"vault-ca.pem":    selfSignedPEM(f),
		"vault-token":     []byte("hvs.test-token\n"),
		"vault-secret-id": []byte("secret-id\n"),
		"policies/p.hcl":  []byte{},
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			f.Fatal(err)
		}
	}
	base := "data_dir = \"data\"\npolicies = [\"policies\"]\n"
	full := base + `listen = "127.0.0.1:9443"
server_names = ["localhost", "127.0.0.1"]
challenge_ttl = "90s"
allow_sha1 = false
pcr_banks = ["sha256", "sha384"]
policy_poll_interval = "500ms"
ek_allow = ["` + strings.Repeat("ab", 32) + `"]
ek_ca "vendor" {
  roots         = ["ek-root.pem"]
  intermediates = []
}
spiffe {
  trust_domain = "example.org"
}
vault {
  address    = "https://127.0.0.1:8200"
  ca_cert    = "vault-ca.pem"
  token_file = "vault-token"
}
`
	for _, src := range []string{
		base,
		full,
		base + `vault {
  address = "https://vault.example.com"
  approle {
    role_id        = "role"
    secret_id_file = "vault-secret-id"
  }
}
`,
		base + "challenge_ttl = \"1h\"\npcr_banks = [\"sha1\"]\nek_ca \"x\" {\n  roots = [\"missing.pem\"]\n}\n",
		"data_dir = \n",
		"",
	} {
		f.Add([]byte(src))
	}
	path := filepath.Join(dir, "broker.hcl")
	if err := os.WriteFile(path, []byte(full), 0o600); err != nil {
		f.Fatal(err)
	}
	if _, err := broker.LoadConfig(path); err != nil {
		f.Fatalf("the full seed is refused: %v", err)
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		if err := os.WriteFile(path, src, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := broker.LoadConfig(path)
		if err != nil {
			if !strings.Contains(err.Error(), "broker.hcl") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		switch {
		case c == nil:
			t.Fatal("no configuration and no error")
		case c.DataDir == "" || !filepath.IsAbs(c.DataDir):
			t.Fatalf("data_dir %q is not an absolute path", c.DataDir)
		case len(c.PolicyPaths) == 0:
			t.Fatal("accepted a configuration without policies")
		case c.ChallengeTTL <= 0 || c.ChallengeTTL > broker.MaxChallengeTTL:
			t.Fatalf("challenge TTL %v outside (0, %v]", c.ChallengeTTL, broker.MaxChallengeTTL)
		case c.Listen == "":
			t.Fatal("accepted a configuration without a listen address")
		}
	})
}

// selfSignedPEM is a CA certificate, PEM-encoded.
func selfSignedPEM(tb testing.TB) []byte {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fuzz CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
