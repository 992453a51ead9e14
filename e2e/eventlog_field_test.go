package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/broker/verify/tcglog"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// bootFromRealLog extends the SHA-256 digests of a real machine's event log
// (broker/verify/testdata/eventlogs) into tpm, as that machine's firmware
// did, and returns the log's file (swtpm, once provisioned, has only the
// SHA-256 bank).
func bootFromRealLog(t *testing.T, tpm *swtpmtest.TPM, name string) (string, *tcglog.Log) {
	t.Helper()
	file := filepath.Join("..", "broker", "verify", "testdata", "eventlogs", name)
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	log, err := tcglog.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if log.StartupLocality != 0 {
		t.Fatalf("%s starts at locality %d; swtpm starts at 0", name, log.StartupLocality)
	}
	conn := tpm.Dial(t)
	defer conn.Close()
	for _, e := range log.Events {
		if e.Measured() {
			if err := legacy.PCRExtend(conn, tpmutil.Handle(e.PCR), legacy.AlgSHA256, e.Digests[tpm2.TPMAlgSHA256], ""); err != nil {
				t.Fatalf("extend event %d: %v", e.Seq, err)
			}
		}
	}
	return file, log
}

// A machine booted by systemd-boot (no GRUB measurements, the kernel command
// line logged as UTF-16, no "calling EFI application" event) gets its
// credential under a policy over the event-log facts, and again on renewal:
// a log that replays is never refused for what go-eventlog cannot
// interpret, and the node is not deny-listed.
func TestEventLogSystemdBootMachine(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	file, log := bootFromRealLog(t, tpm, "arch-linux-workstation.bin")
	measured := 0
	for _, e := range log.Events {
		if e.Measured() {
			measured++
		}
	}
	b := startBroker(t, brokerOpts{
		ekCAs: []ekCA{swtpmCA(tpm)},
		policy: policyHCL(policyOpts{selector: `ek_cas = ["swtpm"]`, mode: "pcr_sealed", require: []string{
			"eventlog.present",
			"eventlog.boot_loader == 'systemd-boot'",
			"eventlog.bank == 'sha256'",
			"size(eventlog.problems) == 0",
			"!eventlog.secure_boot",
			"size(eventlog.events) == " + strconv.Itoa(measured),
			"eventlog.events.exists(e, e.pcr == 8 && e.type == 13)",
		}}),
	})
	for _, round := range []string{"bootstrap", "renewal"} {
		r := bootstrap(t, tpm, b, filepath.Join(t.TempDir(), "tls"), "--event-log", file)
		if r.code != 0 {
			t.Fatalf("%s: exit %d\n%s", round, r.code, r.stderr)
		}
		wantBootstrapped(t, r, "PCR_SEALED")
	}
	for _, rec := range receipts(t, b) {
		if !rec.Allowed || len(rec.Released) == 0 || len(rec.Failures) > 0 || rec.DenyListed {
			t.Errorf("receipt %s: allowed %v, released %v, failures %q, deny-listed %v", rec.ID, rec.Allowed, rec.Released, rec.Failures, rec.DenyListed)
		}
	}

	// The same machine's log with the kernel command line event edited
	// (PCR 8) is refused, naming the PCR.
	edited := []byte(nil)
	raw, _ := os.ReadFile(file)
	for _, e := range log.Events {
		if e.PCR == 8 {
			edited = append([]byte(nil), raw...)
			i := e.Offset + strings.Index(string(raw[e.Offset:]), string(e.Digests[tpm2.TPMAlgSHA256]))
			edited[i] ^= 0xff
		}
	}
	bad := filepath.Join(t.TempDir(), "edited.bin")
	writeFile(t, bad, string(edited))
	r := bootstrap(t, tpm, b, filepath.Join(t.TempDir(), "tls"), "--event-log", bad)
	wantExit(t, r, 1)
	wantContains(t, "agent stderr", r.stderr, "event_log: event log does not replay to the quoted sha256 PCRs [8]")
}
