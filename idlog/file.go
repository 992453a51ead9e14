package idlog

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// FileName is the current boot's segment in the agent's state directory;
// PreviousFileName keeps the segment of the boot before.
const (
	FileName         = "identities.log"
	PreviousFileName = "identities.log.1"
)

// ErrFull refuses a handout once the current boot's segment holds MaxSize
// bytes: the agent hands out no more identities until the machine boots
// again (a new segment).
var ErrFull = errors.New("the identity log is full until the next boot")

// ErrNoRoomForJWT refuses a JWT-SVID handout once the segment reaches
// MaxSize-X509Reserve: the rest is kept for X.509-SVID rotations.
var ErrNoRoomForJWT = errors.New("the identity log has no more room for JWT-SVIDs until the next boot (the rest is kept for X.509-SVIDs)")

// PCR is the TPM PCR a File extends, in the SHA-256 bank.
type PCR interface {
	// Read returns the PCR's SHA-256 value.
	Read() ([32]byte, error)
	// Extend extends digest into the PCR's SHA-256 bank.
	Extend(digest [32]byte) error
}

// Opts configure a File.
type Opts struct {
	// PCR is the PCR to extend (ValidPCR); 0 means DefaultPCR.
	PCR int
	// BootID names the boot in a new segment's boot record; may be empty.
	BootID string
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

// File is the agent's log: the current boot's segment, appended to and
// fsync'd before each extend. It is safe for concurrent use; the caller
// serializes its PCR with the quotes it takes (see Segment).
type File struct {
	mu      sync.Mutex
	f       *os.File
	pcr     int
	now     func() time.Time
	segment []byte
	// value is what segment replays to from a reset PCR.
	value [32]byte
	seen  map[string]bool
	// Mismatch is set when Open found the PCR at a value the segment does
	// not replay to (the PCR was extended out of band, or the file edited):
	// attestations with this segment are refused until the next boot.
	Mismatch bool
	// DroppedLast is set when Open dropped the segment's last record: it
	// was written but never extended (the agent stopped between the fsync
	// and the extend, or the extend failed and the record could not be
	// taken back), and the segment without it replays to the PCR.
	DroppedLast bool
}

// Open opens the log in dir (created 0700 if missing). If the file's
// segment replays to pcr's value, it continues it (the agent restarted
// within a boot). Otherwise, when pcr is still reset (all zero: the file,
// whatever it holds, is another boot's) or the segment names another boot,
// the file moves to PreviousFileName and a new segment starts with a boot
// record, extended into pcr. A segment whose last record was written but
// never extended (a crash between the fsync and the extend) is continued
// without that record when the rest replays (File.DroppedLast). A segment
// that neither replays nor is another boot's is continued with
// File.Mismatch set. A trailing partial record (a write cut short before
// its extend) is dropped.
func Open(dir string, opts Opts, pcr PCR) (*File, error) {
	if opts.PCR == 0 {
		opts.PCR = DefaultPCR
	}
	if err := ValidPCR(opts.PCR); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("unable to create the identity log directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	current, err := pcr.Read()
	if err != nil {
		return nil, fmt.Errorf("unable to read PCR %d: %w", opts.PCR, err)
	}
	raw, err := readSegment(path)
	var log *Log
	if err == nil && len(raw) > 0 {
		log, err = Parse(raw)
	}
	switch {
	case err != nil && current != [32]byte{}:
		// The PCR was extended this boot: the file must explain it.
		return nil, fmt.Errorf("identity log %s: %w", path, err)
	case err != nil:
		// A reset PCR: the file, whatever it holds, is another boot's.
		log, raw = nil, []byte{}
	case log != nil && log.PCR != opts.PCR:
		return nil, fmt.Errorf("identity log %s extends PCR %d, not %d: move it away to change the PCR", path, log.PCR, opts.PCR)
	}
	lf := &File{pcr: opts.PCR, now: opts.Now, seen: map[string]bool{}}
	switch {
	case log != nil && subtle.ConstantTimeCompare(log.Value[:], current[:]) == 1:
		lf.segment, lf.value = raw, log.Value
	case log != nil && len(log.Issued) > 0 && unextendedLast(raw, current) > 0:
		cut := unextendedLast(raw, current)
		lf.segment, lf.value, lf.DroppedLast = raw[:cut], current, true
	case log != nil && current != [32]byte{} && (opts.BootID == "" || log.BootID == opts.BootID):
		lf.segment, lf.value, lf.Mismatch = raw, log.Value, true
	default:
		// A PCR extended before this boot's first record cannot replay.
		lf.Mismatch = current != [32]byte{}
		if _, err := os.Stat(path); err == nil {
			if err := os.Rename(path, filepath.Join(dir, PreviousFileName)); err != nil {
				return nil, fmt.Errorf("unable to keep the previous boot's identity log: %w", err)
			}
		}
	}
	if lf.f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
		return nil, fmt.Errorf("unable to open the identity log: %w", err)
	}
	if err := lf.f.Truncate(int64(len(lf.segment))); err != nil {
		lf.f.Close()
		return nil, fmt.Errorf("unable to drop a partial identity log record: %w", err)
	}
	if lf.segment == nil {
		if _, err := lf.append(BootRecord(opts.PCR, opts.BootID, opts.Now()), pcr, true); err != nil {
			lf.f.Close()
			return nil, err
		}
	}
	lf.indexSegment()
	return lf, nil
}

// unextendedLast returns the length of raw without its last record when
// that shorter segment replays to current (the last record was never
// extended), or 0.
func unextendedLast(raw []byte, current [32]byte) int {
	cut := bytes.LastIndexByte(raw[:len(raw)-1], '\n') + 1
	if cut == 0 {
		return 0
	}
	l, err := Parse(raw[:cut])
	if err != nil || subtle.ConstantTimeCompare(l.Value[:], current[:]) != 1 {
		return 0
	}
	return cut
}

// ReadSegment returns the current boot's segment in dir without writing
// anything, for a one-shot attestation (keybroker-agent vault-login) next
// to an agent that keeps the file: nil when there is no file or pcr is
// still reset (the file is another boot's, and a reset PCR needs no log).
// A segment that does not parse, or names another PCR, is an error. The
// agent may extend a new record between this read and the quote: the
// attestation is then refused and may be retried.
func ReadSegment(dir string, index int, pcr PCR) ([]byte, error) {
	current, err := pcr.Read()
	if err != nil {
		return nil, fmt.Errorf("unable to read PCR %d: %w", index, err)
	}
	path := filepath.Join(dir, FileName)
	raw, err := readSegment(path)
	if err != nil || len(raw) == 0 || current == ([32]byte{}) {
		return nil, err
	}
	log, err := Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("identity log %s: %w", path, err)
	case log.PCR != index:
		return nil, fmt.Errorf("identity log %s extends PCR %d, not %d", path, log.PCR, index)
	}
	return raw, nil
}

// readSegment reads the file up to its last newline.
func readSegment(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("unable to read the identity log: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxSize+MaxRecordSize+2))
	if err != nil {
		return nil, fmt.Errorf("unable to read the identity log: %w", err)
	}
	if len(raw) > MaxSize+MaxRecordSize+1 {
		return nil, fmt.Errorf("identity log %s exceeds %d bytes", path, MaxSize)
	}
	return raw[:bytes.LastIndexByte(raw, '\n')+1], nil
}

func (lf *File) indexSegment() {
	for rest := lf.segment; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if r, err := parseRecord(rest[:i], false); err == nil {
			lf.seen[r.key()] = true
		}
		rest = rest[i+1:]
	}
}

// PCR returns the PCR the log extends.
func (lf *File) PCR() int { return lf.pcr }

// Recorded reports whether h was recorded already in this boot (then
// Append would not record it again).
func (lf *File) Recorded(h Issued) bool {
	r := HandoutRecord(h)
	lf.mu.Lock()
	defer lf.mu.Unlock()
	return lf.seen[r.key()]
}

// Append records h unless it was recorded already in this boot: the
// record is written and fsync'd, then extended into pcr. It reports
// whether it appended. On any error the handout must not happen.
func (lf *File) Append(h Issued, pcr PCR) (bool, error) {
	r := HandoutRecord(h)
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.seen[r.key()] {
		return false, nil
	}
	ok, err := lf.append(r, pcr, false)
	if ok {
		lf.seen[r.key()] = true
	}
	return ok, err
}

func (lf *File) append(r Record, pcr PCR, first bool) (bool, error) {
	line, err := Encode(r, first)
	if err != nil {
		return false, err
	}
	switch size := len(lf.segment) + len(line) + 1; {
	case size > MaxSize:
		return false, ErrFull
	case r.Type == TypeJWT && size > MaxSize-X509Reserve:
		return false, ErrNoRoomForJWT
	}
	rec := append(line, '\n')
	if _, err := lf.f.Write(rec); err != nil {
		lf.f.Truncate(int64(len(lf.segment)))
		return false, fmt.Errorf("unable to append to the identity log: %w", err)
	}
	if err := lf.f.Sync(); err != nil {
		lf.f.Truncate(int64(len(lf.segment)))
		return false, fmt.Errorf("unable to sync the identity log: %w", err)
	}
	// Durable before the extend: a record may be on disk without its
	// extend (a crash between), never the reverse.
	next := Extend(lf.value, Digest(line))
	if err := pcr.Extend(Digest(line)); err != nil {
		// The TPM may have run the extend and failed after (a lost
		// response): the PCR says which. Extended: keep the record.
		if v, rerr := pcr.Read(); rerr == nil && subtle.ConstantTimeCompare(v[:], next[:]) == 1 {
			lf.segment, lf.value = append(lf.segment, rec...), next
			return true, nil
		}
		// Not extended (or unknown): take the record back so that the log
		// still replays; Open drops it if it stays.
		if terr := lf.f.Truncate(int64(len(lf.segment))); terr != nil {
			lf.Mismatch = true
		}
		return false, fmt.Errorf("unable to extend PCR %d: %w", lf.pcr, err)
	}
	lf.segment, lf.value = append(lf.segment, rec...), next
	return true, nil
}

// Segment returns the current boot's segment, as sent with an
// attestation. The caller must keep the PCR from being extended between
// this call and the quote (hold the TPM across both).
func (lf *File) Segment() []byte {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	return bytes.Clone(lf.segment)
}

// Close closes the file.
func (lf *File) Close() error { return lf.f.Close() }
