package evidencetest

import (
	"bytes"
	"crypto"
	"testing"

	"github.com/google/go-eventlog/tpmeventlog"
	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// TestSwtpm repeats the simulator tests on swtpm, behind a socket: a
// provisioned TPM (only the SHA-256 bank active), then a blank one with four
// banks including SHA-512.
func TestSwtpm(t *testing.T) {
	if testing.Short() {
		t.Skip("runs swtpm; skipped with -short")
	}

	t.Run("provisioned", func(t *testing.T) {
		tpm := swtpmtest.Start(t, swtpmtest.Opts{})
		rw := tpm.Dial(t)
		opts := BootOpts{SecureBoot: true}
		l, banks := bootAndExtend(t, rw, opts)
		if len(banks) != 1 || banks[0].hash != crypto.SHA256 {
			t.Fatalf("banks = %v, want sha256 only", banks)
		}
		st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), banks[0].pcrBank(), grubOpts)
		if err != nil {
			t.Fatal(err)
		}
		checkFacts(t, st, opts, crypto.SHA256)
		checkTampers(t, l, banks)

		// Digests for a bank the TPM has not allocated are accepted and
		// ignored: extending a SHA-1 + SHA-256 log works, SHA-256 matches.
		extra := &Log{Banks: []crypto.Hash{crypto.SHA1, crypto.SHA256}, Events: []Event{{PCR: 16, Type: EvIPL, Data: []byte("x")}}}
		if err := extra.Extend(rw); err != nil {
			t.Fatalf("Extend with an unallocated bank: %v", err)
		}
		got, err := client.ReadPCRs(rw, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{16}})
		if err != nil {
			t.Fatal(err)
		}
		if want := extra.PCRs(crypto.SHA256)[16]; !bytes.Equal(got.GetPcrs()[16], want) {
			t.Errorf("PCR 16 = %x, want %x", got.GetPcrs()[16], want)
		}

		// Secure Boot disabled, after a reboot.
		rw.Close()
		tpm.Reset(t)
		rw = tpm.Dial(t)
		opts = BootOpts{}
		l, banks = bootAndExtend(t, rw, opts)
		st, err = tpmeventlog.ReplayAndExtract(l.Bytes(), banks[0].pcrBank(), grubOpts)
		if err != nil {
			t.Fatal(err)
		}
		checkFacts(t, st, opts, crypto.SHA256)
		rw.Close()
	})

	t.Run("blank four banks", func(t *testing.T) {
		tpm := swtpmtest.Start(t, swtpmtest.Opts{NoEKCert: true})
		rw := tpm.Dial(t)
		defer rw.Close()
		opts := BootOpts{SecureBoot: true}
		l, banks := bootAndExtend(t, rw, opts)
		if len(banks) != 4 {
			t.Fatalf("blank swtpm has %d banks, want 4", len(banks))
		}
		for _, b := range banks {
			if !replayable(b.hash) {
				checkUnreplayable(t, l, b)
				continue
			}
			st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), b.pcrBank(), grubOpts)
			if err != nil {
				t.Fatalf("%v: %v", b.hash, err)
			}
			checkFacts(t, st, opts, b.hash)
		}
	})
}
