package policies_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/provenance"
	"github.com/keybroker/keybroker/internal/provenance/provenancetest"
	"github.com/keybroker/keybroker/policies"
)

// trustFiles writes a signer's public key and a trusted root next to the
// policies, as an operator would.
func trustFiles(t *testing.T) (dir string, key *provenancetest.KeySigner, ca *provenancetest.CA) {
	t.Helper()
	dir = t.TempDir()
	key, ca = provenancetest.NewKeySigner(t), provenancetest.NewCA(t)
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), key.PublicKeyPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "trusted_root.json"), ca.TrustedRootJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, key, ca
}

func TestSignedSelectors(t *testing.T) {
	v := attest(t, node{pcrs: []int{0, 7}})
	dir, key, ca := trustFiles(t)
	trust := `
signer "release" {
  public_key = file("release.pub")
}
signer "unused" {
  public_key = file("release.pub")
}
trusted_root "ci" {
  json    = file("trusted_root.json")
  issuers = ["https://token.ci.test", "https://oauth2.ci.test/auth"]
}
`
	pol := fmt.Sprintf(`
policy "web" {
  select { ek_hashes = [%q] }
  workload "web" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000", "signed:key:release"]
  }
  workload "builder" {
    spiffe_id = "spiffe://example.org/builder"
    selectors = ["signed:identity:https://oauth2.ci.test/auth/alice@example.com"]
  }
}
`, v.EKHash())
	// Trust blocks may live in their own document.
	if err := os.WriteFile(filepath.Join(dir, "trust.hcl"), []byte(trust), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "web.hcl"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := policies.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := set.Evaluate(v)
	if !d.Allowed || len(d.WorkloadEntries) != 2 {
		t.Fatalf("decision = %+v", d)
	}
	m := d.WorkloadTrust
	if len(m.Keys) != 1 || m.Keys[0].Name != "release" || len(m.Roots) != 1 || m.Roots[0].Name != "ci" ||
		string(m.Roots[0].JSON) != string(ca.TrustedRootJSON) || len(m.Roots[0].Issuers) != 2 {
		t.Fatalf("workload trust = %+v; want the release signer and the ci root only", m)
	}
	wantKey, _ := provenance.ParsePublicKey(key.PublicKeyPEM)
	if string(m.Keys[0].DER) != string(wantKey) {
		t.Fatal("the signer's key is not the file's")
	}
	// The material is what the agent builds its trust from.
	if _, err := provenance.NewTrust(m.Keys, m.Roots); err != nil {
		t.Fatal(err)
	}

	// The Set's hash covers the files that file() reads.
	h := set.Hash()
	other := provenancetest.NewKeySigner(t)
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), other.PublicKeyPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	set2, err := policies.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if set2.Hash() == h {
		t.Fatal("the policy hash did not change with the signer's key file")
	}

	// No workload uses trust: none is sent.
	plain, err := policies.Parse([]byte(fmt.Sprintf(`
policy "p" {
  select { ek_hashes = [%q] }
  workload "w" {
    spiffe_id = "spiffe://example.org/w"
    selectors = ["unix:uid:1"]
  }
}`, v.EKHash())), filepath.Join(dir, "p.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if d := plain.Evaluate(v); len(d.WorkloadTrust.Keys)+len(d.WorkloadTrust.Roots) != 0 {
		t.Fatalf("workload trust = %+v, want none", d.WorkloadTrust)
	}
}

func TestSignedSelectorRefusals(t *testing.T) {
	dir, _, _ := trustFiles(t)
	if err := os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	workload := func(sel string) string {
		return fmt.Sprintf(`
policy "p" {
  select { ek_hashes = [%q] }
  workload "w" {
    spiffe_id = "spiffe://example.org/w"
    selectors = [%q]
  }
}`, strings.Repeat("ab", 32), sel)
	}
	root := `
trusted_root "ci" {
  json    = file("trusted_root.json")
  issuers = ["https://oauth2.ci.test/auth"]
}`
	tests := []struct {
		name    string
		src     string
		wantErr string
	}{
		{name: "unknown signer", src: workload("signed:key:release"),
			wantErr: `p.hcl:6:18: policy "p": workload "w": selectors[0] "signed:key:release" names no signer block`},
		{name: "undeclared issuer", src: root + workload("signed:identity:https://oauth2.ci.test/alice@example.com"),
			wantErr: `does not start with an issuer a trusted root declares`},
		{name: "missing key file", src: `signer "s" { public_key = file("nope.pub") }`, wantErr: `unable to read`},
		{name: "not a key", src: `signer "s" { public_key = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n" }`,
			wantErr: `signer "s": public_key: PEM block "CERTIFICATE" is not a PUBLIC KEY`},
		{name: "no key", src: `signer "s" {}`, wantErr: `signer "s": public_key is required`},
		{name: "bad name", src: `signer "a:b" { public_key = file("release.pub") }`, wantErr: `signer "a:b": name "a:b" must be`},
		{name: "twice", src: `signer "s" { public_key = file("release.pub") }
signer "s" { public_key = file("release.pub") }`, wantErr: `p.hcl:2:8: signer "s" is already defined at `},
		{name: "bad root", src: `trusted_root "r" {
  json    = file("bad.json")
  issuers = ["https://a.test"]
}`, wantErr: `trusted_root "r": json: the trusted root lists no certificate authority`},
		{name: "no issuers", src: `trusted_root "r" { json = file("trusted_root.json") }`, wantErr: `trusted_root "r": issuers is required`},
		{name: "issuer not a URL", src: `trusted_root "r" {
  json    = file("trusted_root.json")
  issuers = ["accounts"]
}`, wantErr: `trusted_root "r": issuers[0]: issuer "accounts" must be an https:// URL`},
		{name: "ambiguous issuers", src: root + `
trusted_root "other" {
  json    = file("trusted_root.json")
  issuers = ["https://oauth2.ci.test"]
}`, wantErr: `make signed:identity selectors ambiguous`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policies.Parse([]byte(tt.src), filepath.Join(dir, "p.hcl"))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
