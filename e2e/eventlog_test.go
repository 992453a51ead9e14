package e2e

import (
	"crypto"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/evidencetest"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// bootWithLog extends a realistic boot into tpm and writes its event log to
// a file the agent sends with --event-log.
func bootWithLog(t *testing.T, tpm *swtpmtest.TPM, opts evidencetest.BootOpts) (*evidencetest.Log, string) {
	t.Helper()
	conn := tpm.Dial(t)
	banks, err := evidencetest.AllocatedBanks(conn)
	if err != nil {
		t.Fatal(err)
	}
	opts.Banks = banks
	log := evidencetest.Boot(opts)
	if err := log.Extend(conn); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	file := filepath.Join(t.TempDir(), "binary_bios_measurements")
	writeFile(t, file, string(log.Bytes()))
	return log, file
}

// A boot policy over event-log facts (Secure Boot, the kernel the boot loader
// started, its command line) allows the node that booted that way and
// refuses one that did not, naming every failed condition in the receipt.
func TestEventLogPolicy(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	good := swtpmtest.Start(t, swtpmtest.Opts{})
	bad := swtpmtest.Start(t, swtpmtest.Opts{})
	goodLog, goodFile := bootWithLog(t, good, evidencetest.BootOpts{SecureBoot: true, KernelCmdline: "ro quiet"})
	_, badFile := bootWithLog(t, bad, evidencetest.BootOpts{SecureBoot: false, KernelCmdline: "ro quiet init=/bin/sh"})

	apps := goodLog.Find(4, evidencetest.EvEFIBootServicesApplication, nil)
	kernel := hex.EncodeToString(goodLog.Events[apps[len(apps)-1]].Digest(crypto.SHA256))
	require := []string{
		"ek.certified",
		"eventlog.present",
		"eventlog.secure_boot",
		"eventlog.boot_apps[2] == '" + kernel + "'",
		"eventlog.kernel_cmdline.endsWith(' ro quiet')",
	}
	badCA := swtpmCA(bad) // each swtpm has its own local CA
	badCA.name = "swtpm-b"
	b := startBroker(t, brokerOpts{
		ekCAs:  []ekCA{swtpmCA(good), badCA},
		policy: policyHCL(policyOpts{selector: `ek_cas = ["swtpm", "swtpm-b"]`, require: require, mode: "tpm_bound"}),
	})

	ok := bootstrap(t, good, b, filepath.Join(t.TempDir(), "tls"), "--event-log", goodFile)
	wantBootstrapped(t, ok, "TPM_BOUND")

	// The same kernel, but Secure Boot off and another command line.
	refused := bootstrap(t, bad, b, filepath.Join(t.TempDir(), "tls"), "--event-log", badFile)
	wantExit(t, refused, 1)
	wantContains(t, "agent stderr", refused.stderr, "bootstrap failed at attest", "policy: no policy allows this node")
	if strings.Contains(refused.stderr, "eventlog.") {
		t.Errorf("refusal leaks the policy: %s", refused.stderr)
	}
	r := receipts(t, b)[0]
	failures := strings.Join(r.Failures, "\n")
	for _, want := range []string{"require[2] eventlog.secure_boot", "require[4] eventlog.kernel_cmdline.endsWith(' ro quiet')"} {
		if !strings.Contains(failures, want) {
			t.Errorf("receipt failures %q lack %q", failures, want)
		}
	}
	if strings.Contains(failures, "require[3]") {
		t.Errorf("the kernel digest matched but is reported as failed: %q", failures)
	}

	// Without a log the event-log facts are absent and the policy refuses.
	none := bootstrap(t, good, b, filepath.Join(t.TempDir(), "tls"), "--event-log", "none")
	wantExit(t, none, 1)
	wantContains(t, "agent stderr", none.stderr, "policy: no policy allows this node")
}

// A log that does not match the TPM is refused with the mismatching PCR
// named, before any policy is consulted.
func TestEventLogTampered(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	log, _ := bootWithLog(t, tpm, evidencetest.BootOpts{SecureBoot: true, KernelCmdline: "ro quiet"})
	cmdline := log.Find(8, evidencetest.EvIPL, []byte("kernel_cmdline"))
	shim := log.Find(4, evidencetest.EvEFIBootServicesApplication, nil)
	b := startBroker(t, brokerOpts{
		ekCAs:  []ekCA{swtpmCA(tpm)},
		policy: policyHCL(policyOpts{selector: `ek_cas = ["swtpm"]`, require: []string{"eventlog.present"}, mode: "tpm_bound"}),
	})
	tests := []struct {
		name string
		log  *evidencetest.Log
		want string
	}{
		{"edited command line", log.EditEvent(cmdline[0], []byte("kernel_cmdline: init=/bin/sh")), "event_log: event log does not replay to the quoted sha256 PCRs [8]"},
		{"dropped kernel", log.DropEvent(shim[len(shim)-1]), "event_log: event log does not replay to the quoted sha256 PCRs [4]"},
		{"reordered boot applications", log.SwapEvents(shim[0], shim[1]), "event_log: event log does not replay to the quoted sha256 PCRs [4]"},
		{"wrong bank digest", log.WrongBank(cmdline[0], crypto.SHA256), "event_log: event log does not replay to the quoted sha256 PCRs [8]"},
	}
	for _, tc := range tests {
		file := filepath.Join(t.TempDir(), "log.bin")
		writeFile(t, file, string(tc.log.Bytes()))
		out := filepath.Join(t.TempDir(), "tls")
		r := bootstrap(t, tpm, b, out, "--event-log", file)
		wantExit(t, r, 1)
		wantContains(t, tc.name, r.stderr, "bootstrap failed at attest", tc.want)
	}
	rs := receipts(t, b)
	if len(rs) != len(tests) {
		t.Fatalf("%d receipts, want one per refusal", len(rs))
	}
	for _, r := range rs {
		if r.Allowed || r.Check != "event_log" || len(r.Released) != 0 {
			t.Errorf("receipt %s: allowed %v check %q released %v", r.ID, r.Allowed, r.Check, r.Released)
		}
	}
}
