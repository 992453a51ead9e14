package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// bootstrap --cache keeps the sealed credentials; after a reboot with the
// broker gone, keybroker-agent reopen writes the same files once the node
// measured the same boot, and refuses, writing nothing, while the PCRs
// differ.
func TestReopenAfterRebootOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: sealedPolicy(p)})
	out, cache := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "cache")
	wantBootstrapped(t, bootstrap(t, tpm, b, out, "--cache", cache), "PCR_SEALED")
	before := snapshot(t, out)
	if fi, err := os.Stat(filepath.Join(cache, "sealed-credentials.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v, mode %v; want 0600", err, fi.Mode())
	}
	if bytes.Contains(readFile(t, filepath.Join(cache, "sealed-credentials.json")), before["key.pem"]) {
		t.Fatal("the cache holds the plaintext key")
	}
	if code := b.stop(t); code != 0 {
		t.Fatalf("broker exit %d", code)
	}

	// Reboot: the PCRs are back at their reset values.
	tpm.Reset(t)
	fresh := filepath.Join(t.TempDir(), "tls")
	marker := filepath.Join(t.TempDir(), "changed")
	args := []string{"reopen", "--tpm", "tcp://" + tpm.Addr, "--cache", cache, "--out", fresh,
		"--on-change", `echo "$KEYBROKER_OUT" > ` + marker}
	r := agent(t, args...)
	wantExit(t, r, 1)
	wantContains(t, "reopen stderr", r.stderr, "reopen failed at open:", "sealed to PCR values this TPM no longer holds")
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Errorf("a refused reopen created %s: %v", fresh, err)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("a refused reopen ran --on-change: %v", err)
	}

	// The same boot again: the credentials open, byte for byte.
	bootMeasured(t, tpm)
	r = agent(t, args...)
	wantExit(t, r, 0)
	wantContains(t, "reopen stdout", r.stdout, "reopened receipt ", "wrote "+fresh)
	after := snapshot(t, fresh)
	for name, want := range before {
		if !bytes.Equal(after[name], want) {
			t.Errorf("reopened %s differs from the bootstrapped one", name)
		}
	}
	// --on-change ran once the files changed (written into an empty
	// --out), and not again when they are the same.
	if got := string(readFile(t, marker)); got != fresh+"\n" {
		t.Errorf("--on-change wrote %q, want KEYBROKER_OUT %q", got, fresh)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	wantExit(t, agent(t, args...), 0)
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("--on-change ran although the reopened files did not change: %v", err)
	}
}
