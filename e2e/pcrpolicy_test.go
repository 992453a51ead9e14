package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// pcr_policy "authorized" across processes on swtpm: the agent defines its
// policy counter, the operator approves an update's state through the
// running broker's admin socket, the next attestation brings the approval,
// and after a reboot into the updated state reopen opens the cached
// credentials with the broker gone; a state nobody approved does not.
func TestAuthorizedUpdateOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	policy := strings.Replace(sealedPolicy(p), "    pcrs        = [0, 7]\n", "    pcrs        = [0, 7]\n    pcr_policy  = \"authorized\"\n", 1)
	if !strings.Contains(policy, "pcr_policy") {
		t.Fatal("the policy has no pcr_policy")
	}
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policy})
	out, cache := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "cache")
	counter := []string{"--cache", cache, "--pcr-policy-counter", "default"}

	// Without a counter the release is refused, and says why.
	r := bootstrap(t, tpm, b, filepath.Join(t.TempDir(), "none"))
	wantExit(t, r, 1)
	wantContains(t, "bootstrap stderr", r.stderr, `is pcr_policy "authorized" and the node reported no policy counter`)

	wantBootstrapped(t, bootstrap(t, tpm, b, out, counter...), "PCR_SEALED")
	r = keybroker(t, "pcr-policy", "keys", "--config", b.configFile)
	wantExit(t, r, 0)
	wantContains(t, "pcr-policy keys", r.stdout, "-----BEGIN PUBLIC KEY-----")

	// The update's state: PCR 7 extended with the dbx update.
	ev := sha256.Sum256([]byte("e2e dbx update"))
	next := sha256.Sum256(append(append([]byte(nil), p.values[7]...), ev[:]...))
	r = keybroker(t, "pcr-policy", "approve", "--config", b.configFile, "--pcr", "0="+p.value(0), "--pcr", "7="+hex.EncodeToString(next[:]), "--note", "dbx")
	wantExit(t, r, 0)
	wantContains(t, "pcr-policy approve", r.stdout, "approved: state ")
	wantBootstrapped(t, bootstrap(t, tpm, b, out, counter...), "PCR_SEALED")
	if code := b.stop(t); code != 0 {
		t.Fatalf("broker exit %d", code)
	}

	reopen := func(t *testing.T) result {
		t.Helper()
		return agent(t, "reopen", "--tpm", "tcp://"+tpm.Addr, "--cache", cache, "--out", filepath.Join(t.TempDir(), "tls"))
	}
	tpm.Reset(t)
	updated := bootMeasured(t, tpm)
	updated.measure(t, 7, "e2e dbx update")
	r = reopen(t)
	wantExit(t, r, 0)
	wantContains(t, "reopen stdout", r.stdout, "reopened receipt ")

	tpm.Reset(t)
	other := bootMeasured(t, tpm)
	other.measure(t, 7, "e2e an update nobody approved")
	r = reopen(t)
	wantExit(t, r, 1)
	wantContains(t, "reopen stderr", r.stderr, "the broker has approved none the TPM holds now")
}
