package verify

import (
	"bytes"
	"fmt"
)

// History is what the TPM's counters in a verified quote say about the
// node since its previous attestation, as WithHistory found it.
type History struct {
	// FirstSeen is true when there was no previous attestation to compare
	// with; the other fields are then zero, but for AKChanged.
	FirstSeen bool
	// AKChanged is true when the node's previous attestation used another
	// AK, whose counters cannot be compared with this one's (see
	// WithHistory): a new AK, or a cleared TPM. FirstSeen is then true too.
	AKChanged bool
	// Rebooted is true when the TPM was reset (the machine rebooted) since
	// the previous attestation: its reset count increased.
	Rebooted bool
	// Resets is by how much the reset count increased.
	Resets uint32
	// Restarts is by how much the restart count (TPM restarts and resumes,
	// for instance from hibernation) increased, when the TPM was not reset
	// in between. After a reset it is 0: a reset sets the restart count to
	// zero, and the TPM offsets the counts it reports (see WithHistory), so
	// restarts after a reset cannot be counted.
	Restarts uint32
}

// WithHistory compares the TPM counters of the verified quote with prev,
// those of the node's previous verified attestation (nil when there is
// none), and returns a Verified that also carries the History. A TPM's
// reset count only grows; its restart count only grows until the next
// reset; and its clock only advances while both stay the same. Counters
// that went backwards mean a forged or stale quote or a TPM that was
// cleared: WithHistory refuses them with CheckCounters.
//
// A TPM adds a secret offset, fixed for a given signing key until the TPM
// is cleared, to the reset and restart counts it reports with a key
// outside the endorsement and platform hierarchies (TPM 2.0 Part 1,
// "Obfuscation"), as an AK under the owner hierarchy is. Counts are
// therefore compared only as differences, modulo 2^32 (a difference of 2^31
// or more counts as backwards), and only counts reported with the same AK
// can be compared: the caller passes nil when the AK changed.
func (v *Verified) WithHistory(prev *ClockInfo) (*Verified, error) {
	return v.withHistory(prev, false)
}

// Previous is what a node's previous verified attestation reported: the
// name of the AK that signed it, and its counters.
type Previous struct {
	AKName []byte
	Clock  ClockInfo
}

// WithPrevious is WithHistory against the node's previous attestation
// (nil: none) with the AK rule applied: counters reported with another AK
// cannot be compared (the TPM offsets them per key), so the attestation
// then counts as the first one, and the History says the AK changed
// (WithHistoryAfterAKChange).
func (v *Verified) WithPrevious(prev *Previous) (*Verified, error) {
	switch {
	case prev == nil:
		return v.WithHistory(nil)
	case v == nil || v.node == nil:
		return nil, fail(CheckInput, "no verified quote", nil)
	case !bytes.Equal(prev.AKName, v.node.akName):
		return v.WithHistoryAfterAKChange()
	}
	c := prev.Clock
	return v.WithHistory(&c)
}

// WithHistoryAfterAKChange is WithHistory for a node whose previous
// attestation used another AK: nothing can be compared, and the History
// says so (FirstSeen and AKChanged), so that policies can refuse a node
// that swapped its AK.
func (v *Verified) WithHistoryAfterAKChange() (*Verified, error) {
	return v.withHistory(nil, true)
}

func (v *Verified) withHistory(prev *ClockInfo, akChanged bool) (*Verified, error) {
	if v == nil || v.node == nil {
		return nil, fail(CheckInput, "no verified quote", nil)
	}
	cur := v.clock
	// The Verified and its History in one allocation.
	out := &struct {
		Verified
		h History
	}{Verified: *v}
	h := &out.h
	h.AKChanged = akChanged
	if prev == nil {
		h.FirstSeen = true
	} else {
		resets, resetsBack := serialDiff(cur.ResetCount, prev.ResetCount)
		restarts, restartsBack := serialDiff(cur.RestartCount, prev.RestartCount)
		switch {
		case resetsBack:
			return nil, fromTPM(fail(CheckCounters, "TPM reset count went backwards",
				fmt.Errorf("reset count %d, previously %d", cur.ResetCount, prev.ResetCount)))
		case resets > 0:
			h.Rebooted, h.Resets = true, resets
		case restartsBack:
			return nil, fromTPM(fail(CheckCounters, "TPM restart count went backwards without a reset",
				fmt.Errorf("restart count %d, previously %d (reset count %d)", cur.RestartCount, prev.RestartCount, cur.ResetCount)))
		case restarts > 0:
			h.Restarts = restarts
		case cur.Clock < prev.Clock:
			return nil, fromTPM(fail(CheckCounters, "TPM clock went backwards without a reset",
				fmt.Errorf("clock %d ms, previously %d ms (reset count %d, restart count %d)", cur.Clock, prev.Clock, cur.ResetCount, cur.RestartCount)))
		case cur.Clock == prev.Clock:
			// The very quote of the last attestation again: a TPM's clock
			// moves on between two quotes.
			return nil, fromTPM(fail(CheckCounters, "TPM clock did not advance since the last attestation",
				fmt.Errorf("clock %d ms (reset count %d, restart count %d)", cur.Clock, cur.ResetCount, cur.RestartCount)))
		}
	}
	out.history = h
	return &out.Verified, nil
}

// serialDiff returns how far cur is ahead of prev modulo 2^32, or backwards
// when cur is 2^31 or more ahead, that is, behind.
func serialDiff(cur, prev uint32) (ahead uint32, backwards bool) {
	d := cur - prev
	if d >= 1<<31 {
		return 0, true
	}
	return d, false
}

// History returns what WithHistory found, or nil if it was not called.
func (v *Verified) History() *History {
	if v.history == nil {
		return nil
	}
	h := *v.history
	return &h
}
