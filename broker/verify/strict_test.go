package verify_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// The strictness tests start from real TPM output — the simulator's, and a
// tpm2-tools session on swtpm (testdata/tpm2tools) — and change one thing.

// simEvidence is what a simulated machine presents: its RSA and ECC EKs and
// AKs (TPMT_PUBLIC) and a quote by each AK over SHA-256 PCRs 0-7 carrying
// secret. It is plain bytes: nothing needs the TPM afterwards.
type simEvidence struct {
	rsaEK, rsaAK, eccEK, eccAK []byte
	secret                     []byte
	rsaQuote, eccQuote         verify.Quote
}

// newSimEvidence collects simEvidence from a fresh simulator.
func newSimEvidence(tb testing.TB) *simEvidence {
	tb.Helper()
	rw := tpmtest.Open(tb)
	e := &simEvidence{secret: bytes.Repeat([]byte{0x5e}, 32)}
	for _, k := range []struct {
		load func() (*client.Key, error)
		pub  *[]byte
		q    *verify.Quote
	}{
		{func() (*client.Key, error) { return client.EndorsementKeyRSA(rw) }, &e.rsaEK, nil},
		{func() (*client.Key, error) { return client.AttestationKeyRSA(rw) }, &e.rsaAK, &e.rsaQuote},
		{func() (*client.Key, error) { return client.EndorsementKeyECC(rw) }, &e.eccEK, nil},
		{func() (*client.Key, error) { return client.AttestationKeyECC(rw) }, &e.eccAK, &e.eccQuote},
	} {
		key, err := k.load()
		if err != nil {
			tb.Fatalf("unable to load a TPM key: %v", err)
		}
		*k.pub, err = key.PublicArea().Encode()
		if err == nil && k.q != nil {
			*k.q, err = quoteWith(key, e.secret)
		}
		key.Close()
		if err != nil {
			tb.Fatal(err)
		}
	}
	return e
}

// quoteWith quotes SHA-256 PCRs 0-7 with ak, as the agent does.
func quoteWith(ak *client.Key, secret []byte) (verify.Quote, error) {
	q, err := ak.Quote(legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: pcrRange(8)}, secret)
	if err != nil {
		return verify.Quote{}, err
	}
	return verify.Quote{Attest: q.GetQuote(), Signature: q.GetRawSig(), Bank: tpm2.TPMAlgSHA256, PCRs: q.GetPcrs().GetPcrs()}, nil
}

func (e *simEvidence) nonceHash() [32]byte { return sha256.Sum256(e.secret) }

// node verifies an EK and AK of e (or others), trusting the EK by hash
// when it has one.
func (e *simEvidence) node(tb testing.TB, ek, ak []byte) (*verify.NodeIdentity, error) {
	tb.Helper()
	var trust verify.Trust
	if pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ek); err == nil {
		if key, err := tpm2.Pub(*pub); err == nil {
			if h, err := verify.EKHash(key); err == nil { // not for a point off the curve
				trust.EKHashes = []string{h}
			}
		}
	}
	return verify.Node(ek, nil, nil, ak, verify.Opts{Trust: trust})
}

func (e *simEvidence) mustNode(tb testing.TB, ek, ak []byte) *verify.NodeIdentity {
	tb.Helper()
	n, err := e.node(tb, ek, ak)
	if err != nil {
		tb.Fatalf("verify.Node: %v", err)
	}
	return n
}

// qualifiedName is the qualified name of pub under a parent whose
// qualified name is parentQN (a hierarchy's handle for a primary key):
// nameAlg || H(parentQN || name), TPM 2.0 Part 1, 16.6.
func qualifiedName(tb testing.TB, parentQN []byte, pub *tpm2.TPMTPublic) tpm2.TPM2BName {
	tb.Helper()
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		tb.Fatal(err)
	}
	d := mustHash(tb, pub.NameAlg).New()
	d.Write(parentQN)
	d.Write(name.Buffer)
	return tpm2.TPM2BName{Buffer: d.Sum(binary.BigEndian.AppendUint16(nil, uint16(pub.NameAlg)))}
}

var ownerQN = tpm2.PrimaryHandleName(tpm2.TPMRHOwner)

// resigned is a simulator quote made over by a software AK: its attest
// (changed by edit, then encoded and changed by raw) signed by ak. It
// reaches the checks that come after the signature with inputs a TPM never
// signs.
func resigned(tb testing.TB, q verify.Quote, ak softAK, edit func(*tpm2.TPMSAttest), raw func([]byte) []byte) verify.Quote {
	tb.Helper()
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
	if err != nil {
		tb.Fatal(err)
	}
	att.QualifiedSigner = qualifiedName(tb, ownerQN, &ak.pub)
	if edit != nil {
		edit(att)
	}
	b := tpm2.Marshal(att)
	if raw != nil {
		b = raw(b)
	}
	out := q
	out.Attest, out.Signature = b, ak.sign(tb, b)
	return out
}

// safeOffset is the offset of clockInfo.safe in an encoded TPMS_ATTEST.
func safeOffset(tb testing.TB, attest []byte) int {
	tb.Helper()
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
	if err != nil {
		tb.Fatal(err)
	}
	// magic, type, qualifiedSigner, extraData, clock, resetCount, restartCount
	return 4 + 2 + 2 + len(att.QualifiedSigner.Buffer) + 2 + len(att.ExtraData.Buffer) + 8 + 4 + 4
}

func withByte(b []byte, extra byte) []byte { return append(slices.Clone(b), extra) }

func TestStrictEncodings(t *testing.T) {
	e := newSimEvidence(t)
	rsaNode := e.mustNode(t, e.rsaEK, e.rsaAK)
	eccNode := e.mustNode(t, e.eccEK, e.eccAK)
	soft := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256)
	softNode := e.mustNode(t, e.rsaEK, soft.publicBytes())
	quotes := func(n *verify.NodeIdentity, q verify.Quote) error {
		_, err := verify.Quotes(n, e.nonceHash(), []verify.Quote{q}, verify.Opts{})
		return err
	}
	sigPlus := func(q verify.Quote, b byte) verify.Quote { q.Signature = withByte(q.Signature, b); return q }
	tests := []struct {
		name    string
		run     func() error
		check   verify.Check
		wantErr string
	}{
		{"real RSA quote", func() error { return quotes(rsaNode, e.rsaQuote) }, "", ""},
		{"real ECC quote", func() error { return quotes(eccNode, e.eccQuote) }, "", ""},
		{"re-signed real quote", func() error { return quotes(softNode, resigned(t, e.rsaQuote, soft, nil, nil)) }, "", ""},
		{"ek_public with a trailing byte", func() error { _, err := e.node(t, withByte(e.rsaEK, 0), e.rsaAK); return err },
			verify.CheckInput, "ek_public has trailing bytes"},
		{"ak_public with a trailing byte", func() error { _, err := e.node(t, e.rsaEK, withByte(e.rsaAK, 0)); return err },
			verify.CheckInput, "ak_public has trailing bytes"},
		{"ECC ak_public with trailing bytes", func() error { _, err := e.node(t, e.eccEK, append(slices.Clone(e.eccAK), 0, 0)); return err },
			verify.CheckInput, "ak_public has trailing bytes"},
		{"RSASSA signature with a trailing byte", func() error { return quotes(rsaNode, sigPlus(e.rsaQuote, 0)) },
			verify.CheckInput, "quote signature has trailing bytes"},
		{"ECDSA signature with a trailing byte", func() error { return quotes(eccNode, sigPlus(e.eccQuote, 0xff)) },
			verify.CheckInput, "quote signature has trailing bytes"},
		{"attest with a trailing byte", func() error {
			return quotes(softNode, resigned(t, e.rsaQuote, soft, nil, func(b []byte) []byte { return withByte(b, 0) }))
		}, verify.CheckInput, "quote attest has trailing bytes"},
		{"attest with a trailing TPMS_ATTEST", func() error {
			return quotes(softNode, resigned(t, e.rsaQuote, soft, nil, func(b []byte) []byte { return append(slices.Clone(b), b...) }))
		}, verify.CheckInput, "quote attest has trailing bytes"},
		{"attest with safe = 2", func() error {
			return quotes(softNode, resigned(t, e.rsaQuote, soft, nil, func(b []byte) []byte {
				b = slices.Clone(b)
				b[safeOffset(t, b)] = 2 // go-tpm reads any non-zero byte as yes
				return b
			}))
		}, verify.CheckInput, "quote attest is not a canonical TPMS_ATTEST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assertCheck(t, tt.run(), tt.check, tt.wantErr)
		})
	}
}

// offCurve moves an ECC public area's point off its curve by changing one
// bit of Y, or applies edit to the point.
func offCurve(tb testing.TB, public []byte, edit func(*tpm2.TPMSECCPoint)) []byte {
	tb.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](public)
	if err != nil {
		tb.Fatal(err)
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		tb.Fatal(err)
	}
	p := tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: slices.Clone(pt.X.Buffer)}, Y: tpm2.TPM2BECCParameter{Buffer: slices.Clone(pt.Y.Buffer)}}
	if edit == nil {
		p.Y.Buffer[len(p.Y.Buffer)-1] ^= 1
	} else {
		edit(&p)
	}
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &p)
	return tpm2.Marshal(pub)
}

func TestStrictECCPoints(t *testing.T) {
	e := newSimEvidence(t)
	leadingZero := func(p *tpm2.TPMSECCPoint) { p.X.Buffer = append([]byte{0}, p.X.Buffer...) }
	infinity := func(p *tpm2.TPMSECCPoint) { p.X.Buffer, p.Y.Buffer = nil, nil }
	tests := []struct {
		name    string
		ek, ak  []byte
		check   verify.Check
		wantErr string
	}{
		{"real ECC EK and AK", e.eccEK, e.eccAK, "", ""},
		{"EK off the curve", offCurve(t, e.eccEK, nil), e.eccAK, verify.CheckInput, "EK public key is not a point on P-256"},
		{"EK coordinate longer than the curve", offCurve(t, e.eccEK, leadingZero), e.eccAK, verify.CheckInput, "EK public key is not a point on P-256"},
		{"EK at infinity", offCurve(t, e.eccEK, infinity), e.eccAK, verify.CheckInput, "EK public key is not a point on P-256"},
		{"AK off the curve", e.eccEK, offCurve(t, e.eccAK, nil), verify.CheckAK, "AK public key is not a point on P-256"},
		{"AK coordinate longer than the curve", e.eccEK, offCurve(t, e.eccAK, leadingZero), verify.CheckAK, "AK public key is not a point on P-256"},
		{"AK at infinity", e.rsaEK, offCurve(t, e.eccAK, infinity), verify.CheckAK, "AK public key is not a point on P-256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.node(t, tt.ek, tt.ak)
			assertCheck(t, err, tt.check, tt.wantErr)
		})
	}
}

// tpm2tools is a quote that tpm2-tools made on swtpm (testdata/tpm2tools)
// with an AK created by tpm2_createak as a child of the EK.
type tpm2tools struct {
	ek, ak []byte
	quote  verify.Quote
	nonce  [32]byte
}

func readTPM2Tools(t *testing.T) tpm2tools {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "tpm2tools", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pcrs := map[uint32][]byte{}
	for _, i := range []uint32{0, 1, 2, 7} {
		pcrs[i] = make([]byte, 32) // a fresh swtpm
	}
	return tpm2tools{
		ek: read("ek.pub"), ak: read("ak.pub"),
		quote: verify.Quote{Attest: read("quote.msg"), Signature: read("quote.sig"), Bank: tpm2.TPMAlgSHA256, PCRs: pcrs},
		nonce: sha256.Sum256([]byte("keybroker tpm2tools qn test secr")),
	}
}

func TestQualifiedSigner(t *testing.T) {
	e := newSimEvidence(t)
	tt2 := readTPM2Tools(t)
	soft := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256)
	softNode := e.mustNode(t, e.rsaEK, soft.publicBytes())
	simAK, err := tpm2.Unmarshal[tpm2.TPMTPublic](e.rsaAK)
	if err != nil {
		t.Fatal(err)
	}
	signer := func(n tpm2.TPM2BName) func(*tpm2.TPMSAttest) {
		return func(a *tpm2.TPMSAttest) { a.QualifiedSigner = n }
	}
	akName, err := tpm2.ObjectName(&soft.pub)
	if err != nil {
		t.Fatal(err)
	}
	const msg = "quote qualifiedSigner is not the AK's qualified name (the AK as a primary key or a child of the EK)"
	tests := []struct {
		name    string
		node    *verify.NodeIdentity
		nonce   [32]byte
		quote   verify.Quote
		check   verify.Check
		wantErr string
	}{
		{"owner primary AK (go-tpm-tools, simulator)", e.mustNode(t, e.rsaEK, e.rsaAK), e.nonceHash(), e.rsaQuote, "", ""},
		{"AK under the EK (tpm2-tools, swtpm)", e.mustNode(t, tt2.ek, tt2.ak), tt2.nonce, tt2.quote, "", ""},
		{"AK under another EK", e.mustNode(t, e.rsaEK, tt2.ak), tt2.nonce, tt2.quote, verify.CheckSignature, msg},
		{"endorsement primary AK", softNode, e.nonceHash(),
			resigned(t, e.rsaQuote, soft, signer(qualifiedName(t, tpm2.PrimaryHandleName(tpm2.TPMRHEndorsement), &soft.pub)), nil), "", ""},
		{"qualifiedSigner of another AK", softNode, e.nonceHash(),
			resigned(t, e.rsaQuote, soft, signer(qualifiedName(t, ownerQN, simAK)), nil), verify.CheckSignature, msg},
		{"qualifiedSigner is the AK's name", softNode, e.nonceHash(),
			resigned(t, e.rsaQuote, soft, signer(*akName), nil), verify.CheckSignature, msg},
		{"empty qualifiedSigner", softNode, e.nonceHash(),
			resigned(t, e.rsaQuote, soft, signer(tpm2.TPM2BName{}), nil), verify.CheckSignature, msg},
		{"AK under an unknown parent", softNode, e.nonceHash(),
			resigned(t, e.rsaQuote, soft, signer(qualifiedName(t, qualifiedName(t, ownerQN, simAK).Buffer, &soft.pub)), nil),
			verify.CheckSignature, msg},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := verify.Quotes(tt.node, tt.nonce, []verify.Quote{tt.quote}, verify.Opts{})
			assertCheck(t, err, tt.check, tt.wantErr)
			if err != nil && verify.FromTPM(err) {
				t.Error("a qualifiedSigner refusal counts as the node's TPM's answer; it must not deny-list the node")
			}
		})
	}
}
