package evidencetest

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/google/go-eventlog/extract"
	pb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	"github.com/google/go-eventlog/tpmeventlog"
	"github.com/google/go-eventlog/wellknown"
)

var replayableBanks = []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384}

// TestBytesParse checks the binary encoding with go-eventlog's parser: the
// banks of the Spec ID event, and every event's PCR, type, data and digests.
func TestBytesParse(t *testing.T) {
	l := Boot(BootOpts{Banks: replayableBanks, SecureBoot: true})
	el, err := tcg.ParseEventLog(l.Bytes(), tcg.ParseOpts{})
	if err != nil {
		t.Fatal(err)
	}
	want := []register.HashAlg{register.HashSHA1, register.HashSHA256, register.HashSHA384}
	if len(el.Algs) != len(want) {
		t.Fatalf("Algs = %v, want %v", el.Algs, want)
	}
	for i, alg := range el.Algs {
		if alg != want[i] {
			t.Fatalf("Algs = %v, want %v", el.Algs, want)
		}
	}
	for i, alg := range want {
		bank := replayableBanks[i]
		events := el.Events(alg)
		if len(events) != len(l.Events) {
			t.Fatalf("%v: parsed %d events, want %d", bank, len(events), len(l.Events))
		}
		for j, got := range events {
			e := l.Events[j]
			if got.Index != int(e.PCR) || uint32(got.Type) != e.Type || !bytes.Equal(got.Data, e.Data) || !bytes.Equal(got.Digest, e.Digest(bank)) {
				t.Errorf("%v event %d = PCR %d type %v, want PCR %d type 0x%x (or data/digest differ)", bank, j, got.Index, got.Type, e.PCR, e.Type)
			}
		}
	}
}

// TestReplayAgainstLogPCRs replays without a TPM, against the log's own
// replayed values, with and without the GRUB loader option.
func TestReplayAgainstLogPCRs(t *testing.T) {
	opts := BootOpts{Banks: replayableBanks, SecureBoot: true, KernelCmdline: "root=/dev/vda1 ro quiet"}
	l := Boot(opts)
	for _, bank := range replayableBanks {
		st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), bankOf(bank, l.PCRs(bank)), grubOpts)
		if err != nil {
			t.Fatalf("%v: %v", bank, err)
		}
		checkFacts(t, st, opts, bank)

		// Without Loader: GRUB, go-eventlog leaves GRUB and the kernel out.
		st, err = tpmeventlog.ReplayAndExtract(l.Bytes(), bankOf(bank, l.PCRs(bank)), extract.Opts{})
		if err != nil {
			t.Fatalf("%v without GRUB: %v", bank, err)
		}
		if st.GetGrub() != nil || st.GetLinuxKernel() != nil || len(st.GetEfi().GetApps()) != 3 {
			t.Errorf("%v without GRUB: Grub %v, LinuxKernel %v, %d apps", bank, st.GetGrub(), st.GetLinuxKernel(), len(st.GetEfi().GetApps()))
		}
	}
}

// TestUnquotedPCRsIgnored shows that go-eventlog verifies only the PCRs it is
// given: events for others are dropped from the result, unchecked, so a
// verifier must quote every PCR the log mentions (or refuse the log).
func TestUnquotedPCRsIgnored(t *testing.T) {
	l := Boot(BootOpts{SecureBoot: true})
	mok := l.Find(14, EvIPL, []byte("MokList\x00"))[0]
	forged := l.EditEvent(mok, []byte("anything at all\x00"))
	pcrs := l.PCRs(crypto.SHA256)
	delete(pcrs, 14) // a quote over PCRs 0–9 only
	st, err := tpmeventlog.ReplayAndExtract(forged.Bytes(), bankOf(crypto.SHA256, pcrs), grubOpts)
	if err != nil {
		t.Fatalf("ReplayAndExtract: %v", err)
	}
	for _, e := range st.GetRawEvents() {
		if e.GetPcrIndex() == 14 {
			t.Fatalf("PCR 14 event in the result although PCR 14 was not given")
		}
	}
}

// TestEditEventSelfConsistent checks that edited logs replay against their
// own PCRs: the edit changes what the log claims, not its consistency.
func TestEditEventSelfConsistent(t *testing.T) {
	opts := BootOpts{Banks: replayableBanks, SecureBoot: true}
	l := Boot(opts)
	cmdline := l.Find(8, EvIPL, []byte("kernel_cmdline: "))[0]
	evil := "/boot/vmlinuz-6.8.0-keybroker root=/dev/sda2 ro init=/bin/sh"
	forged := l.EditEvent(cmdline, []byte("kernel_cmdline: "+evil+"\x00"))
	for _, bank := range replayableBanks {
		st, err := tpmeventlog.ReplayAndExtract(forged.Bytes(), bankOf(bank, forged.PCRs(bank)), grubOpts)
		if err != nil {
			t.Fatalf("%v: %v", bank, err)
		}
		if got := st.GetLinuxKernel().GetCommandLine(); got != evil+"\x00" {
			t.Errorf("%v: CommandLine = %q, want %q", bank, got, evil+"\x00")
		}
		if bytes.Equal(forged.PCRs(bank)[8], l.PCRs(bank)[8]) {
			t.Errorf("%v: edited log replays PCR 8 to the original value", bank)
		}
	}

	// Every event edited the default way keeps the log replayable against
	// its own PCRs; extraction may then reject the changed content, but
	// never for a digest that does not match.
	for i, e := range l.Events {
		forged := l.EditEvent(i, nil)
		_, err := tpmeventlog.ReplayAndExtract(forged.Bytes(), bankOf(crypto.SHA256, forged.PCRs(crypto.SHA256)), grubOpts)
		if err != nil && (strings.Contains(err.Error(), "replay") || strings.Contains(err.Error(), "digest")) {
			t.Errorf("event %d (PCR %d, type 0x%x) edited: %v", i, e.PCR, e.Type, err)
		}
	}
	if !bytes.Equal(l.Bytes(), Boot(opts).Bytes()) {
		t.Error("tamper helpers modified the original log")
	}
}

func TestWrongBankOnlyThatBank(t *testing.T) {
	l := Boot(BootOpts{Banks: replayableBanks})
	forged := l.WrongBank(1, crypto.SHA1)
	for _, bank := range replayableBanks {
		same := bytes.Equal(forged.PCRs(bank)[0], l.PCRs(bank)[0])
		if same != (bank != crypto.SHA1) {
			t.Errorf("%v: PCR 0 unchanged = %v", bank, same)
		}
	}
}

// TestHandBuiltLog checks digests computed from data, zero digests of
// EV_NO_ACTION events and the StartupLocality of PCR 0.
func TestHandBuiltLog(t *testing.T) {
	l := &Log{Banks: []crypto.Hash{crypto.SHA256}, Events: []Event{
		{PCR: 0, Type: EvNoAction, Data: startupLocality(3)},
		{PCR: 0, Type: EvSeparator, Data: []byte{0, 0, 0, 0}},
		{PCR: 16, Type: EvIPL, Data: []byte("hello")},
	}}
	h := func(parts ...[]byte) []byte {
		s := sha256.New()
		for _, p := range parts {
			s.Write(p)
		}
		return s.Sum(nil)
	}
	init0 := make([]byte, 32)
	init0[31] = 3
	want := map[uint32][]byte{
		0:  h(init0, h([]byte{0, 0, 0, 0})),
		16: h(make([]byte, 32), h([]byte("hello"))),
	}
	got := l.PCRs(crypto.SHA256)
	if len(got) != 2 || !bytes.Equal(got[0], want[0]) || !bytes.Equal(got[16], want[16]) {
		t.Errorf("PCRs = %x, want %x", got, want)
	}
	if d := l.Events[0].Digest(crypto.SHA256); !bytes.Equal(d, make([]byte, 32)) {
		t.Errorf("EV_NO_ACTION digest = %x, want zeros", d)
	}
	c := l.Clone()
	c.Events[2].Data[0] = 'j'
	c.Banks[0] = crypto.SHA1
	if string(l.Events[2].Data) != "hello" || l.Banks[0] != crypto.SHA256 {
		t.Error("Clone shares memory with the original")
	}
}

// TestBootOptions covers well-known certificates, hash-only db entries, the
// GCE firmware version format and determinism.
func TestBootOptions(t *testing.T) {
	hashOnly := sha256.Sum256([]byte("an allowed image"))
	opts := BootOpts{
		SecureBoot:      true,
		DB:              append(SignatureListX509(wellknown.MicrosoftUEFICA2011Cert), SignatureListSHA256(hashOnly[:])...),
		FirmwareVersion: "GCE Virtual Firmware v20",
	}
	l := Boot(opts)
	if !bytes.Equal(l.Bytes(), Boot(opts).Bytes()) {
		t.Error("Boot is not deterministic")
	}
	st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), bankOf(crypto.SHA256, l.PCRs(crypto.SHA256)), grubOpts)
	if err != nil {
		t.Fatal(err)
	}
	sb := st.GetSecureBoot()
	if got := sb.GetDb().GetCerts()[0].GetWellKnown(); got != pb.WellKnownCertificate_MS_THIRD_PARTY_UEFI_CA_2011 {
		t.Errorf("db cert = %v, want MS_THIRD_PARTY_UEFI_CA_2011", got)
	}
	if got := sb.GetDb().GetHashes(); len(got) != 1 || !bytes.Equal(got[0], hashOnly[:]) {
		t.Errorf("db hashes = %x", got)
	}
	// The default Authority is DB's first certificate, reported as well
	// known too; shim's vendor certificate follows as DER.
	if a := sb.GetAuthority().GetCerts(); len(a) != 2 || a[0].GetWellKnown() != pb.WellKnownCertificate_MS_THIRD_PARTY_UEFI_CA_2011 || len(a[1].GetDer()) == 0 {
		t.Errorf("Authority = %v", a)
	}
	if v := st.GetPlatform().GetGceVersion(); v != 20 {
		t.Errorf("Platform.GceVersion = %d, want 20", v)
	}

	if !bytes.Equal(Cert("x"), Cert("x")) || bytes.Equal(Cert("x"), Cert("y")) {
		t.Error("Cert is not deterministic per name")
	}
	if _, err := x509.ParseCertificate(Cert("keybroker test db")); err != nil {
		t.Error(err)
	}
}

// TestSecureBootChecks records what go-eventlog demands of an enabled
// Secure Boot state.
func TestSecureBootChecks(t *testing.T) {
	tests := []struct {
		name    string
		opts    BootOpts
		wantErr string
	}{
		{
			name:    "enabled without PK",
			opts:    BootOpts{SecureBoot: true, PK: []byte{}},
			wantErr: "failed to parse SecureBootState: secure boot was enabled but no platform keys were known",
		},
		{
			name:    "unsupported signature list",
			opts:    BootOpts{SecureBoot: true, KEK: appendSignatureList(nil, mustGUID("826ca512-cf10-4ac9-b187-be01496631bd"), 20, make([]byte, 20))},
			wantErr: "failed to parse SecureBootState: event 7: failed parsing key exchange keys: unhandled SHA1 hash",
		},
		{
			name: "disabled in setup mode",
			opts: BootOpts{PK: []byte{}, KEK: []byte{}, DB: []byte{}, DBX: []byte{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := Boot(tt.opts)
			st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), bankOf(crypto.SHA256, l.PCRs(crypto.SHA256)), grubOpts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if st.GetSecureBoot().GetEnabled() {
					t.Error("SecureBoot.Enabled = true")
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want prefix %q", err, tt.wantErr)
			}
			// The state comes back partial: everything but SecureBoot.
			if st.GetSecureBoot() != nil || st.GetLinuxKernel().GetCommandLine() == "" {
				t.Errorf("partial state: SecureBoot %v, LinuxKernel %v", st.GetSecureBoot(), st.GetLinuxKernel())
			}
		})
	}
}

// TestNoExitBootServicesNoApps records that go-eventlog reports EFI
// applications only after an "Exit Boot Services Invocation" on PCR 5: a
// consistent log without it yields a nil Efi and no error, so a verifier
// must treat a missing Efi as a failure itself.
func TestNoExitBootServicesNoApps(t *testing.T) {
	l := Boot(BootOpts{})
	ebs := l.Find(5, EvEFIAction, []byte(exitBootServices))[0]
	short := l.DropEvent(ebs + 1).DropEvent(ebs) // neither logged nor extended
	st, err := tpmeventlog.ReplayAndExtract(short.Bytes(), bankOf(crypto.SHA256, short.PCRs(crypto.SHA256)), grubOpts)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetEfi() != nil {
		t.Errorf("Efi = %v, want nil", st.GetEfi())
	}
	if st.GetLinuxKernel().GetCommandLine() == "" {
		t.Error("kernel command line missing")
	}
}
