package e2e

// Policy reload without a signal: `keybroker serve` polls its policy files
// (policy_poll_interval, default 2s) and reloads when one changes.
//
//   - TestPolicyReloadOnFileChange: a policy file replaced by rename (as
//     editors and configuration management do), with no SIGHUP, switches the
//     broker from refusing the node to allowing it within a few seconds; a
//     broken rewrite in place is refused once, logged with its file:line, and
//     the previous policy keeps serving (same policy hash in the receipts).

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// defaultPollInterval is policy_poll_interval's default, which the harness's
// broker.hcl leaves unset.
const defaultPollInterval = 2 * time.Second

// reloadLatency bounds how long after a file change the broker may take to
// serve it: one default poll interval (2s), the settle delay, and slack for
// a loaded machine.
const reloadLatency = 6 * time.Second

// renameInto replaces path with content atomically: a temporary file in the
// same directory, renamed over path.
func renameInto(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestPolicyReloadOnFileChange(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	other := sha256.Sum256([]byte("e2e another boot"))
	wrong7 := hex.EncodeToString(other[:])
	policyWith := func(pcr7 string) string {
		return policyHCL(policyOpts{selector: `ek_cas = ["swtpm"]`, require: pcrRequire(p.value(0), pcr7), mode: "pcr_sealed"})
	}
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policyWith(wrong7)})
	wantContains(t, "broker log", b.log.String(), "policy_poll_interval="+defaultPollInterval.String())
	out := filepath.Join(t.TempDir(), "tls")

	// 1. The policy expects another PCR 7: refused.
	r := bootstrap(t, tpm, b, out)
	wantExit(t, r, 1)
	wantContains(t, "agent stderr", r.stderr, "bootstrap failed at attest", "policy: no policy allows this node")
	m := refusedRE.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no receipt ID in the refusal:\n%s", r.stderr)
	}
	denied := m[1]

	// 2. The file is replaced with the right value; no signal: allowed
	// within a few seconds.
	changed := time.Now()
	renameInto(t, b.policyFile, policyWith(p.value(7)))
	b.waitLog(t, "policies reloaded", 1)
	if took := time.Since(changed); took > reloadLatency {
		t.Errorf("the broker reloaded %v after the file changed, want within %v", took, reloadLatency)
	} else {
		t.Logf("reloaded %v after the file changed", took.Round(time.Millisecond))
	}
	wantContains(t, "broker log", b.log.String(), `trigger="file change"`, b.policyFile)
	allowed := wantBootstrapped(t, bootstrap(t, tpm, b, out), "PCR_SEALED")
	wantCredential(t, out, b, ekHash, allowed.serial)

	// 3. A broken rewrite in place is refused, once, with its file:line;
	// the previous policy keeps serving.
	writeFile(t, b.policyFile, "policy \"e2e\" {\n  select {\n    ek_cas = [\"swtpm\"]\n  }\n  require = [\n")
	b.waitLog(t, "policy reload refused", 1)
	wantContains(t, "broker log", b.log.String(), "the previous policies keep serving", b.policyFile+":6:")
	kept := wantBootstrapped(t, bootstrap(t, tpm, b, out), "PCR_SEALED")
	wantCredential(t, out, b, ekHash, kept.serial)
	// Polls after the refusal look at the broken file again and do not
	// report it again.
	time.Sleep(defaultPollInterval + time.Second)
	log := b.log.String()
	if n := strings.Count(log, "policy reload refused"); n != 1 {
		t.Errorf("broker refused the broken file %d times, want once", n)
	}
	if n := strings.Count(log, "policies reloaded"); n != 1 {
		t.Errorf("broker logged %d reloads, want 1", n)
	}

	wantReloadReceipts(t, b, denied, allowed.receipt, kept.receipt, "its policy file changed")
}

// wantReloadReceipts checks the receipts of a reload test: the first
// attestation denied, the one after the reload allowed under another
// policy hash, the one after a refused reload allowed under the same; and
// that the broker still runs after what.
func wantReloadReceipts(t *testing.T, b *brokerProc, denied, allowed, kept, what string) {
	t.Helper()
	rs := receipts(t, b)
	d, a, k := receiptByID(t, rs, denied), receiptByID(t, rs, allowed), receiptByID(t, rs, kept)
	if d.Allowed || !a.Allowed || !k.Allowed {
		t.Errorf("decisions = %v %v %v, want denied, allowed, allowed", d.Allowed, a.Allowed, k.Allowed)
	}
	if d.PolicyHash == a.PolicyHash || a.PolicyHash != k.PolicyHash || a.PolicyHash == "" {
		t.Errorf("policy hashes = %q, %q, %q: want the reload to change it and the refused reload to keep it",
			d.PolicyHash, a.PolicyHash, k.PolicyHash)
	}
	select {
	case <-b.done:
		t.Fatalf("the broker exited (%d) after %s", b.exit, what)
	default:
	}
}
