package verify_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/google/go-eventlog/extract"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/broker/verify/tcglog"
)

// corpusLog is a real machine's event log from testdata/eventlogs (origins
// and licences in its README) and what the broker must make of it.
type corpusLog struct {
	file string
	// sha1Only: the log has SHA-1 digests only; it is refused unless
	// allow_sha1 is set and the sha1 bank quoted.
	sha1Only bool
	// Facts the log must yield, read off the log by hand (see the README).
	bootLoader      string
	secureBoot      bool
	firmwareVersion string
	cmdlinePrefix   string
	// problems are substrings of the parts that cannot be interpreted;
	// none when empty.
	problems []string
}

var corpus = []corpusLog{
	// systemd-boot: no GRUB events, the kernel command line in PCR 8 as UTF-16.
	{file: "arch-linux-workstation.bin", bootLoader: "systemd-boot", firmwareVersion: "1efb6b540c1d5540a4ad4ef4bf17b83a"},
	{file: "coreos-36-shielded-vm-no-secure-boot.bin", bootLoader: "grub", firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "(hd0,gpt3)/ostree/fedora-coreos-"},
	{file: "cos-85-amd-sev.bin", bootLoader: "grub", secureBoot: true, firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "/syslinux/vmlinuz.A "},
	{file: "cos-93-amd-sev.bin", bootLoader: "grub", secureBoot: true, firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "/syslinux/vmlinuz.A "},
	{file: "cos-101-amd-sev.bin", bootLoader: "grub", secureBoot: true, firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "/syslinux/vmlinuz.A "},
	{file: "cos-121-amd-sev.bin", bootLoader: "grub", secureBoot: true, firmwareVersion: "GCE Virtual Firmware v2", cmdlinePrefix: "/syslinux/vmlinuz.A "},
	{file: "cos-125-intel-tdx-secure-boot.bin", bootLoader: "grub", secureBoot: true, firmwareVersion: "GCE Virtual Firmware v2", cmdlinePrefix: "/syslinux/vmlinuz.A "},
	// A SHA-256-only log that stops before any boot application.
	{file: "crypto-agile.bin", bootLoader: "unknown", firmwareVersion: "1efb6b540c1d5540a4ad4ef4bf17b83a"},
	{file: "cs251200tpm.bin", bootLoader: "grub", firmwareVersion: "GCE Virtual Firmware v2", cmdlinePrefix: "/syslinux/vmlinuz.B "},
	{file: "debian-10.bin", sha1Only: true, bootLoader: "unknown", secureBoot: true, firmwareVersion: "GCE Virtual Firmware v1"},
	{file: "ebs-event-missing.bin", sha1Only: true, bootLoader: "unknown", firmwareVersion: "M60"},
	// Starts at locality 3; its S-CRTM version event's digest does not
	// cover its data, so the version is not read (a problem says so).
	{file: "gdc-host.bin", bootLoader: "grub", cmdlinePrefix: "/vmlinuz-6.9.0-rc7+ ", problems: []string{"invalid SCRTM version event for PCR0"}},
	// Starts at locality 3; an EV_EFI_ACTION in PCR 0 whose data is a
	// separator's, and a PK certificate Go's x509 refuses.
	{file: "glinux-alex.bin", bootLoader: "unknown", firmwareVersion: "1efb6b540c1d5540a4ad4ef4bf17b83a",
		problems: []string{"MR0 event contains separator data but non-separator type 7", "x509: negative serial number"}},
	{file: "option-rom.bin", sha1Only: true, bootLoader: "unknown", secureBoot: true, firmwareVersion: "M60"},
	{file: "rhel8-uefi.bin", bootLoader: "grub", secureBoot: true, firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "(hd0,gpt2)/boot/vmlinuz-4.18.0-240.22.1.el8_3.x86_64 "},
	// The Secure Boot events of a log, without the rest of the boot.
	{file: "sb-cert.bin", bootLoader: "unknown", secureBoot: true},
	{file: "ubuntu-1804-amd-sev.bin", bootLoader: "grub", firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "/boot/vmlinuz-5.4.0-1046-gcp "},
	{file: "ubuntu-2104-no-dbx.bin", bootLoader: "grub", firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "/boot/vmlinuz-5.11.0-1008-gcp "},
	{file: "ubuntu-2104-no-secure-boot.bin", bootLoader: "grub", firmwareVersion: "GCE Virtual Firmware v1", cmdlinePrefix: "/boot/vmlinuz-5.11.0-1006-gcp "},
	{file: "ubuntu-2404-amd-sevsnp.bin", bootLoader: "grub", firmwareVersion: "GCE Virtual Firmware v2", cmdlinePrefix: "/vmlinuz-6.8.0-1010-gcp "},
	{file: "ubuntu-2404-intel-tdx.bin", bootLoader: "grub", firmwareVersion: "GCE Virtual Firmware v2", cmdlinePrefix: "/vmlinuz-6.17.0-1008-gcp "},
}

// bootFromLog resets the simulator's PCRs by opening a new node and extends
// every measured event of raw into each bank the log and the simulator
// share, as the machine's firmware did. A log whose StartupLocality is not
// 0 is first rewritten to 0 (that event is never extended; the simulator
// starts at locality 0), which changes nothing else.
func bootFromLog(t *testing.T, raw []byte) (*simNode, []byte, *tcglog.Log) {
	t.Helper()
	log, err := tcglog.Parse(raw)
	if err != nil {
		t.Fatalf("tcglog.Parse: %v", err)
	}
	raw = atLocalityZero(t, raw, log)
	n := openSimNode(t)
	for _, e := range log.Events {
		if !e.Measured() {
			continue
		}
		for _, alg := range log.Algs {
			if alg == tpm2.TPMAlgSHA512 {
				continue
			}
			if err := legacy.PCRExtend(n.rw, tpmutil.Handle(e.PCR), legacy.Algorithm(alg), e.Digests[alg], ""); err != nil {
				t.Fatalf("extend event %d into PCR %d: %v", e.Seq, e.PCR, err)
			}
		}
	}
	return n, raw, log
}

func atLocalityZero(t *testing.T, raw []byte, log *tcglog.Log) []byte {
	if log.StartupLocality == 0 {
		return raw
	}
	sig := []byte("StartupLocality\x00")
	for _, e := range log.Events {
		if e.Type == tcglog.EvNoAction && strings.HasPrefix(string(e.Data), string(sig)) {
			out := append([]byte(nil), raw...)
			// The data is the record's last bytes: its last byte is the locality.
			end := e.Offset + recordSize(log, &e)
			out[end-1] = 0
			return out
		}
	}
	t.Fatal("no StartupLocality event")
	return nil
}

func recordSize(log *tcglog.Log, e *tcglog.Event) int {
	if log.Format == tcglog.SHA1 {
		return 4 + 4 + 20 + 4 + len(e.Data)
	}
	n := 4 + 4 + 4 + 4 + len(e.Data)
	for _, d := range e.Digests {
		n += 2 + len(d)
	}
	return n
}

// quoteBanks quotes the banks the log carries (SHA-1 only with allowSHA1).
func (n *simNode) quoteBanks(t *testing.T, log *tcglog.Log, allowSHA1 bool) *verify.Verified {
	t.Helper()
	secret := newSecret(11)
	var quotes []verify.Quote
	for _, alg := range []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384} {
		if log.HasAlg(alg) && (alg != tpm2.TPMAlgSHA1 || allowSHA1) {
			quotes = append(quotes, rawQuote(t, n.rw, n.ak, legacy.Algorithm(alg), pcrRange(24), secret))
		}
	}
	if len(quotes) == 0 { // a SHA-1 log: quote SHA-256, which it cannot be checked against
		quotes = append(quotes, quote(t, n.ak, legacy.AlgSHA256, pcrRange(24), secret))
	}
	v, err := verify.Quotes(n.node, sha256.Sum256(secret), quotes, verify.Opts{AllowSHA1: allowSHA1})
	if err != nil {
		t.Fatalf("verify.Quotes: %v", err)
	}
	return v
}

func TestEventLogCorpus(t *testing.T) {
	for _, c := range corpus {
		t.Run(c.file, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", "eventlogs", c.file))
			if err != nil {
				t.Fatal(err)
			}
			n, raw, log := bootFromLog(t, raw)
			if c.sha1Only {
				_, err := n.quoteBanks(t, log, false).WithEventLog(raw)
				want := "event_log: the event log carries sha1 digests only, and no quoted bank (sha256) is among them"
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("without allow_sha1: WithEventLog = %v; want %q", err, want)
				}
			}
			v, err := n.quoteBanks(t, log, c.sha1Only).WithEventLog(raw)
			if err != nil {
				t.Fatalf("WithEventLog: %v", err)
			}
			f := v.EventLog()
			c.checkFacts(t, f, log)
			checkAgainstGoEventlog(t, raw, v, f)
			checkTamperedCorpusLog(t, n, log, raw, c.sha1Only)
		})
	}
}

func (c corpusLog) checkFacts(t *testing.T, f *verify.EventLogFacts, log *tcglog.Log) {
	t.Helper()
	if f.BootLoader != c.bootLoader || f.SecureBoot != c.secureBoot || f.FirmwareVersion != c.firmwareVersion {
		t.Errorf("boot loader %q, secure boot %v, firmware %q; want %q, %v, %q",
			f.BootLoader, f.SecureBoot, f.FirmwareVersion, c.bootLoader, c.secureBoot, c.firmwareVersion)
	}
	if !strings.HasPrefix(f.KernelCmdline, c.cmdlinePrefix) || (c.cmdlinePrefix == "") != (f.KernelCmdline == "") {
		t.Errorf("kernel command line %q, want it to start with %q", f.KernelCmdline, c.cmdlinePrefix)
	}
	if len(f.Problems) != len(c.problems) {
		t.Errorf("problems %q, want %q", f.Problems, c.problems)
	}
	for i, p := range c.problems {
		if i < len(f.Problems) && !strings.Contains(f.Problems[i], p) {
			t.Errorf("problem %d = %q, want %q in it", i, f.Problems[i], p)
		}
	}
	measured := 0
	for _, e := range log.Events {
		if e.Measured() {
			measured++
		}
	}
	if len(f.Events) != measured {
		t.Errorf("%d events, the log has %d measured events", len(f.Events), measured)
	}
}

// checkTamperedCorpusLog changes one digest of the log's last measured
// event in the bank the facts come from: the log must be refused, naming
// that PCR.
func checkTamperedCorpusLog(t *testing.T, n *simNode, log *tcglog.Log, raw []byte, allowSHA1 bool) {
	t.Helper()
	var last *tcglog.Event
	for i := range log.Events {
		if log.Events[i].Measured() {
			last = &log.Events[i]
		}
	}
	if last == nil {
		return
	}
	bank := tpm2.TPMAlgSHA256
	if !log.HasAlg(bank) {
		bank = tpm2.TPMAlgSHA1
	}
	digest := last.Digests[bank]
	at := bytes.Index(raw[last.Offset:], digest)
	if at < 0 {
		t.Fatal("digest not found in its record")
	}
	bad := bytes.Clone(raw)
	bad[last.Offset+at] ^= 1
	_, err := n.quoteBanks(t, log, allowSHA1).WithEventLog(bad)
	want := fmt.Sprintf("event log does not replay to the quoted %s PCRs [%d]", verify.BankName(bank), last.PCR)
	if err == nil || !strings.Contains(err.Error(), want) || !verify.FromTPM(err) {
		t.Errorf("tampered log: WithEventLog = %v; want %q", err, want)
	}
}

// checkAgainstGoEventlog extracts the facts with go-eventlog directly, with
// the broker's options, and compares.
func checkAgainstGoEventlog(t *testing.T, raw []byte, v *verify.Verified, f *verify.EventLogFacts) {
	t.Helper()
	hash, err := f.Bank.Hash()
	if err != nil {
		t.Fatal(err)
	}
	el, err := tcg.ParseEventLog(raw, tcg.ParseOpts{})
	if err != nil {
		t.Fatalf("go-eventlog cannot parse the log: %v", err)
	}
	var mrs []register.MR
	for idx, val := range v.PCRs(f.Bank) {
		mrs = append(mrs, register.PCR{Index: int(idx), Digest: val, DigestAlg: hash})
	}
	events, err := el.Verify(mrs)
	if err != nil {
		t.Fatalf("go-eventlog does not replay the log: %v", err)
	}
	opts := extract.Opts{AllowEmptySBVar: true, AllowEFIAppBeforeCallingEvent: true}
	if f.BootLoader == verify.BootLoaderGRUB {
		opts.Loader = extract.GRUB
	}
	st, err := extract.FirmwareLogState(events, hash, extract.TPMRegisterConfig, opts)
	if (err != nil) != (len(f.Problems) > 0) {
		t.Errorf("go-eventlog's extraction error %v, the broker's problems %q", err, f.Problems)
	}
	if got, want := f.SecureBoot, st.GetSecureBoot().GetEnabled(); got != want {
		t.Errorf("SecureBoot = %v, go-eventlog says %v", got, want)
	}
	if got, want := len(f.DB), len(st.GetSecureBoot().GetDb().GetCerts())+len(st.GetSecureBoot().GetDb().GetHashes()); got != want {
		t.Errorf("%d db entries, go-eventlog has %d", got, want)
	}
	if got, want := len(f.BootApps), len(st.GetEfi().GetApps()); got != want {
		t.Errorf("%d boot apps, go-eventlog has %d", got, want)
	}
	if got, want := len(f.GrubCommands), len(st.GetGrub().GetCommands()); got != want {
		t.Errorf("%d GRUB commands, go-eventlog has %d", got, want)
	}
	if got, want := f.KernelCmdline, strings.TrimRight(st.GetLinuxKernel().GetCommandLine(), "\x00"); got != want {
		t.Errorf("kernel command line %q, go-eventlog has %q", got, want)
	}
	// go-eventlog reads GCE's S-CRTM version as a number; others as bytes.
	if g := st.GetPlatform().GetGceVersion(); g != 0 && !strings.HasSuffix(f.FirmwareVersion, " v"+strconv.Itoa(int(g))) {
		t.Errorf("firmware version %q, go-eventlog has GCE version %d", f.FirmwareVersion, g)
	}
	if id := st.GetPlatform().GetScrtmVersionId(); len(id) > 0 && !strings.Contains(hex.EncodeToString(id)+string(id)+utf16Of(id), f.FirmwareVersion) {
		t.Errorf("firmware version %q, go-eventlog has S-CRTM version %x", f.FirmwareVersion, id)
	}
}

// utf16Of decodes little-endian UTF-16 up to a NUL.
func utf16Of(b []byte) string {
	var u []uint16
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
