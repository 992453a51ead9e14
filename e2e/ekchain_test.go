package e2e

// EK certificate chains assembled from both sides.
//
//   - TestAgentSendsEKIntermediates: a broker whose ek_ca holds only swtpm's
//     root CA, given as a directory, refuses the node at challenge
//     (ek_trust) until the agent sends swtpm's intermediate CA with
//     --ek-intermediates; then the EK chains and the node gets its
//     credential, recorded under that ek_ca.

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

func TestAgentSendsEKIntermediates(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	// The root alone, in a directory (swtpm's CA directory also holds its
	// signing key, so it cannot serve as one).
	roots := filepath.Join(t.TempDir(), "ek-roots")
	if err := os.Mkdir(roots, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(roots, "swtpm-root.pem"), string(readFile(t, tpm.RootCAFile)))
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{{name: "swtpm", roots: []string{roots}}}, policy: sealedPolicy(p)})
	out := filepath.Join(t.TempDir(), "tls")

	// Without the intermediate the EK certificate does not chain.
	r := bootstrap(t, tpm, b, out)
	wantExit(t, r, 1)
	wantContains(t, "agent stderr", r.stderr, "bootstrap failed at challenge", "ek_trust")
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused bootstrap created %s (%v)", out, err)
	}

	// With it, it does.
	got := wantBootstrapped(t, bootstrap(t, tpm, b, out, "--ek-intermediates", tpm.IntermediateCAFile), "PCR_SEALED")
	wantCredential(t, out, b, ekHash, got.serial)
	rec := receiptByID(t, receipts(t, b), got.receipt)
	if !rec.Allowed || rec.EKHash != ekHash {
		t.Errorf("receipt = allowed %v for EK %s; want allowed for %s", rec.Allowed, rec.EKHash, ekHash)
	}
}
