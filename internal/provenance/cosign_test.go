package provenance_test

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/keybroker/keybroker/internal/provenance"
	"github.com/keybroker/keybroker/internal/provenance/provenancetest"
)

// TestCosignSignBlob verifies bundles that the cosign CLI, a signer no one
// here wrote, makes with a key pair it generated: cosign sign-blob --key
// --new-bundle-format --tlog-upload=false.
func TestCosignSignBlob(t *testing.T) {
	bin := provenancetest.Cosign(t)
	if bin == "" {
		t.Skip(provenancetest.CosignEnv + " is not set: this test needs the cosign CLI and is skipped here; CI runs it (.ci/run builds cosign and sets " + provenancetest.CosignEnv + ")")
	}
	dir := t.TempDir()
	provenancetest.RunCosign(t, bin, dir, "generate-key-pair")
	provenancetest.RunCosign(t, bin, dir, "generate-key-pair", "--output-key-prefix", "other")
	artifact := []byte("an executable signed by cosign\n")
	if err := os.WriteFile(filepath.Join(dir, "app"), artifact, 0o755); err != nil {
		t.Fatal(err)
	}
	sign := func(key, bundle string) []byte {
		provenancetest.RunCosign(t, bin, dir, "sign-blob", "--yes", "--key", key, "--new-bundle-format", "--tlog-upload=false", "--bundle", bundle, "app")
		b, err := os.ReadFile(filepath.Join(dir, bundle))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good, foreign := sign("cosign.key", "app.sigstore.json"), sign("other.key", "other.sigstore.json")

	pub, err := os.ReadFile(filepath.Join(dir, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	der, err := provenance.ParsePublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := provenance.NewTrust([]provenance.Key{{Name: "cosign", DER: der}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(artifact)
	if got, err := trust.Verify(digest[:], good); err != nil || !slices.Equal(got, []string{"key:cosign"}) {
		t.Fatalf("Verify(cosign bundle) = %v, %v", got, err)
	}
	modified := sha256.Sum256(append(slices.Clone(artifact), '!'))
	if got, err := trust.Verify(modified[:], good); err == nil {
		t.Fatalf("Verify(modified artifact) = %v, want an error", got)
	}
	if got, err := trust.Verify(digest[:], foreign); err == nil {
		t.Fatalf("Verify(bundle of another cosign key) = %v, want an error", got)
	}
}
