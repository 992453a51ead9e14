package e2e

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/ear"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// TestAttestationResultOnSWTPM: a broker with an attestation_results block
// and an agent asked for a result with a relying party's nonce: the agent
// writes the EAR (0600) beside the credentials, and a relying party verifies
// it with the JWKS `keybroker ear jwks` prints, for that nonce, naming the
// receipt and claiming genuine hardware (swtpm's EK certificate chain) and
// an approved configuration (the policy's PCR conditions). Without the
// block, the agent fails at attest and writes nothing.
func TestAttestationResultOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: sealedPolicy(p),
		extra: "attestation_results {\n  ttl = \"10m\"\n}\n"})
	dir := t.TempDir()
	out, resultFile := filepath.Join(dir, "tls"), filepath.Join(dir, "result.jwt")
	nonce := []byte("relying party nonce 0001")

	got := wantBootstrapped(t, bootstrap(t, tpm, b, out, "--ear-out", resultFile, "--ear-nonce", hex.EncodeToString(nonce)), "PCR_SEALED")
	if fi, err := os.Stat(resultFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("result file: %v, %v; want mode 0600", fi, err)
	}
	jwks := keybroker(t, "ear", "jwks", "--config", b.configFile)
	wantExit(t, jwks, 0)
	token := strings.TrimSpace(string(readFile(t, resultFile)))
	r, err := ear.Verify(token, []byte(jwks.stdout), ear.VerifyOpts{Nonce: nonce})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	a := r.Submods[ear.Submod]
	want := ear.TrustVector{InstanceIdentity: 2, Hardware: 2, Configuration: 2}
	if r.ReceiptID != got.receipt || r.EKHash != ekHash || a.Status != ear.StatusAffirming || a.TrustVector == nil || *a.TrustVector != want {
		t.Errorf("result: receipt %s, EK %s, appraisal %+v %+v; want receipt %s, EK %s, affirming %+v",
			r.ReceiptID, r.EKHash, a, a.TrustVector, got.receipt, ekHash, want)
	}
	if _, err := ear.Verify(token, []byte(jwks.stdout), ear.VerifyOpts{Nonce: []byte("another relying party")}); err == nil {
		t.Error("the result verified for another nonce")
	}

	plain := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: sealedPolicy(p)})
	out2, result2 := filepath.Join(dir, "tls2"), filepath.Join(dir, "result2.jwt")
	refused := bootstrap(t, tpm, plain, out2, "--ear-out", result2)
	wantExit(t, refused, 1)
	wantContains(t, "bootstrap without attestation_results", refused.stderr, "bootstrap failed at attest: the broker returned no attestation result")
	for _, f := range []string{out2, result2} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s written: %v", f, err)
		}
	}
}
