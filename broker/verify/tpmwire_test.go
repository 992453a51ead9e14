package verify_test

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// verify decodes TPM structures without go-tpm's reflection (tpmwire.go).
// These tests hold its decoders to go-tpm: whatever they accept, go-tpm
// decodes to the same structure and encodes back to the same bytes; what
// go-tpm decodes exactly, they accept too (for the structures a node sends:
// every public area, quotes, and the signatures a quote can carry).

// wireKinds are the structures checked, by the fuzz target's kind byte.
var wireKinds = []struct {
	name string
	// ours decodes b with verify's decoder and encodes the result with
	// tpm2.Marshal; ok is false if it refused b.
	ours func(b []byte) (enc []byte, ok bool)
	// theirs reports whether go-tpm decodes b as exactly one structure of
	// the kind that verify's decoder must then accept.
	theirs func(b []byte) bool
}{
	{"TPMT_PUBLIC",
		func(b []byte) ([]byte, bool) {
			v, err := verify.DecodePublic(b)
			if err != nil {
				return nil, false
			}
			return tpm2.Marshal(v), true
		},
		func(b []byte) bool { return canonical[tpm2.TPMTPublic](b) }},
	{"TPMS_ATTEST",
		func(b []byte) ([]byte, bool) {
			v, err := verify.DecodeQuoteAttest(b)
			if err != nil {
				return nil, false
			}
			return tpm2.Marshal(v), true
		},
		func(b []byte) bool {
			if !canonical[tpm2.TPMSAttest](b) {
				return false
			}
			a, _ := tpm2.Unmarshal[tpm2.TPMSAttest](b)
			// go-tpm does not check the magic (verify does, first).
			return a.Magic == tpm2.TPMGeneratedValue && a.Type == tpm2.TPMSTAttestQuote && len(mustQuoteInfo(a).PCRSelect.PCRSelections) <= 16
		}},
	{"TPMT_SIGNATURE",
		func(b []byte) ([]byte, bool) {
			v, err := verify.DecodeSignature(b)
			if err != nil {
				return nil, false
			}
			return tpm2.Marshal(v), true
		},
		func(b []byte) bool {
			if !canonical[tpm2.TPMTSignature](b) {
				return false
			}
			s, _ := tpm2.Unmarshal[tpm2.TPMTSignature](b)
			switch s.SigAlg {
			case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgECDSA, tpm2.TPMAlgECDAA, tpm2.TPMAlgNull:
				return true
			}
			return false // HMAC: go-tpm's TPMT_HA reads no digest; no AK signs with it
		}},
}

func mustQuoteInfo(a *tpm2.TPMSAttest) *tpm2.TPMSQuoteInfo {
	q, err := a.Attested.Quote()
	if err != nil {
		panic(err)
	}
	return q
}

// checkWire holds decoder kind to go-tpm on b.
func checkWire(t *testing.T, kind int, b []byte) {
	t.Helper()
	k := wireKinds[kind]
	enc, ok := k.ours(b)
	switch theirs := k.theirs(b); {
	case ok && !bytes.Equal(enc, b):
		t.Fatalf("%s: decoded %x, which encodes back to %x", k.name, b, enc)
	case ok && !canonical[tpm2.TPMTPublic](b) && kind == 0,
		ok && !canonical[tpm2.TPMSAttest](b) && kind == 1,
		ok && !canonical[tpm2.TPMTSignature](b) && kind == 2:
		t.Fatalf("%s: accepted %x, which go-tpm does not decode exactly", k.name, b)
	case theirs && !ok:
		t.Fatalf("%s: refused %x, which go-tpm decodes exactly", k.name, b)
	}
}

// wireSeeds are real structures: the simulator's RSA and ECC EKs, AKs,
// quotes and signatures, and a tpm2-tools session's.
func wireSeeds(tb testing.TB) [][2]any {
	e := newSimEvidence(tb)
	var seeds [][2]any
	for _, b := range [][]byte{e.rsaEK, e.rsaAK, e.eccEK, e.eccAK} {
		seeds = append(seeds, [2]any{0, b})
	}
	for _, q := range []verify.Quote{e.rsaQuote, e.eccQuote} {
		seeds = append(seeds, [2]any{1, q.Attest}, [2]any{2, q.Signature})
	}
	return seeds
}

func TestWireDecodersAgreeWithGoTPM(t *testing.T) {
	tt2 := readTPM2Tools(t)
	seeds := append(wireSeeds(t), [2]any{0, tt2.ek}, [2]any{0, tt2.ak}, [2]any{1, tt2.quote.Attest}, [2]any{2, tt2.quote.Signature})
	for _, s := range seeds {
		kind, b := s[0].(int), s[1].([]byte)
		if _, ok := wireKinds[kind].ours(b); !ok {
			t.Fatalf("%s: refused a real %x", wireKinds[kind].name, b)
		}
		checkWire(t, kind, b)
		// Every truncation is refused, and so is every trailing byte.
		for n := range len(b) {
			checkWire(t, kind, b[:n])
			if _, ok := wireKinds[kind].ours(b[:n]); ok {
				t.Fatalf("%s: accepted %x truncated to %d bytes", wireKinds[kind].name, b, n)
			}
		}
		if _, ok := wireKinds[kind].ours(append(slices.Clone(b), 0)); ok {
			t.Fatalf("%s: accepted a trailing byte", wireKinds[kind].name)
		}
		// Every single-byte change agrees with go-tpm.
		for i := range b {
			for _, x := range []byte{0x01, 0x80, 0xff} {
				c := slices.Clone(b)
				c[i] ^= x
				checkWire(t, kind, c)
			}
		}
	}
}

// A reserved TPMA_OBJECT bit is kept, as go-tpm keeps it: the AK's name
// is the digest of the bytes the TPM signed over.
func TestWireReservedAttributes(t *testing.T) {
	e := newSimEvidence(t)
	b := slices.Clone(e.rsaAK)
	attrs := binary.BigEndian.Uint32(b[4:])
	binary.BigEndian.PutUint32(b[4:], attrs|1<<3|1<<31)
	pub, err := verify.DecodePublic(b)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.ObjectAttributes.GetReservedBit(3) || !pub.ObjectAttributes.GetReservedBit(31) || pub.ObjectAttributes.GetReservedBit(9) {
		t.Fatalf("reserved bits of %08x not kept", attrs|1<<3|1<<31)
	}
	checkWire(t, 0, b)
}

// FuzzWire holds the decoders to go-tpm on any input: kind picks the
// structure (0 TPMT_PUBLIC, 1 TPMS_ATTEST, 2 TPMT_SIGNATURE).
func FuzzWire(f *testing.F) {
	for _, s := range wireSeeds(f) {
		f.Add(uint8(s[0].(int)), s[1].([]byte))
	}
	f.Fuzz(func(t *testing.T, kind uint8, b []byte) {
		checkWire(t, int(kind)%len(wireKinds), b)
	})
}
