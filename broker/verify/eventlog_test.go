package verify_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"testing"

	legacy "github.com/google/go-tpm/legacy/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/evidencetest"
)

// bootedNode is a simulated machine that booted as log says: the log's
// digests are extended into every allocated bank.
func bootedNode(t *testing.T, opts evidencetest.BootOpts) (*simNode, *evidencetest.Log) {
	t.Helper()
	n := openSimNode(t)
	banks, err := evidencetest.AllocatedBanks(n.rw)
	if err != nil {
		t.Fatal(err)
	}
	opts.Banks = banks
	log := evidencetest.Boot(opts)
	if err := log.Extend(n.rw); err != nil {
		t.Fatal(err)
	}
	return n, log
}

// verified quotes the SHA-256 and SHA-384 banks, as the agent does.
func (n *simNode) verified(t *testing.T) *verify.Verified {
	t.Helper()
	secret := newSecret(7)
	quotes := []verify.Quote{
		quote(t, n.ak, legacy.AlgSHA256, pcrRange(24), secret),
		quote(t, n.ak, legacy.AlgSHA384, pcrRange(24), secret),
	}
	v, err := verify.Quotes(n.node, sha256.Sum256(secret), quotes, verify.Opts{})
	if err != nil {
		t.Fatalf("verify.Quotes: %v", err)
	}
	return v
}

func TestEventLogFacts(t *testing.T) {
	for _, sb := range []bool{true, false} {
		name := "secure boot off"
		if sb {
			name = "secure boot on"
		}
		t.Run(name, func(t *testing.T) {
			n, log := bootedNode(t, evidencetest.BootOpts{SecureBoot: sb, KernelCmdline: "root=/dev/vda1 ro quiet"})
			v, err := n.verified(t).WithEventLog(log.Bytes())
			if err != nil {
				t.Fatalf("WithEventLog: %v", err)
			}
			f := v.EventLog()
			if f == nil {
				t.Fatal("no event-log facts")
			}
			if f.SecureBoot != sb {
				t.Errorf("SecureBoot = %v, want %v", f.SecureBoot, sb)
			}
			if !strings.HasSuffix(f.KernelCmdline, " root=/dev/vda1 ro quiet") {
				t.Errorf("KernelCmdline = %q", f.KernelCmdline)
			}
			if len(f.BootApps) != 3 {
				t.Errorf("BootApps = %v, want shim, GRUB and the kernel", f.BootApps)
			}
			if len(f.Separators) != 8 || f.Separators[0] != 0 || f.Separators[7] != 7 {
				t.Errorf("Separators = %v, want PCRs 0-7", f.Separators)
			}
			if sb && (len(f.PK) == 0 || len(f.DB) == 0 || len(f.Authorities) == 0) {
				t.Errorf("secure boot databases missing: %+v", f)
			}
			if f.FirmwareVersion == "" || len(f.GrubCommands) == 0 {
				t.Errorf("firmware version %q, grub commands %v", f.FirmwareVersion, f.GrubCommands)
			}
			// Facts are copies.
			f.BootApps[0] = "changed"
			if v.EventLog().BootApps[0] == "changed" {
				t.Error("EventLog returned shared slices")
			}
		})
	}
}

func TestEventLogBootAppDigests(t *testing.T) {
	opts := evidencetest.BootOpts{SecureBoot: true}
	n, log := bootedNode(t, opts)
	v, err := n.verified(t).WithEventLog(log.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	// The kernel is the last application; its facts digest is the
	// SHA-256 PCR 4 digest of the kernel's application event.
	apps := log.Find(4, evidencetest.EvEFIBootServicesApplication, nil)
	want := hex.EncodeToString(log.Events[apps[len(apps)-1]].Digest(crypto.SHA256))
	if got := v.EventLog().BootApps; got[len(got)-1] != want {
		t.Errorf("last boot app = %s, want the kernel's digest %s", got[len(got)-1], want)
	}
}

func TestEventLogRefusals(t *testing.T) {
	n, log := bootedNode(t, evidencetest.BootOpts{SecureBoot: true, KernelCmdline: "ro quiet"})
	v := n.verified(t)
	cmdline := log.Find(8, evidencetest.EvIPL, []byte("kernel_cmdline"))
	shim := log.Find(4, evidencetest.EvEFIBootServicesApplication, nil)
	sbVar := log.Find(7, evidencetest.EvEFIVariableDriverConfig, nil)
	if len(cmdline) == 0 || len(shim) < 3 || len(sbVar) == 0 {
		t.Fatalf("unexpected boot log layout: cmdline %v, apps %v, sb %v", cmdline, shim, sbVar)
	}
	tests := []struct {
		name    string
		log     []byte
		wantErr string
	}{
		{"edited command line", log.EditEvent(cmdline[0], []byte("kernel_cmdline: init=/bin/sh")).Bytes(), "event_log: event log does not replay to the quoted sha256 PCRs [8]"},
		{"edited shim", log.EditEvent(shim[0], nil).Bytes(), "event log does not replay to the quoted sha256 PCRs [4]"},
		{"dropped kernel", log.DropEvent(shim[2]).Bytes(), "event log does not replay to the quoted sha256 PCRs [4]"},
		{"reordered applications", log.SwapEvents(shim[1], shim[2]).Bytes(), "event log does not replay to the quoted sha256 PCRs [4]"},
		{"edited secure boot variable", log.EditEvent(sbVar[0], nil).Bytes(), "event log does not replay to the quoted sha256 PCRs [7]"},
		{"wrong SHA-384 digest", log.WrongBank(cmdline[0], crypto.SHA384).Bytes(), "event log does not replay to the quoted sha384 PCRs [8]"},
		{"garbage", []byte("not an event log"), "event_log: event log cannot be parsed"},
		{"too large", make([]byte, verify.MaxEventLogSize+1), "input: event_log is too large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.WithEventLog(tc.log)
			if got != nil || err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("WithEventLog = %v, %v; want error %q", got, err, tc.wantErr)
			}
		})
	}
}

func TestEventLogMustCoverQuotedFirmwarePCRs(t *testing.T) {
	n, log := bootedNode(t, evidencetest.BootOpts{})
	// PCR 3 holds only its separator: without that event the log says
	// nothing about PCR 3, which the TPM says was extended.
	sep3 := log.Find(3, evidencetest.EvSeparator, nil)
	if len(sep3) != 1 {
		t.Fatalf("PCR 3 events = %v", sep3)
	}
	_, err := n.verified(t).WithEventLog(log.DropEvent(sep3[0]).Bytes())
	if verify.FailedCheck(err) != verify.CheckEventLog || !strings.Contains(err.Error(), "sha256 PCR 3 was extended but the event log has no events for it") {
		t.Fatalf("WithEventLog = %v; want a refusal naming PCR 3", err)
	}
	if !verify.FromTPM(err) {
		t.Errorf("FromTPM(%v) = false: the log is refused after the quote verified", err)
	}
}

func TestEventLogEventsForUnquotedPCRs(t *testing.T) {
	n, log := bootedNode(t, evidencetest.BootOpts{})
	secret := newSecret(9)
	// Quote only PCRs 0-7: the log's PCR 8 and 9 events (GRUB) would go
	// unchecked, so they must be refused, not ignored.
	q := quote(t, n.ak, legacy.AlgSHA256, pcrRange(8), secret)
	v, err := verify.Quotes(n.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.WithEventLog(log.Bytes())
	if verify.FailedCheck(err) != verify.CheckEventLog || !strings.Contains(err.Error(), "which was not quoted") {
		t.Fatalf("WithEventLog = %v; want a refusal for events on unquoted PCRs", err)
	}
}

func TestEventLogEmpty(t *testing.T) {
	n := openSimNode(t)
	v := n.verified(t)
	got, err := v.WithEventLog(nil)
	if err != nil || got != v || got.EventLog() != nil {
		t.Fatalf("WithEventLog(nil) = %v, %v; want v unchanged, no facts", got, err)
	}
}

// An event's type is not covered by its digest, so a node can send a log
// that replays but whose event types go-eventlog cannot name (it panics on
// them), and real firmware logs vendor types. The log is accepted: the
// event is listed with its type, and the rest of the log is still read.
func TestEventLogUnknownEventTypeIsAccepted(t *testing.T) {
	n, log := bootedNode(t, evidencetest.BootOpts{SecureBoot: true})
	v := n.verified(t)
	apps := log.Find(4, evidencetest.EvEFIBootServicesApplication, nil)
	bad := log.Clone()
	bad.Events[apps[0]].Type = 0x80004207
	got, err := v.WithEventLog(bad.Bytes())
	if err != nil {
		t.Fatalf("WithEventLog: %v", err)
	}
	f := got.EventLog()
	if !f.SecureBoot || len(f.DB) == 0 || f.BootLoader != verify.BootLoaderGRUB || len(f.GrubCommands) == 0 {
		t.Errorf("the rest of the log was not read: secure boot %v, db %v, loader %q, grub %d commands", f.SecureBoot, f.DB, f.BootLoader, len(f.GrubCommands))
	}
	found := false
	for _, e := range f.Events {
		found = found || (e.Type == 0x80004207 && e.PCR == 4)
	}
	if !found {
		t.Errorf("the vendor event is not in Events")
	}
	// go-eventlog, which sees the event as EV_POST_CODE, no longer counts
	// it among the boot applications.
	if len(f.BootApps) != 2 {
		t.Errorf("BootApps = %v, want GRUB and the kernel", f.BootApps)
	}
}

// GRUB's digests cover the text after its labels, not the labels: a node
// that swaps the labels of its kernel command line and another command
// still replays, but must not get the other command's text as its command
// line.
func TestEventLogRelabelledKernelCmdline(t *testing.T) {
	n, log := bootedNode(t, evidencetest.BootOpts{SecureBoot: true, KernelCmdline: "ro quiet init=/bin/sh"})
	v := n.verified(t)
	cmdline := log.Find(8, evidencetest.EvIPL, []byte("kernel_cmdline: "))
	cmds := log.Find(8, evidencetest.EvIPL, []byte("grub_cmd: "))
	if len(cmdline) != 1 || len(cmds) == 0 {
		t.Fatalf("boot log layout: cmdline %v, commands %v", cmdline, cmds)
	}
	genuine, err := v.WithEventLog(log.Bytes())
	if err != nil || !strings.HasSuffix(genuine.EventLog().KernelCmdline, "init=/bin/sh") || len(genuine.EventLog().Problems) != 0 {
		t.Fatalf("genuine log: %v, %+v", err, genuine.EventLog())
	}
	swapped := log.Clone()
	k, g := &swapped.Events[cmdline[0]], &swapped.Events[cmds[0]]
	other := strings.TrimPrefix(string(g.Data), "grub_cmd: ")
	k.Data = append([]byte("grub_cmd: "), bytes.TrimPrefix(k.Data, []byte("kernel_cmdline: "))...)
	g.Data = append([]byte("kernel_cmdline: "), []byte(other)...)
	got, err := v.WithEventLog(swapped.Bytes())
	if err != nil {
		t.Fatalf("the relabelled log still replays, yet: %v", err)
	}
	f := got.EventLog()
	if f.KernelCmdline != "" {
		t.Fatalf("kernel command line %q taken from a relabelled command", f.KernelCmdline)
	}
	if !slices.ContainsFunc(f.Problems, func(p string) bool { return strings.HasPrefix(p, "kernel_cmdline: ") }) {
		t.Errorf("problems %q do not name the kernel command line", f.Problems)
	}
}
