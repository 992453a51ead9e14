// Package idlog is the node's record of the identities its agent handed to
// workloads, measured the way IMA measures files: every SVID the agent's
// SPIFFE Workload API hands out is appended to a log on the node, and the
// SHA-256 of the appended record is extended into a PCR of the node's TPM
// (SHA-256 bank). The log travels with the node's next attestation; the
// broker replays it against the quoted PCR (Replay), so a record edited,
// dropped or added, or the PCR extended by anyone else, does not replay.
//
// The format is one record per line, each a JSON object (Record) written
// once and never rewritten: the digest a record extends is the SHA-256 of
// its exact bytes, without the newline, so nothing is re-encoded to check
// it. A log is one boot's segment: the PCR resets when the machine boots,
// so the first record of a segment is a boot record (naming the PCR and
// the boot), extended like the others, and only the current boot's segment
// replays against the quoted PCR. Parse reads a segment strictly: every
// line a known record with every field valid, nothing unknown, nothing
// after the last newline, at most MaxSize bytes.
//
// The agent keeps the current segment in a File (Open, Append); the broker
// calls Parse and Replay (broker/verify).
package idlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/internal/workloadentry"
)

// Limits of a segment, checked by the agent when it appends and by Parse.
const (
	// MaxSize bounds one boot's segment, as sent with an attestation (a few
	// hundred bytes a record: some 800 handouts per boot).
	MaxSize = 256 << 10
	// MaxRecordSize bounds one record.
	MaxRecordSize = 4 << 10
	// X509Reserve is the end of a segment that only X.509-SVID records may
	// fill: a workload asking for JWT-SVIDs of ever new audiences cannot
	// use the whole segment and block the rotation of X.509-SVIDs until
	// the next boot (ErrNoRoomForJWT).
	X509Reserve = 64 << 10
	// DefaultPCR is the PCR the agent extends unless told otherwise.
	DefaultPCR = 15
	// maxBootID bounds the boot record's boot_id.
	maxBootID = 64
)

// The record types.
const (
	// TypeBoot starts a segment: the PCR it extends and the boot.
	TypeBoot = "boot"
	// TypeX509 is an X.509-SVID handed out; Serial is the certificate's
	// serial number in lowercase hex.
	TypeX509 = "x509"
	// TypeJWT is a JWT-SVID handed out; Serial is the SHA-256 of the token
	// in lowercase hex (JWT-SVIDs carry no ID), Expires its expiry.
	TypeJWT = "jwt"
)

// Record is one line of the log.
type Record struct {
	Type string `json:"type"`
	// PCR and BootID are set on the boot record only: the PCR the segment
	// extends (SHA-256 bank), and the kernel's boot ID when the agent could
	// read it (/proc/sys/kernel/random/boot_id).
	PCR    *int   `json:"pcr,omitempty"`
	BootID string `json:"boot_id,omitempty"`
	// The handout: the SVID's SPIFFE ID, serial and expiry, the selectors
	// of the workload entry it was issued for, the calling executable's
	// SHA-256 (empty if the agent could not read it) and the caller's uid
	// and gid.
	SPIFFEID  string   `json:"spiffe_id,omitempty"`
	Serial    string   `json:"serial,omitempty"`
	Expires   string   `json:"expires,omitempty"`
	Selectors []string `json:"selectors,omitempty"`
	ExeSHA256 string   `json:"exe_sha256,omitempty"`
	UID       *uint32  `json:"uid,omitempty"`
	// GID is the caller's gid; absent in records of agents before it.
	GID *uint32 `json:"gid,omitempty"`
	// Time is when the record was appended, RFC 3339 in UTC.
	Time string `json:"time"`
}

// Issued is a handout record as the broker's facts present it.
type Issued struct {
	Type      string    `json:"type"`
	SPIFFEID  string    `json:"spiffe_id"`
	Serial    string    `json:"serial"`
	Expires   time.Time `json:"expires,omitzero"`
	Selectors []string  `json:"selectors"`
	ExeSHA256 string    `json:"exe_sha256"`
	UID       uint32    `json:"uid"`
	// GID is nil in records written before the agent recorded it.
	GID  *uint32   `json:"gid,omitempty"`
	Time time.Time `json:"time"`
}

// BootRecord returns the record that starts a segment extending pcr.
func BootRecord(pcr int, bootID string, at time.Time) Record {
	return Record{Type: TypeBoot, PCR: &pcr, BootID: bootID, Time: formatTime(at)}
}

// HandoutRecord returns the record of a handout.
func HandoutRecord(h Issued) Record {
	uid := h.UID
	r := Record{Type: h.Type, SPIFFEID: h.SPIFFEID, Serial: h.Serial, Selectors: slices.Clone(h.Selectors),
		ExeSHA256: h.ExeSHA256, UID: &uid, Time: formatTime(h.Time)}
	if h.GID != nil {
		gid := *h.GID
		r.GID = &gid
	}
	if !h.Expires.IsZero() {
		r.Expires = formatTime(h.Expires)
	}
	return r
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ValidPCR checks that pcr may hold the record: one of 10-15, which reset
// to all zero at boot and only then. PCRs 0-9 are the firmware's and boot
// loader's (the event log explains them), 16 and 23 software may reset, and
// 17-22 start all one and are reset by a dynamic launch (DRTM, locality
// 2-4): a record there could be wiped and rewritten within a boot.
func ValidPCR(pcr int) error {
	if pcr < 10 || pcr > 15 {
		return fmt.Errorf("PCR %d cannot hold the identity record: use one of 10-15", pcr)
	}
	return nil
}

// PCRWarning is what an operator should hear about pcr as the record's
// PCR, or "": PCR 10 is where IMA measures, when it runs.
func PCRWarning(pcr int) string {
	if pcr == 10 {
		return "PCR 10 is IMA's: if IMA measures on this machine, the identity record does not replay; pick another of 11-15"
	}
	return ""
}

// Encode returns r as the line the log holds (without the newline),
// checking it as Parse does.
func Encode(r Record, first bool) ([]byte, error) {
	if err := r.check(first); err != nil {
		return nil, err
	}
	line, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("unable to encode the record: %w", err)
	}
	if len(line) > MaxRecordSize {
		return nil, fmt.Errorf("the record has %d bytes, at most %d allowed", len(line), MaxRecordSize)
	}
	return line, nil
}

// Digest is what a record extends into the PCR: the SHA-256 of its line.
func Digest(line []byte) [32]byte { return sha256.Sum256(line) }

// Extend returns the SHA-256 PCR value pcr becomes when digest is extended
// into it, as TPM2_PCR_Extend computes it.
func Extend(pcr, digest [32]byte) [32]byte {
	return sha256.Sum256(append(pcr[:], digest[:]...))
}

// Log is a parsed segment.
type Log struct {
	// PCR is the PCR the segment extends; BootID the boot record's.
	PCR    int
	BootID string
	Boot   time.Time
	// Issued are the handouts, in order.
	Issued []Issued
	// Value is the PCR value the segment replays to from a reset PCR.
	Value [32]byte
}

// Parse reads a segment strictly (see the package comment).
func Parse(raw []byte) (*Log, error) {
	switch {
	case len(raw) == 0:
		return nil, errors.New("the identity log is empty")
	case len(raw) > MaxSize:
		return nil, fmt.Errorf("the identity log exceeds %d bytes", MaxSize)
	case raw[len(raw)-1] != '\n':
		return nil, errors.New("the identity log does not end with a newline")
	}
	l := &Log{}
	rest := raw
	for n := 1; len(rest) > 0; n++ {
		i := bytes.IndexByte(rest, '\n')
		line := rest[:i]
		rest = rest[i+1:]
		r, err := parseRecord(line, n == 1)
		if err != nil {
			return nil, fmt.Errorf("identity log record %d: %w", n, err)
		}
		l.Value = Extend(l.Value, Digest(line))
		t, _ := time.Parse(time.RFC3339Nano, r.Time)
		if n == 1 {
			l.PCR, l.BootID, l.Boot = *r.PCR, r.BootID, t
			continue
		}
		iss := Issued{Type: r.Type, SPIFFEID: r.SPIFFEID, Serial: r.Serial, Selectors: r.Selectors,
			ExeSHA256: r.ExeSHA256, UID: *r.UID, GID: r.GID, Time: t}
		if r.Expires != "" {
			iss.Expires, _ = time.Parse(time.RFC3339Nano, r.Expires)
		}
		l.Issued = append(l.Issued, iss)
	}
	return l, nil
}

// parseRecord decodes one line: one JSON object of known fields, each
// valid, re-encoding to exactly the same bytes.
func parseRecord(line []byte, first bool) (Record, error) {
	if len(line) > MaxRecordSize {
		return Record{}, fmt.Errorf("has more than %d bytes", MaxRecordSize)
	}
	var r Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("is not a record: %w", err)
	}
	if dec.More() {
		return Record{}, errors.New("has data after the record")
	}
	if err := r.check(first); err != nil {
		return Record{}, err
	}
	// One encoding per record: what the agent wrote, byte for byte, so
	// that a record has one digest and no field can hide (duplicate keys,
	// escapes, spacing).
	if canon, err := json.Marshal(r); err != nil || !bytes.Equal(canon, line) {
		return Record{}, errors.New("is not in the agent's encoding")
	}
	return r, nil
}

// check validates a record; first: it starts the segment.
func (r Record) check(first bool) error {
	if _, err := time.Parse(time.RFC3339Nano, r.Time); err != nil {
		return errors.New("time is not an RFC 3339 time")
	}
	if first != (r.Type == TypeBoot) {
		if first {
			return errors.New("a segment must start with a boot record")
		}
		return errors.New("a boot record may only start a segment")
	}
	switch r.Type {
	case TypeBoot:
		switch {
		case r.PCR == nil:
			return errors.New("boot record without pcr")
		case len(r.BootID) > maxBootID || strings.ContainsFunc(r.BootID, notPrintable):
			return errors.New("boot_id is not a boot ID")
		case r.SPIFFEID != "" || r.Serial != "" || r.Expires != "" || r.Selectors != nil || r.ExeSHA256 != "" || r.UID != nil || r.GID != nil:
			return errors.New("boot record with handout fields")
		}
		return ValidPCR(*r.PCR)
	case TypeX509, TypeJWT:
	default:
		return fmt.Errorf("unknown record type %q", r.Type)
	}
	switch {
	case r.PCR != nil || r.BootID != "":
		return errors.New("handout record with boot fields")
	case r.UID == nil:
		return errors.New("handout record without uid")
	case !isHex(r.Serial, 1, 64):
		return errors.New("serial is not lowercase hex")
	case r.ExeSHA256 != "" && !isHex(r.ExeSHA256, 64, 64):
		return errors.New("exe_sha256 is not a SHA-256 in lowercase hex")
	case len(r.Selectors) > workloadentry.MaxSelectors:
		return fmt.Errorf("more than %d selectors", workloadentry.MaxSelectors)
	}
	if _, err := spiffeid.FromString(r.SPIFFEID); err != nil {
		return fmt.Errorf("spiffe_id: %w", err)
	}
	if r.Expires != "" {
		if _, err := time.Parse(time.RFC3339Nano, r.Expires); err != nil {
			return errors.New("expires is not an RFC 3339 time")
		}
	}
	for _, s := range r.Selectors {
		if len(s) > 1024 || strings.ContainsFunc(s, notPrintable) {
			return errors.New("a selector is not printable")
		}
	}
	return nil
}

func notPrintable(r rune) bool { return r < 0x20 || r == 0x7f }

func isHex(s string, minLen, maxLen int) bool {
	if len(s) < minLen || len(s) > maxLen {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// key identifies a handout for deduplication: one record per SVID and
// caller — its executable (by content, whatever its pid) and its uid and
// gid.
func (r Record) key() string {
	id := func(p *uint32) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprint(*p)
	}
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s\x00%s", r.Type, r.SPIFFEID, r.Serial, r.ExeSHA256, id(r.UID), id(r.GID))
}

// SerialOfToken is the Serial of a JWT-SVID: the SHA-256 of the token.
func SerialOfToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
