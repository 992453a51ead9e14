package evidencetest

import (
	"bytes"
	"crypto"
)

// The tamper helpers below each return a modified clone of the log for
// negative tests, leaving l untouched. Extend the original, then check that
// a verifier rejects the tampered log against the TPM's PCRs. An index out of
// range panics, as a slice index does.

// EditEvent returns a clone in which event i carries data instead (nil: its
// data with one bit flipped in the middle byte, or one byte appended if
// empty) and digests recomputed to match, so the log is self-consistent —
// every event digest is what an honest measurer would log for it — but no
// longer what the TPM saw. Digests follow the event's rule: the hash of the
// data for most events, the hash of the string after the prefix for GRUB's
// PCR 8 events, the hash of the variable's value for boot variables. For
// events whose digest covers something not in the log (EFI applications,
// firmware blobs, GRUB files), each digest is replaced by its own hash: a
// different image.
func (l *Log) EditEvent(i int, data []byte) *Log {
	c := l.Clone()
	e := &c.Events[i]
	if data == nil {
		data = bytes.Clone(e.Data)
		if len(data) == 0 {
			data = []byte{1}
		} else {
			data[len(data)/2] ^= 1
		}
	}
	old := e.Digests
	e.Data = data
	e.Digests = make(map[crypto.Hash][]byte, len(c.Banks))
	for _, bank := range c.Banks {
		switch {
		case e.Type == EvNoAction:
			e.Digests[bank] = make([]byte, bank.Size())
		case e.derive != nil:
			e.Digests[bank] = e.derive(data, bank)
		case old[bank] != nil:
			e.Digests[bank] = hashOf(bank, old[bank])
		default:
			e.Digests[bank] = hashOf(bank, data)
		}
	}
	return c
}

// DropEvent returns a clone without event i: the log hides a measurement.
func (l *Log) DropEvent(i int) *Log {
	c := l.Clone()
	c.Events = append(c.Events[:i], c.Events[i+1:]...)
	return c
}

// SwapEvents returns a clone with events i and j exchanged: the log claims
// another order. Only a swap within one PCR changes what that PCR replays to.
func (l *Log) SwapEvents(i, j int) *Log {
	c := l.Clone()
	c.Events[i], c.Events[j] = c.Events[j], c.Events[i]
	return c
}

// WrongBank returns a clone in which event i's digest in bank (only) is
// replaced by its hash: that bank no longer replays to the TPM's PCR while
// the other banks still do, as when firmware logs one value and extends
// another in one bank. bank must be one of l.Banks to show in Bytes.
func (l *Log) WrongBank(i int, bank crypto.Hash) *Log {
	c := l.Clone()
	e := &c.Events[i]
	d := hashOf(bank, e.Digest(bank))
	digests := make(map[crypto.Hash][]byte, len(c.Banks))
	for _, b := range c.Banks {
		digests[b] = e.Digest(b)
	}
	digests[bank] = d
	e.Digests = digests
	return c
}
