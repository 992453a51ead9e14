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
	"github.com/keybroker/keybroker/broker/issue"
)

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	hash := strings.Repeat("ab", 32)
	base := `data_dir = "d"` + "\n" + `policies = ["p.hcl"]` + "\n" + `ek_allow = ["` + hash + `"]`
	tests := []struct {
		name     string
		src      string
		wantErr  []string
		wantPoll time.Duration // when no error
		wantTD   string        // when no error
	}{
		{
			name:     "minimal",
			src:      base,
			wantPoll: broker.DefaultPolicyPollInterval,
		},
		{
			name:     "policy polling disabled",
			src:      base + "\npolicy_poll_interval = \"0\"",
			wantPoll: 0,
		},
		{
			name:     "policy poll interval",
			src:      base + "\npolicy_poll_interval = \"500ms\"",
			wantPoll: 500 * time.Millisecond,
		},
		{
			name:    "policy poll interval not a duration",
			src:     base + "\npolicy_poll_interval = \"often\"",
			wantErr: []string{`broker.hcl:4:24: policy_poll_interval "often" is not a duration such as "60s"`},
		},
		{
			name:    "policy poll interval negative",
			src:     base + "\npolicy_poll_interval = \"-1s\"",
			wantErr: []string{"broker.hcl:4:24: policy_poll_interval cannot be negative"},
		},
		{
			name:    "policy poll interval too short",
			src:     base + "\npolicy_poll_interval = \"10ms\"",
			wantErr: []string{"broker.hcl:4:24: policy_poll_interval must be 0 (disabled) or at least 100ms"},
		},
		{
			name:    "pcr_banks problems",
			src:     base + "\npcr_banks = [\"sha1\", \"sha3\"]",
			wantErr: []string{"broker.hcl:4:14: pcr_banks: sha1 needs allow_sha1", `broker.hcl:4:22: pcr_banks: "sha3" is not sha1, sha256, sha384 or sha512`},
		},
		{
			name:     "pcr_banks",
			src:      base + "\npcr_banks = [\"sha256\"]",
			wantPoll: broker.DefaultPolicyPollInterval,
		},
		{
			name:    "identity_log_pcr resettable within a boot",
			src:     base + "\nidentity_log_pcr = 17",
			wantErr: []string{"broker.hcl:4:20: identity_log_pcr: PCR 17 cannot hold the identity record: use one of 10-15 (0 turns the identity record off)"},
		},
		{
			name:     "identity_log_pcr",
			src:      base + "\nidentity_log_pcr = 14",
			wantPoll: broker.DefaultPolicyPollInterval,
		},
		{
			name:    "syntax error with position",
			src:     "data_dir = \n",
			wantErr: []string{"broker.hcl:1:12: invalid expression: expected the start of an expression, but found an invalid expression token"},
		},
		{
			name: "missing data_dir",
			src:  `policies = ["p"]`,
			wantErr: []string{
				`broker.hcl:1:1: missing required argument: the argument "data_dir" is required, but no definition was found`,
				`broker.hcl:1:1: no EK is trusted: set ek_allow or ek_ca`,
			},
		},
		{
			name: "every problem reported",
			src: `data_dir = "d"
policies = []
challenge_ttl = "forever"
ek_allow = ["ABC"]`,
			wantErr: []string{
				`broker.hcl:2:12: policies cannot be empty: with no policy every node is refused`,
				`broker.hcl:3:17: challenge_ttl "forever" is not a duration such as "60s"`,
				`broker.hcl:4:13: ek_allow entry "ABC" is not a lowercase hex SHA-256 EK hash`,
			},
		},
		{
			name: "challenge_ttl out of range",
			src: `data_dir = "d"
policies = ["p"]
ek_allow = ["` + hash + `"]
challenge_ttl = "1h"`,
			wantErr: []string{"broker.hcl:4:17: challenge_ttl must be between 1s and 10m0s"},
		},
		{
			name:     "spiffe trust domain",
			src:      base + "\nspiffe {\n  trust_domain = \"example.org\"\n}",
			wantTD:   "example.org",
			wantPoll: broker.DefaultPolicyPollInterval,
		},
		{
			name:    "spiffe trust domain not a name",
			src:     base + "\n\nspiffe {\n  trust_domain = \"Example.org\"\n}",
			wantErr: []string{`broker.hcl:6:18: spiffe: trust_domain "Example.org" is not a trust domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		},
		{
			name:    "spiffe trust domain as an ID",
			src:     base + "\nspiffe {\n  trust_domain = \"spiffe://example.org\"\n}",
			wantErr: []string{`broker.hcl:5:18: spiffe: trust_domain must be a name such as "example.org", not "spiffe://example.org"`},
		},
		{
			name:    "spiffe trust domain empty",
			src:     base + "\nspiffe {\n  trust_domain = \"\"\n}",
			wantErr: []string{`broker.hcl:5:18: spiffe: trust_domain cannot be empty`},
		},
		{
			name:    "spiffe block without trust domain",
			src:     base + "\nspiffe {}",
			wantErr: []string{`broker.hcl:4:8: missing required argument: the argument "trust_domain" is required, but no definition was found`},
		},
		{
			name:    "two spiffe blocks",
			src:     base + "\nspiffe {\n  trust_domain = \"a.org\"\n}\nspiffe {\n  trust_domain = \"b.org\"\n}",
			wantErr: []string{`broker.hcl:7:1: duplicate spiffe block: only one spiffe block is allowed. Another was defined at `},
		},
		{
			name: "missing EK CA file",
			src: `data_dir = "d"
policies = ["p"]
ek_ca "vendor" {
  roots = ["missing.pem"]
}`,
			wantErr: []string{`broker.hcl:4:12: ek_ca "vendor" roots: unable to read missing.pem: `},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := broker.ParseConfig([]byte(tc.src), filepath.Join(dir, "broker.hcl"))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				if cfg.Listen != broker.DefaultListen || cfg.ChallengeTTL != 60*time.Second {
					t.Errorf("defaults not applied: %+v", cfg)
				}
				if cfg.TrustDomain.Name() != tc.wantTD {
					t.Errorf("TrustDomain = %q, want %q", cfg.TrustDomain.Name(), tc.wantTD)
				}
				if cfg.PolicyPollInterval != tc.wantPoll {
					t.Errorf("PolicyPollInterval = %v, want %v", cfg.PolicyPollInterval, tc.wantPoll)
				}
				if cfg.DataDir != filepath.Join(dir, "d") || cfg.PolicyPaths[0] != filepath.Join(dir, "p.hcl") {
					t.Errorf("relative paths not resolved against the config's directory: %q %q", cfg.DataDir, cfg.PolicyPaths)
				}
				return
			}
			if err == nil {
				t.Fatal("ParseConfig succeeded")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseConfigLoadsEKCA(t *testing.T) {
	dir := t.TempDir()
	// Any PEM certificate will do as a root: use a CA the issue package makes.
	caPEM := mustCAPEM(t)
	if err := os.WriteFile(filepath.Join(dir, "root.pem"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.ParseConfig([]byte(`data_dir = "d"
policies = ["p"]
ek_ca "vendor" {
  roots = ["root.pem"]
}`), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Verify.Trust.CAs) != 1 || cfg.Verify.Trust.CAs[0].Name != "vendor" || cfg.Verify.Trust.CAs[0].Roots == nil {
		t.Fatalf("EK CAs = %+v", cfg.Verify.Trust.CAs)
	}
}

// TestParseConfigEKCADirectories loads ek_ca roots and intermediates from
// directories and files, PEM and DER, and reports every bad file by name.
func TestParseConfigEKCADirectories(t *testing.T) {
	dir := t.TempDir()
	mkdir := func(name string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write := func(path string, data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pemOf := func(certs ...*x509.Certificate) []byte {
		var out []byte
		for _, c := range certs {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return out
	}
	// roots/: two certificates in one PEM file (after a key block, which is
	// skipped), one DER .crt, one PEM .CER; other files and
	// subdirectories are ignored.
	roots := mkdir("roots")
	r1, r2, r3, r4 := selfSignedCA(t, "root 1"), selfSignedCA(t, "root 2"), selfSignedCA(t, "root 3"), selfSignedCA(t, "root 4")
	write(filepath.Join(roots, "vendor.pem"),
		append(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}), pemOf(r1, r2)...))
	write(filepath.Join(roots, "vendor.crt"), r3.Raw)
	write(filepath.Join(roots, "OTHER.CER"), pemOf(r4))
	write(filepath.Join(roots, "README"), []byte("not a certificate"))
	mkdir("roots/old.pem")
	// A single file next to the directory, and intermediates as a directory.
	r5 := selfSignedCA(t, "root 5")
	write(filepath.Join(dir, "single.der"), r5.Raw)
	inters := mkdir("inters")
	i1 := selfSignedCA(t, "intermediate 1")
	write(filepath.Join(inters, "i1.pem"), pemOf(i1))

	cfg, err := broker.ParseConfig([]byte(`data_dir = "d"
policies = ["p"]
ek_ca "vendor" {
  roots         = ["roots", "single.der"]
  intermediates = ["inters"]
}`), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Verify.Trust.CAs) != 1 {
		t.Fatalf("EK CAs = %+v", cfg.Verify.Trust.CAs)
	}
	ca := cfg.Verify.Trust.CAs[0]
	for _, c := range []*x509.Certificate{r1, r2, r3, r4, r5} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Roots}); err != nil {
			t.Errorf("root %q not loaded: %v", c.Subject.CommonName, err)
		}
	}
	if _, err := i1.Verify(x509.VerifyOptions{Roots: ca.Intermediates}); err != nil {
		t.Errorf("intermediate not loaded from its directory: %v", err)
	}

	// Every bad entry is reported, each with its file name.
	bad := mkdir("bad")
	write(filepath.Join(bad, "good.pem"), pemOf(r1))
	write(filepath.Join(bad, "garbage.crt"), []byte("\x30\x03\x01\x02"))
	write(filepath.Join(bad, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}))
	write(filepath.Join(bad, "broken.cer"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x00}}))
	mkdir("empty")
	_, err = broker.ParseConfig([]byte(`data_dir = "d"
policies = ["p"]
ek_allow = ["`+strings.Repeat("ab", 32)+`"]
ek_ca "vendor" {
  roots         = ["bad", "empty", "missing"]
  intermediates = ["empty"]
}`), filepath.Join(dir, "broker.hcl"))
	if err == nil {
		t.Fatal("ParseConfig succeeded with bad EK CA files")
	}
	for _, want := range []string{
		`ek_ca "vendor" roots: ` + filepath.Join("bad", "broken.cer") + `: PEM block 1: x509: `,
		`ek_ca "vendor" roots: ` + filepath.Join("bad", "garbage.crt") + `: is neither PEM nor a DER certificate: `,
		`ek_ca "vendor" roots: ` + filepath.Join("bad", "key.pem") + `: holds no PEM certificate`,
		`ek_ca "vendor" roots: directory empty holds no *.pem, *.crt or *.cer file`,
		`ek_ca "vendor" roots: unable to read missing: `,
		`ek_ca "vendor" intermediates: directory empty holds no *.pem, *.crt or *.cer file`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "good.pem") {
		t.Errorf("error names a good file:\n%v", err)
	}
}

// selfSignedCA makes a throwaway self-signed CA certificate.
func selfSignedCA(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
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
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustCAPEM(t *testing.T) []byte {
	t.Helper()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	return ca.BundlePEM()
}
