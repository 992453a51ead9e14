package evidencetest

import (
	"crypto"
	"errors"
	"testing"

	"github.com/google/go-eventlog/tcg"
	"github.com/google/go-eventlog/tpmeventlog"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// TestSimulatorBoot extends Boot's log into the embedded simulator, checks
// that the PCRs read back as the log replays, and that go-eventlog replays
// the log against each bank and extracts the boot's facts.
func TestSimulatorBoot(t *testing.T) {
	for _, secureBoot := range []bool{true, false} {
		name := "secure boot disabled"
		if secureBoot {
			name = "secure boot enabled"
		}
		t.Run(name, func(t *testing.T) {
			rw := tpmtest.Open(t)
			opts := BootOpts{SecureBoot: secureBoot}
			l, banks := bootAndExtend(t, rw, opts)
			if len(banks) < 2 {
				t.Fatalf("simulator has %d PCR banks, want at least sha1 and sha256", len(banks))
			}
			for _, b := range banks {
				if !replayable(b.hash) {
					checkUnreplayable(t, l, b)
					continue
				}
				st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), b.pcrBank(), grubOpts)
				if err != nil {
					t.Fatalf("%v: ReplayAndExtract: %v", b.hash, err)
				}
				checkFacts(t, st, opts, b.hash)
			}
		})
	}
}

// TestSimulatorTamper checks that every tampered log fails against the PCRs
// of the original boot, and records what go-eventlog says.
func TestSimulatorTamper(t *testing.T) {
	rw := tpmtest.Open(t)
	l, banks := bootAndExtend(t, rw, BootOpts{SecureBoot: true})
	checkTampers(t, l, banks)

	// The replay error is flattened to text: callers cannot errors.As it
	// into a tcg.ReplayError to learn the PCRs.
	sha256Bank := banks[0]
	for _, b := range banks {
		if b.hash == crypto.SHA256 {
			sha256Bank = b
		}
	}
	_, err := tpmeventlog.ReplayAndExtract(l.DropEvent(len(l.Events)-3).Bytes(), sha256Bank.pcrBank(), grubOpts)
	var re tcg.ReplayError
	if err == nil || errors.As(err, &re) {
		t.Errorf("ReplayAndExtract error = %v (a tcg.ReplayError: %v), want a plain error", err, errors.As(err, &re))
	}
}
