// Package tcglog parses a TCG PC Client event log, as firmware hands it to
// the operating system (/sys/kernel/security/tpm0/binary_bios_measurements),
// and replays it into PCR values. It reads both formats of the TCG PC Client
// Platform Firmware Profile: the crypto-agile log (a "Spec ID Event03"
// header, then TCG_PCR_EVENT2 records with a digest per bank) and the older
// SHA-1 log (TCG_PCClientPCREvent records only).
//
// Parsing is strict: every record must be complete, every digest of a
// crypto-agile record must be of an algorithm the header lists, with the
// size the header gives, and nothing may follow the last record. It never
// interprets event data beyond the header and StartupLocality events: what
// the events mean is for the caller, who must remember that only the
// digests are bound to the TPM by a replay — event types and data are not.
package tcglog

import (
	"bytes"
	"crypto"
	_ "crypto/sha1" // the hashes of the PCR banks a log may carry
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Event types this package or its callers need by number (TCG PC Client
// Platform Firmware Profile, "Events").
const (
	EvNoAction     uint32 = 0x00000003
	EvSeparator    uint32 = 0x00000004
	EvSCRTMVersion uint32 = 0x00000008
	EvIPL          uint32 = 0x0000000d
	EvEventTag     uint32 = 0x00000006

	EvEFIBootServicesApplication uint32 = 0x80000003
	EvEFIAction                  uint32 = 0x80000007
)

// Limits on what a log may claim, far above any real log's.
const (
	// MaxAlgorithms is the most banks a crypto-agile header may list.
	MaxAlgorithms = 16
	// MaxPCR is the highest PCR index an event may name.
	MaxPCR = 23
)

// Format is the encoding of a log.
type Format int

const (
	// CryptoAgile is a log with a Spec ID Event03 header and a digest per bank.
	CryptoAgile Format = iota + 1
	// SHA1 is the older log with one SHA-1 digest per event.
	SHA1
)

func (f Format) String() string {
	switch f {
	case CryptoAgile:
		return "crypto-agile"
	case SHA1:
		return "sha1"
	}
	return "unknown"
}

// Event is one record of the log. Digests holds one digest per algorithm
// the record carries.
type Event struct {
	// Seq is the record's position in the log, from 0 for the first record
	// after the header (from 0 for the first record of a SHA-1 log).
	Seq int
	// Offset is where the record starts in the raw log.
	Offset  int
	PCR     uint32
	Type    uint32
	Digests map[tpm2.TPMAlgID][]byte
	Data    []byte
}

// Measured reports whether the event was extended into its PCR
// (EV_NO_ACTION events are logged but never extended).
func (e *Event) Measured() bool { return e.Type != EvNoAction }

// Log is a parsed event log.
type Log struct {
	Format Format
	// Algs are the digest algorithms of the log, in header order (SHA-1
	// alone for a SHA-1 log).
	Algs []tpm2.TPMAlgID
	// StartupLocality is the locality of a StartupLocality EV_NO_ACTION
	// event (PCR 0's initial value ends in it), or 0 without one.
	StartupLocality byte
	Events          []Event
}

// HasAlg reports whether every record of the log carries a digest of alg.
func (l *Log) HasAlg(alg tpm2.TPMAlgID) bool { return slices.Contains(l.Algs, alg) }

var errTruncated = errors.New("record is truncated")

// reader reads little-endian fields and remembers the first short read.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = errTruncated
		return nil
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *reader) u8() uint8 {
	b := r.take(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u16() uint16 {
	b := r.take(2)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint16(b)
}

func (r *reader) u32() uint32 {
	b := r.take(4)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(b)
}

func (r *reader) done() bool { return r.off == len(r.b) }

var specIDSignature = []byte("Spec ID Event03\x00")

// Parse parses raw as a TCG PC Client event log. It returns an error naming
// the record and field at fault for anything that is not a well-formed log.
func Parse(raw []byte) (*Log, error) {
	if len(raw) == 0 {
		return nil, errors.New("the event log is empty")
	}
	r := &reader{b: raw}
	first, err := readSHA1Event(r, 0)
	if err != nil {
		return nil, err
	}
	if first.PCR == 0 && first.Type == EvNoAction && bytes.HasPrefix(first.Data, specIDSignature) {
		algs, sizes, err := parseSpecID(first.Data)
		if err != nil {
			return nil, fmt.Errorf("the Spec ID Event03 header: %w", err)
		}
		l := &Log{Format: CryptoAgile, Algs: algs}
		for seq := 0; !r.done(); seq++ {
			e, err := readEvent2(r, seq, sizes)
			if err != nil {
				return nil, err
			}
			l.Events = append(l.Events, e)
		}
		l.StartupLocality = startupLocality(l.Events)
		return l, nil
	}
	l := &Log{Format: SHA1, Algs: []tpm2.TPMAlgID{tpm2.TPMAlgSHA1}, Events: []Event{first}}
	for seq := 1; !r.done(); seq++ {
		e, err := readSHA1Event(r, seq)
		if err != nil {
			return nil, err
		}
		l.Events = append(l.Events, e)
	}
	l.StartupLocality = startupLocality(l.Events)
	return l, nil
}

// checkPCR refuses a measured event for a PCR that does not exist.
// EV_NO_ACTION events are never extended and may name any index (Windows
// logs some under 0xffffffff).
func checkPCR(e *Event) error {
	if e.Measured() && e.PCR > MaxPCR {
		return fmt.Errorf("event %d: PCR index %d is out of range", e.Seq, e.PCR)
	}
	return nil
}

// readSHA1Event reads a TCG_PCClientPCREvent: PCR, type, a SHA-1 digest and
// the event data with its size.
func readSHA1Event(r *reader, seq int) (Event, error) {
	e := Event{Seq: seq, Offset: r.off}
	e.PCR, e.Type = r.u32(), r.u32()
	digest := r.take(20)
	size := r.u32()
	e.Data = r.take(int(size))
	if r.err != nil {
		return Event{}, fmt.Errorf("event %d: %w", seq, r.err)
	}
	if err := checkPCR(&e); err != nil {
		return Event{}, err
	}
	e.Digests = map[tpm2.TPMAlgID][]byte{tpm2.TPMAlgSHA1: digest}
	return e, nil
}

// parseSpecID reads a TCG_EfiSpecIDEvent and returns its algorithms in
// order with their digest sizes.
func parseSpecID(data []byte) ([]tpm2.TPMAlgID, map[tpm2.TPMAlgID]int, error) {
	r := &reader{b: data}
	r.take(len(specIDSignature))
	r.u32() // platformClass
	r.u8()  // specVersionMinor
	major := r.u8()
	r.u8() // specErrata
	r.u8() // uintnSize
	n := r.u32()
	if r.err == nil && (n == 0 || n > MaxAlgorithms) {
		return nil, nil, fmt.Errorf("it lists %d algorithms", n)
	}
	var algs []tpm2.TPMAlgID
	sizes := map[tpm2.TPMAlgID]int{}
	for i := uint32(0); i < n && r.err == nil; i++ {
		alg, size := tpm2.TPMAlgID(r.u16()), int(r.u16())
		if r.err != nil {
			break
		}
		if _, dup := sizes[alg]; dup {
			return nil, nil, fmt.Errorf("algorithm 0x%04x is listed twice", uint16(alg))
		}
		if h, ok := Hash(alg); ok && h.Size() != size {
			return nil, nil, fmt.Errorf("algorithm 0x%04x has digest size %d, want %d", uint16(alg), size, h.Size())
		}
		if size == 0 || size > 64 {
			return nil, nil, fmt.Errorf("algorithm 0x%04x has digest size %d", uint16(alg), size)
		}
		algs = append(algs, alg)
		sizes[alg] = size
	}
	vendor := r.u8()
	r.take(int(vendor))
	if r.err != nil {
		return nil, nil, r.err
	}
	if major != 2 {
		return nil, nil, fmt.Errorf("spec version %d is not 2", major)
	}
	if !r.done() {
		return nil, nil, fmt.Errorf("%d bytes follow the header", len(data)-r.off)
	}
	return algs, sizes, nil
}

// readEvent2 reads a TCG_PCR_EVENT2: PCR, type, TPML_DIGEST_VALUES (a
// count, then each algorithm with its digest) and the event data with its
// size. Every algorithm of the header must appear exactly once.
func readEvent2(r *reader, seq int, sizes map[tpm2.TPMAlgID]int) (Event, error) {
	e := Event{Seq: seq, Offset: r.off, Digests: map[tpm2.TPMAlgID][]byte{}}
	e.PCR, e.Type = r.u32(), r.u32()
	n := r.u32()
	if r.err == nil && int(n) != len(sizes) {
		return Event{}, fmt.Errorf("event %d: it has %d digests, the header lists %d algorithms", seq, n, len(sizes))
	}
	for i := 0; i < len(sizes) && r.err == nil; i++ {
		alg := tpm2.TPMAlgID(r.u16())
		size, ok := sizes[alg]
		if r.err == nil && !ok {
			return Event{}, fmt.Errorf("event %d: digest of algorithm 0x%04x, which the header does not list", seq, uint16(alg))
		}
		if _, dup := e.Digests[alg]; r.err == nil && dup {
			return Event{}, fmt.Errorf("event %d: two digests of algorithm 0x%04x", seq, uint16(alg))
		}
		if d := r.take(size); d != nil {
			e.Digests[alg] = d
		}
	}
	size := r.u32()
	e.Data = r.take(int(size))
	if r.err != nil {
		return Event{}, fmt.Errorf("event %d: %w", seq, r.err)
	}
	if err := checkPCR(&e); err != nil {
		return Event{}, err
	}
	return e, nil
}

var startupLocalitySignature = []byte("StartupLocality\x00")

func startupLocality(events []Event) byte {
	for _, e := range events {
		if e.PCR == 0 && e.Type == EvNoAction && len(e.Data) == len(startupLocalitySignature)+1 &&
			bytes.HasPrefix(e.Data, startupLocalitySignature) {
			return e.Data[len(e.Data)-1]
		}
	}
	return 0
}

// Hash maps a PCR bank to its hash: SHA-1, SHA-256, SHA-384 or SHA-512.
func Hash(alg tpm2.TPMAlgID) (crypto.Hash, bool) {
	switch alg {
	case tpm2.TPMAlgSHA1:
		return crypto.SHA1, true
	case tpm2.TPMAlgSHA256:
		return crypto.SHA256, true
	case tpm2.TPMAlgSHA384:
		return crypto.SHA384, true
	case tpm2.TPMAlgSHA512:
		return crypto.SHA512, true
	}
	return 0, false
}

// Replay returns the value every PCR that at least one measured event
// extends would hold in bank alg, starting from zeros (PCR 0 from the
// StartupLocality). It fails if the log has no digests of alg or alg is not
// a hash this package knows.
func (l *Log) Replay(alg tpm2.TPMAlgID) (map[uint32][]byte, error) {
	h, ok := Hash(alg)
	if !ok {
		return nil, fmt.Errorf("bank 0x%04x is not supported", uint16(alg))
	}
	if !l.HasAlg(alg) {
		return nil, fmt.Errorf("the event log has no digests of bank 0x%04x", uint16(alg))
	}
	pcrs := map[uint32][]byte{}
	for i := range l.Events {
		e := &l.Events[i]
		if !e.Measured() {
			continue
		}
		v, ok := pcrs[e.PCR]
		if !ok {
			v = make([]byte, h.Size())
			if e.PCR == 0 {
				v[len(v)-1] = l.StartupLocality
			}
		}
		hh := h.New()
		hh.Write(v)
		hh.Write(e.Digests[alg])
		pcrs[e.PCR] = hh.Sum(nil)
	}
	return pcrs, nil
}

// DataDigestMatches reports whether the event's digest in bank alg is the
// hash of its data: for such events the data, and not only the digest, is
// bound to the PCR by a replay.
func (e *Event) DataDigestMatches(alg tpm2.TPMAlgID) bool {
	h, ok := Hash(alg)
	d, has := e.Digests[alg]
	if !ok || !has {
		return false
	}
	hh := h.New()
	hh.Write(e.Data)
	return bytes.Equal(hh.Sum(nil), d)
}
