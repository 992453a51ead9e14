package tcglog_test

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify/tcglog"
)

// specID builds a crypto-agile log header listing algs with their sizes.
func specID(algs ...[2]uint16) []byte {
	var spec []byte
	spec = append(spec, "Spec ID Event03\x00"...)
	spec = binary.LittleEndian.AppendUint32(spec, 0)
	spec = append(spec, 0, 2, 0, 2)
	spec = binary.LittleEndian.AppendUint32(spec, uint32(len(algs)))
	for _, a := range algs {
		spec = binary.LittleEndian.AppendUint16(spec, a[0])
		spec = binary.LittleEndian.AppendUint16(spec, a[1])
	}
	spec = append(spec, 0)
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, tcglog.EvNoAction)
	b = append(b, make([]byte, 20)...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(spec)))
	return append(b, spec...)
}

var (
	algSHA256 = [2]uint16{uint16(tpm2.TPMAlgSHA256), 32}
	algSHA1   = [2]uint16{uint16(tpm2.TPMAlgSHA1), 20}
)

// event2 builds a TCG_PCR_EVENT2 with the given digests (alg, digest).
func event2(pcr, typ uint32, data []byte, digests ...any) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, pcr)
	b = binary.LittleEndian.AppendUint32(b, typ)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(digests)/2))
	for i := 0; i < len(digests); i += 2 {
		b = binary.LittleEndian.AppendUint16(b, uint16(digests[i].(tpm2.TPMAlgID)))
		b = append(b, digests[i+1].([]byte)...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func sum256(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
func sum1(b []byte) []byte   { s := sha1.Sum(b); return s[:] }

func TestParseAndReplay(t *testing.T) {
	data := []byte("hello")
	raw := specID(algSHA1, algSHA256)
	raw = append(raw, event2(4, 0x80000003, data, tpm2.TPMAlgSHA1, sum1(data), tpm2.TPMAlgSHA256, sum256(data))...)
	raw = append(raw, event2(0xffffffff, tcglog.EvNoAction, nil, tpm2.TPMAlgSHA1, make([]byte, 20), tpm2.TPMAlgSHA256, make([]byte, 32))...)
	l, err := tcglog.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if l.Format != tcglog.CryptoAgile || len(l.Events) != 2 || !l.HasAlg(tpm2.TPMAlgSHA256) || l.HasAlg(tpm2.TPMAlgSHA384) {
		t.Fatalf("parsed %+v", l)
	}
	if !l.Events[0].DataDigestMatches(tpm2.TPMAlgSHA256) || l.Events[1].Measured() {
		t.Errorf("event 0 digest covers its data, event 1 is not measured: %+v", l.Events)
	}
	pcrs, err := l.Replay(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	want := sum256(append(make([]byte, 32), sum256(data)...))
	if len(pcrs) != 1 || !bytes.Equal(pcrs[4], want) {
		t.Errorf("replayed %x, want PCR 4 = %x only", pcrs, want)
	}
	if _, err := l.Replay(tpm2.TPMAlgSHA384); err == nil {
		t.Error("replayed a bank the log does not carry")
	}
}

func TestParseRefusals(t *testing.T) {
	d := []byte("x")
	good := append(specID(algSHA256), event2(0, 1, d, tpm2.TPMAlgSHA256, sum256(d))...)
	header := specID(algSHA256)
	tests := []struct {
		name    string
		raw     []byte
		wantErr string
	}{
		{"empty", nil, "the event log is empty"},
		{"trailing byte", append(bytes.Clone(good), 0), "event 1: record is truncated"},
		{"truncated", good[:len(good)-1], "event 0: record is truncated"},
		{"digest of an unlisted algorithm", append(bytes.Clone(header), event2(0, 1, d, tpm2.TPMAlgSHA384, make([]byte, 48))...), "digest of algorithm 0x000c, which the header does not list"},
		{"fewer digests than algorithms", append(specID(algSHA1, algSHA256), event2(0, 1, d, tpm2.TPMAlgSHA256, sum256(d))...), "event 0: it has 1 digests, the header lists 2 algorithms"},
		{"the same algorithm twice", append(specID(algSHA1, algSHA256), event2(0, 1, d, tpm2.TPMAlgSHA256, sum256(d), tpm2.TPMAlgSHA256, sum256(d))...), "two digests of algorithm 0x000b"},
		{"measured event for PCR 24", append(bytes.Clone(header), event2(24, 1, d, tpm2.TPMAlgSHA256, sum256(d))...), "event 0: PCR index 24 is out of range"},
		{"header with a wrong digest size", specID([2]uint16{uint16(tpm2.TPMAlgSHA256), 20}), "algorithm 0x000b has digest size 20, want 32"},
		{"header listing an algorithm twice", specID(algSHA256, algSHA256), "algorithm 0x000b is listed twice"},
		{"header listing no algorithm", specID(), "it lists 0 algorithms"},
		{"huge event size", append(bytes.Clone(header), 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x0b, 0, 0xff, 0xff, 0xff, 0xff), "record is truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := tcglog.Parse(tc.raw)
			if l != nil || err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Parse = %v, %v; want error %q", l, err, tc.wantErr)
			}
		})
	}
}

func TestParseSHA1Format(t *testing.T) {
	d := []byte("x")
	var raw []byte
	raw = binary.LittleEndian.AppendUint32(raw, 7)
	raw = binary.LittleEndian.AppendUint32(raw, 1)
	raw = append(raw, sum1(d)...)
	raw = binary.LittleEndian.AppendUint32(raw, 1)
	raw = append(raw, d...)
	l, err := tcglog.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if l.Format != tcglog.SHA1 || !l.HasAlg(tpm2.TPMAlgSHA1) || l.HasAlg(tpm2.TPMAlgSHA256) || !l.Events[0].DataDigestMatches(tpm2.TPMAlgSHA1) {
		t.Fatalf("parsed %+v", l)
	}
	if _, err := tcglog.Parse(raw[:len(raw)-1]); err == nil {
		t.Error("a truncated SHA-1 log parsed")
	}
}

// corpusLogs are the real machines' logs of the verify package's corpus.
func corpusLogs(tb testing.TB) map[string][]byte {
	files, err := filepath.Glob("../testdata/eventlogs/*.bin")
	if err != nil || len(files) == 0 {
		tb.Fatalf("no corpus logs: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

func TestParseCorpus(t *testing.T) {
	for name, raw := range corpusLogs(t) {
		l, err := tcglog.Parse(raw)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, alg := range l.Algs {
			if _, err := l.Replay(alg); err != nil {
				t.Errorf("%s: replay %v: %v", name, alg, err)
			}
		}
	}
}

// FuzzParse: Parse never panics, and what it accepts is consistent: every
// measured event has one digest of each of the log's algorithms, and the
// records account for every byte.
func FuzzParse(f *testing.F) {
	for _, raw := range corpusLogs(f) {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		l, err := tcglog.Parse(raw)
		if err != nil {
			return
		}
		for _, e := range l.Events {
			if len(e.Digests) != len(l.Algs) {
				t.Fatalf("event %d has %d digests, the log %d algorithms", e.Seq, len(e.Digests), len(l.Algs))
			}
			if e.Measured() && e.PCR > tcglog.MaxPCR {
				t.Fatalf("event %d extends PCR %d", e.Seq, e.PCR)
			}
			if e.Offset < 0 || e.Offset >= len(raw) {
				t.Fatalf("event %d at offset %d", e.Seq, e.Offset)
			}
		}
		for _, alg := range l.Algs {
			if _, err := l.Replay(alg); err != nil && alg != tpm2.TPMAlgID(0) {
				if strings.Contains(err.Error(), "has no digests") {
					t.Fatalf("replay %v: %v", alg, err)
				}
			}
		}
	})
}
