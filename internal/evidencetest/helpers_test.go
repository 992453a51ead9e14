package evidencetest

import (
	"bytes"
	"crypto"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-eventlog/extract"
	pb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tpmeventlog"
	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
)

// grubOpts are the options under which go-eventlog extracts GRUB's and the
// kernel's state; without Loader: GRUB, Grub and LinuxKernel stay nil.
var grubOpts = extract.Opts{Loader: extract.GRUB}

// bankOf builds the go-eventlog PCR bank for values of bank.
func bankOf(bank crypto.Hash, values map[uint32][]byte) register.PCRBank {
	alg, err := tpm2.HashToAlgorithm(bank)
	if err != nil {
		panic(err)
	}
	b := register.PCRBank{TCGHashAlgo: pb.HashAlgo(alg)}
	for _, i := range slices.Sorted(func(yield func(uint32) bool) {
		for i := range values {
			if !yield(i) {
				return
			}
		}
	}) {
		b.PCRs = append(b.PCRs, register.PCR{Index: int(i), Digest: values[i], DigestAlg: bank})
	}
	return b
}

// tpmBank is one PCR bank as read from a TPM.
type tpmBank struct {
	hash   crypto.Hash
	values map[uint32][]byte // all 24 PCRs
}

func (b tpmBank) pcrBank() register.PCRBank { return bankOf(b.hash, b.values) }

// readBanks reads every PCR of every allocated bank, as a verifier would get
// them from quotes over all PCRs.
func readBanks(t *testing.T, rw io.ReadWriter) []tpmBank {
	t.Helper()
	sels, err := client.AllocatedPCRs(rw)
	if err != nil {
		t.Fatal(err)
	}
	var banks []tpmBank
	for _, sel := range sels {
		h, err := sel.Hash.Hash()
		if err != nil {
			t.Fatal(err)
		}
		pcrs, err := client.ReadPCRs(rw, sel)
		if err != nil {
			t.Fatal(err)
		}
		banks = append(banks, tpmBank{hash: h, values: pcrs.GetPcrs()})
	}
	return banks
}

// bootAndExtend boots opts (with every allocated bank) into the TPM and
// checks that each PCR the log touches reads as the log replays.
func bootAndExtend(t *testing.T, rw io.ReadWriter, opts BootOpts) (*Log, []tpmBank) {
	t.Helper()
	var err error
	if opts.Banks, err = AllocatedBanks(rw); err != nil {
		t.Fatal(err)
	}
	l := Boot(opts)
	if err := l.Extend(rw); err != nil {
		t.Fatal(err)
	}
	banks := readBanks(t, rw)
	for _, b := range banks {
		want := l.PCRs(b.hash)
		if len(want) == 0 {
			t.Fatalf("log replays no PCR in %v", b.hash)
		}
		for i, v := range want {
			if !bytes.Equal(b.values[i], v) {
				t.Errorf("%v PCR %d = %x, log replays to %x", b.hash, i, b.values[i], v)
			}
		}
		// PCRs 10–13, 15, 16 and 23 carry no event and must still be reset.
		for _, i := range []uint32{10, 11, 12, 13, 15, 16, 23} {
			if !bytes.Equal(b.values[i], make([]byte, b.hash.Size())) {
				t.Errorf("%v PCR %d = %x, want zeros", b.hash, i, b.values[i])
			}
		}
	}
	return l, banks
}

// checkFacts checks what go-eventlog extracted from a Boot(opts) log in bank.
func checkFacts(t *testing.T, st *pb.FirmwareLogState, opts BootOpts, bank crypto.Hash) {
	t.Helper()
	o := opts.withDefaults()
	alg, _ := tpm2.HashToAlgorithm(bank)
	if st.GetHash() != pb.HashAlgo(alg) || st.GetLogType() != pb.LogType_LOG_TYPE_TCG2 {
		t.Errorf("Hash, LogType = %v, %v", st.GetHash(), st.GetLogType())
	}
	if got, want := st.GetPlatform().GetScrtmVersionId(), ucs2z(o.FirmwareVersion); !bytes.Equal(got, want) {
		t.Errorf("Platform.ScrtmVersionId = %q, want %q", got, want)
	}

	sb := st.GetSecureBoot()
	if sb.GetEnabled() != o.SecureBoot {
		t.Errorf("SecureBoot.Enabled = %v, want %v", sb.GetEnabled(), o.SecureBoot)
	}
	if got := derOf(sb.GetDb()); !slices.EqualFunc(got, [][]byte{Cert("keybroker test db")}, bytes.Equal) {
		t.Errorf("SecureBoot.Db certs = %d, want the test db cert", len(got))
	}
	if got := derOf(sb.GetPk()); !slices.EqualFunc(got, [][]byte{Cert("keybroker test PK")}, bytes.Equal) {
		t.Errorf("SecureBoot.Pk certs = %d, want the test PK cert", len(got))
	}
	if got := derOf(sb.GetKek()); !slices.EqualFunc(got, [][]byte{Cert("keybroker test KEK")}, bytes.Equal) {
		t.Errorf("SecureBoot.Kek certs = %d, want the test KEK cert", len(got))
	}
	if n := len(sb.GetDbx().GetHashes()); n != 2 {
		t.Errorf("SecureBoot.Dbx has %d hashes, want 2", n)
	}
	var wantAuthority [][]byte
	if o.SecureBoot {
		wantAuthority = [][]byte{o.Authority, o.VendorCert}
	}
	if got := derOf(sb.GetAuthority()); !slices.EqualFunc(got, wantAuthority, bytes.Equal) {
		t.Errorf("SecureBoot.Authority has %d certs, want %d (db cert, shim vendor cert)", len(got), len(wantAuthority))
	}

	var apps [][]byte
	for _, a := range st.GetEfi().GetApps() {
		apps = append(apps, a.GetDigest())
	}
	wantApps := [][]byte{o.Shim.Digest(bank), o.Grub.Digest(bank), o.Kernel.Digest(bank)}
	if !slices.EqualFunc(apps, wantApps, bytes.Equal) {
		t.Errorf("Efi.Apps = %x, want shim, grub, kernel %x", apps, wantApps)
	}

	grub := st.GetGrub()
	wantCmds := []string{
		"grub_cmd: set root=hd0,gpt2\x00",
		"grub_cmd: linux " + o.Kernel.Path + " " + o.KernelCmdline + "\x00",
		"kernel_cmdline: " + o.Kernel.Path + " " + o.KernelCmdline + "\x00",
		"grub_cmd: initrd " + o.Initrd.Path + "\x00",
	}
	if !slices.Equal(grub.GetCommands(), wantCmds) {
		t.Errorf("Grub.Commands = %q, want %q", grub.GetCommands(), wantCmds)
	}
	var files []string
	for _, f := range grub.GetFiles() {
		files = append(files, string(f.GetUntrustedFilename()))
	}
	wantFiles := []string{"/boot/grub/grub.cfg\x00", o.Kernel.Path + "\x00", o.Initrd.Path + "\x00"}
	if !slices.Equal(files, wantFiles) {
		t.Errorf("Grub.Files = %q, want %q", files, wantFiles)
	} else if got := grub.GetFiles()[1].GetDigest(); !bytes.Equal(got, o.Kernel.FileDigest(bank)) {
		t.Errorf("kernel file digest = %x, want %x", got, o.Kernel.FileDigest(bank))
	}
	if got, want := st.GetLinuxKernel().GetCommandLine(), CommandLine(opts); got != want {
		t.Errorf("LinuxKernel.CommandLine = %q, want %q", got, want)
	}
}

func derOf(db *pb.Database) [][]byte {
	var ders [][]byte
	for _, c := range db.GetCerts() {
		ders = append(ders, c.GetDer())
	}
	return ders
}

// replayFailurePrefix starts go-eventlog's error when PCRs do not replay; the
// PCR list that follows comes from a map, in random order.
const replayFailurePrefix = "failed to replay event log: event log failed to verify: the following registers failed to replay: "

// replayFailure is go-eventlog's error text when the one PCR does not replay.
func replayFailure(pcr int) string { return fmt.Sprintf("%s[%d]", replayFailurePrefix, pcr) }

// replayable reports whether go-eventlog can replay a bank. Its log parser
// knows the digests of SHA-1, SHA-256 and SHA-384 only: the events' SHA-512
// digests are parsed with no hash attached, so every PCR of a SHA-512 bank
// fails to replay although the log matches the TPM.
func replayable(bank crypto.Hash) bool { return bank != crypto.SHA512 }

// checkUnreplayable checks go-eventlog's error for a bank it cannot replay.
func checkUnreplayable(t *testing.T, l *Log, b tpmBank) {
	t.Helper()
	_, err := tpmeventlog.ReplayAndExtract(l.Bytes(), b.pcrBank(), grubOpts)
	if err == nil || !strings.HasPrefix(err.Error(), replayFailurePrefix) {
		t.Errorf("%v: ReplayAndExtract error = %v, want it to start with %q", b.hash, err, replayFailurePrefix)
	}
}

type tamperCase struct {
	name string
	log  *Log
	// wantErr is go-eventlog's whole error text; empty: the tampered log
	// passes ReplayAndExtract (a limit of event-log replay, documented here).
	wantErr string
	// onlyBank, if set, is the one bank where wantErr applies; the other
	// banks pass.
	onlyBank crypto.Hash
}

// tamperCases derives negative cases from a Secure Boot log l.
func tamperCases(t *testing.T, l *Log) []tamperCase {
	t.Helper()
	one := func(pcr, typ uint32, sub string, n int) int {
		t.Helper()
		idx := l.Find(pcr, typ, []byte(sub))
		if len(idx) <= n {
			t.Fatalf("log has %d events on PCR %d of type 0x%x containing %q", len(idx), pcr, typ, sub)
		}
		return idx[n]
	}
	cmdline := one(8, EvIPL, "kernel_cmdline: ", 0)
	grubLinux := one(8, EvIPL, "grub_cmd: linux ", 0)
	shim := one(4, EvEFIBootServicesApplication, "", 0)
	grub := one(4, EvEFIBootServicesApplication, "", 1)
	kernel := one(4, EvEFIBootServicesApplication, "", 2)
	sbVar := one(7, EvEFIVariableDriverConfig, string(UCS2("SecureBoot")), 0)
	dbAuthority := one(7, EvEFIVariableAuthority, "", 0)
	kernelFile := one(9, EvIPL, "vmlinuz", 0)
	sep3 := one(3, EvSeparator, "", 0)
	locality := one(0, EvNoAction, "StartupLocality", 0)
	ebs := one(5, EvEFIAction, exitBootServices, 0)
	ebsOK := one(5, EvEFIAction, exitBootServicesOK, 0)
	evil := "kernel_cmdline: /boot/vmlinuz-6.8.0-keybroker root=/dev/sda2 ro console=ttyS0 init=/bin/sh\x00"

	return []tamperCase{
		{name: "edit kernel cmdline", log: l.EditEvent(cmdline, []byte(evil)), wantErr: replayFailure(8)},
		{name: "edit shim image", log: l.EditEvent(shim, nil), wantErr: replayFailure(4)},
		{name: "edit SecureBoot variable", log: l.EditEvent(sbVar, nil), wantErr: replayFailure(7)},
		{name: "edit kernel file", log: l.EditEvent(kernelFile, nil), wantErr: replayFailure(9)},
		{name: "drop db authority", log: l.DropEvent(dbAuthority), wantErr: replayFailure(7)},
		{name: "drop kernel application", log: l.DropEvent(kernel), wantErr: replayFailure(4)},
		{name: "drop ExitBootServices success", log: l.DropEvent(ebsOK), wantErr: replayFailure(5)},
		{name: "swap grub and kernel applications", log: l.SwapEvents(grub, kernel), wantErr: replayFailure(4)},
		{name: "swap grub linux command and cmdline", log: l.SwapEvents(grubLinux, cmdline), wantErr: replayFailure(8)},
		{name: "wrong sha256 digest of kernel cmdline", log: l.WrongBank(cmdline, crypto.SHA256), wantErr: replayFailure(8), onlyBank: crypto.SHA256},

		// Not caught, by design of replay: each PCR replays on its own, and
		// a PCR without events is not checked at all.
		{name: "drop the only PCR 3 event (PCR left unchecked)", log: l.DropEvent(sep3)},
		{name: "swap events across PCRs 4 and 7", log: l.SwapEvents(shim, dbAuthority)},
		{name: "drop StartupLocality (EV_NO_ACTION, not measured)", log: l.DropEvent(locality)},
		// go-eventlog appends the two ExitBootServices events when PCR 5
		// fails to replay (a workaround for firmware that measures them
		// without logging them), so a log cut before them replays; but the
		// injected events have event type 0, which the EFI extraction
		// then rejects.
		{name: "drop both ExitBootServices events (workaround re-adds them)", log: l.DropEvent(ebsOK).DropEvent(ebs),
			wantErr: "PCR5 contains ExitBootServices event but non EFIAction type: 0"},
	}
}

// checkTampers runs every tamper case against every bank and logs go-eventlog's
// error text.
func checkTampers(t *testing.T, l *Log, banks []tpmBank) {
	t.Helper()
	for _, tc := range tamperCases(t, l) {
		t.Run(tc.name, func(t *testing.T) {
			for _, b := range banks {
				if !replayable(b.hash) {
					checkUnreplayable(t, tc.log, b)
					continue
				}
				wantErr := tc.wantErr
				if tc.onlyBank != 0 && b.hash != tc.onlyBank {
					wantErr = ""
				}
				_, err := tpmeventlog.ReplayAndExtract(tc.log.Bytes(), b.pcrBank(), grubOpts)
				switch {
				case wantErr == "" && err != nil:
					t.Errorf("%v: ReplayAndExtract: %v, want success", b.hash, err)
				case wantErr != "" && (err == nil || err.Error() != wantErr):
					t.Errorf("%v: ReplayAndExtract error = %v, want %q", b.hash, err, wantErr)
				case err != nil:
					t.Logf("%v: %v", b.hash, err)
				}
			}
		})
	}
}
