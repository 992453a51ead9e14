package softtpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// The hand-written encodings of tpmwire.go are go-tpm's: encoders against
// tpm2.Marshal, decoders against gotpmExact (tpm2.Unmarshal refusing
// trailing and non-canonical bytes, what the node used before).

// gotpmExact decodes b as one T with go-tpm, refusing trailing bytes and
// encodings that are not T's canonical one.
func gotpmExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (*T, error) {
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(P(v)), b) {
		return nil, errors.New("trailing or non-canonical bytes")
	}
	return v, nil
}

// randBytes returns n random bytes from r.
func randBytes(r *mrand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// pick1 returns one of vs at random.
func pick1[T any](r *mrand.Rand, vs ...T) T { return vs[r.IntN(len(vs))] }

// The banks a node quotes.
var quoteBanks = []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512}

// gotpmAttest is a quote's TPMS_ATTEST as go-tpm's structure.
func gotpmAttest(a *quoteAttest) tpm2.TPMSAttest {
	return tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: a.signer},
		ExtraData:       tpm2.TPM2BData{Buffer: a.extraData},
		ClockInfo:       a.clock,
		FirmwareVersion: a.firmware,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
				{Hash: a.bank, PCRSelect: a.pcrSelect},
			}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: a.pcrDigest},
		}),
	}
}

func TestQuoteAttestEncoding(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	full := []byte{0xff, 0xff, 0xff}
	digest := sha256.Sum256([]byte("pcrs"))
	tests := []struct {
		name string
		a    quoteAttest
	}{
		{"zero clock, no qualifying data", quoteAttest{signer: randBytes(r, 34), bank: tpm2.TPMAlgSHA256, pcrSelect: full, pcrDigest: digest[:]}},
		{"extreme clock", quoteAttest{signer: randBytes(r, 34), extraData: randBytes(r, 32),
			clock:    tpm2.TPMSClockInfo{Clock: math.MaxUint64, ResetCount: math.MaxUint32, RestartCount: math.MaxUint32, Safe: true},
			firmware: math.MaxUint64, bank: tpm2.TPMAlgSHA1, pcrSelect: full, pcrDigest: digest[:]}},
		{"64 bytes of qualifying data", quoteAttest{signer: randBytes(r, 34), extraData: randBytes(r, MaxQualifyingData),
			clock: tpm2.TPMSClockInfo{Clock: 1}, firmware: firmwareVersion, bank: tpm2.TPMAlgSHA384, pcrSelect: full, pcrDigest: digest[:]}},
		{"empty selection and digest", quoteAttest{bank: tpm2.TPMAlgSHA512}},
	}
	for range 500 {
		tests = append(tests, struct {
			name string
			a    quoteAttest
		}{"random", quoteAttest{
			signer:    randBytes(r, pick1(r, 0, 34, 66)),
			extraData: randBytes(r, r.IntN(MaxQualifyingData+1)),
			clock: tpm2.TPMSClockInfo{Clock: pick1(r, 0, math.MaxUint64, r.Uint64()),
				ResetCount: pick1(r, 0, math.MaxUint32, r.Uint32()), RestartCount: pick1(r, 0, math.MaxUint32, r.Uint32()),
				Safe: r.IntN(2) == 1},
			firmware:  pick1(r, 0, math.MaxUint64, r.Uint64()),
			bank:      pick1(r, quoteBanks...),
			pcrSelect: randBytes(r, pick1(r, 3, 4)),
			pcrDigest: randBytes(r, pick1(r, 20, 32, 48, 64)),
		}})
	}
	for _, tt := range tests {
		got, want := tt.a.encode(), tpm2.Marshal(gotpmAttest(&tt.a))
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: encode\n got %x\nwant %x (tpm2.Marshal)", tt.name, got, want)
		}
	}
}

func TestSignatureEncoding(t *testing.T) {
	r := mrand.New(mrand.NewPCG(3, 4))
	zero, ones := make([]byte, 32), bytes.Repeat([]byte{0xff}, 32)
	type ecdsaSig struct{ r, s []byte }
	ecdsaSigs := []ecdsaSig{{zero, zero}, {ones, ones}, {append([]byte{0}, randBytes(r, 31)...), randBytes(r, 32)}}
	rsaSigs := [][]byte{make([]byte, 256), bytes.Repeat([]byte{0xff}, 256), append([]byte{0, 0}, randBytes(r, 254)...)}
	for range 500 {
		ecdsaSigs = append(ecdsaSigs, ecdsaSig{randBytes(r, 32), randBytes(r, 32)})
		rsaSigs = append(rsaSigs, randBytes(r, 256))
	}
	for _, sig := range ecdsaSigs {
		want := tpm2.Marshal(tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgECDSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
				Hash:       tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: sig.r},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: sig.s},
			}),
		})
		if got := encodeECDSASignature(tpm2.TPMAlgSHA256, sig.r, sig.s); !bytes.Equal(got, want) {
			t.Fatalf("ECDSA signature\n got %x\nwant %x (tpm2.Marshal)", got, want)
		}
	}
	for _, sig := range rsaSigs {
		want := tpm2.Marshal(tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgRSASSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
				Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig},
			}),
		})
		if got := encodeRSASSASignature(tpm2.TPMAlgSHA256, sig); !bytes.Equal(got, want) {
			t.Fatalf("RSASSA signature\n got %x\nwant %x (tpm2.Marshal)", got, want)
		}
	}
}

// 500 quotes of each key type, of every bank, with 0 to 64 bytes of
// qualifying data: go-tpm decodes each attest and signature to what the
// node quoted and encodes it back to the same bytes.
func TestQuotesRoundTripGoTPM(t *testing.T) {
	r := mrand.New(mrand.NewPCG(5, 6))
	for _, key := range keyTypes {
		t.Run(key.String(), func(t *testing.T) {
			node, err := New(Opts{Key: key, Banks: quoteBanks})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 500 {
				bank := quoteBanks[i%len(quoteBanks)]
				secret := randBytes(r, r.IntN(MaxQualifyingData+1))
				qs, err := node.Quote(secret, bank)
				if err != nil {
					t.Fatal(err)
				}
				checkQuote(t, node, secret, bank, qs[0])
			}
		})
	}
}

func checkQuote(t *testing.T, node *Node, secret []byte, bank tpm2.TPMAlgID, q *pb.Quote) {
	t.Helper()
	attest, err := gotpmExact[tpm2.TPMSAttest](q.GetAttest())
	if err != nil {
		t.Fatalf("attest %x: %v", q.GetAttest(), err)
	}
	info, err := attest.Attested.Quote()
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.New()
	for i := range uint32(NumPCRs) {
		digest.Write(q.GetPcrs().GetValues()[i])
	}
	sel := info.PCRSelect.PCRSelections
	switch {
	case attest.Magic != tpm2.TPMGeneratedValue || attest.Type != tpm2.TPMSTAttestQuote:
		t.Errorf("magic %#x, type %#x", attest.Magic, attest.Type)
	case !bytes.Equal(attest.QualifiedSigner.Buffer, node.akSigner) || !bytes.Equal(attest.ExtraData.Buffer, secret):
		t.Errorf("signer %x, qualifying data %x; want %x, %x", attest.QualifiedSigner.Buffer, attest.ExtraData.Buffer, node.akSigner, secret)
	case attest.FirmwareVersion != firmwareVersion || !attest.ClockInfo.Safe:
		t.Errorf("firmware %#x, clock %+v", attest.FirmwareVersion, attest.ClockInfo)
	case len(sel) != 1 || sel[0].Hash != bank || !bytes.Equal(sel[0].PCRSelect, []byte{0xff, 0xff, 0xff}):
		t.Errorf("PCR selection %+v, want all of bank %v", sel, bank)
	case !bytes.Equal(info.PCRDigest.Buffer, digest.Sum(nil)):
		t.Errorf("PCR digest %x is not that of the quoted values", info.PCRDigest.Buffer)
	}
	sig, err := gotpmExact[tpm2.TPMTSignature](q.GetSignature())
	if err != nil {
		t.Fatalf("signature %x: %v", q.GetSignature(), err)
	}
	switch node.Key() {
	case ECC:
		ecc, err := sig.Signature.ECDSA()
		if err != nil || sig.SigAlg != tpm2.TPMAlgECDSA || ecc.Hash != tpm2.TPMAlgSHA256 ||
			len(ecc.SignatureR.Buffer) != 32 || len(ecc.SignatureS.Buffer) != 32 {
			t.Errorf("ECDSA signature %x (%v)", q.GetSignature(), err)
		}
	case RSA:
		rsa, err := sig.Signature.RSASSA()
		if err != nil || sig.SigAlg != tpm2.TPMAlgRSASSA || rsa.Hash != tpm2.TPMAlgSHA256 || len(rsa.Sig.Buffer) != 256 {
			t.Errorf("RSASSA signature %x (%v)", q.GetSignature(), err)
		}
	}
}

// String prints what the node reads of a public area, nil and
// empty buffers alike.
func (p *keyedHashPublic) String() string {
	return fmt.Sprintf("nameAlg %#04x attributes %#08x authPolicy %x scheme %#04x (%#04x, %#04x) unique %x",
		p.nameAlg, p.attributes, p.authPolicy, p.scheme, p.schemeHash, p.schemeKDF, p.unique)
}

// fromGoTPMPublic is what decodeKeyedHashPublic should read of pub, a
// keyed-hash object's public area as go-tpm decoded it.
func fromGoTPMPublic(t testing.TB, pub *tpm2.TPMTPublic) *keyedHashPublic {
	t.Helper()
	parms, err := pub.Parameters.KeyedHashDetail()
	if err != nil {
		t.Fatal(err)
	}
	unique, err := pub.Unique.KeyedHash()
	if err != nil {
		t.Fatal(err)
	}
	p := &keyedHashPublic{nameAlg: pub.NameAlg, attributes: binary.BigEndian.Uint32(tpm2.Marshal(pub.ObjectAttributes)),
		authPolicy: pub.AuthPolicy.Buffer, scheme: parms.Scheme.Scheme, unique: unique.Buffer}
	switch p.scheme {
	case tpm2.TPMAlgHMAC:
		d, err := parms.Scheme.Details.HMAC()
		if err != nil {
			t.Fatal(err)
		}
		p.schemeHash = d.HashAlg
	case tpm2.TPMAlgXOR:
		d, err := parms.Scheme.Details.XOR()
		if err != nil {
			t.Fatal(err)
		}
		p.schemeHash, p.schemeKDF = d.HashAlg, d.KDF
	}
	return p
}

// randomPublic is a random keyed-hash public area, encoded by go-tpm.
func randomPublic(t testing.TB, r *mrand.Rand) []byte {
	t.Helper()
	attrs, err := tpm2.Unmarshal[tpm2.TPMAObject](binary.BigEndian.AppendUint32(nil, pick1(r, 0, 1<<6, 1<<7, r.Uint32())))
	if err != nil {
		t.Fatal(err)
	}
	scheme := tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}
	switch r.IntN(3) {
	case 1:
		scheme = tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgHMAC, Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC,
			&tpm2.TPMSSchemeHMAC{HashAlg: pick1(r, tpm2.TPMAlgSHA256, tpm2.TPMAlgID(r.Uint32()))})}
	case 2:
		scheme = tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgXOR, Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgXOR,
			&tpm2.TPMSSchemeXOR{HashAlg: pick1(r, tpm2.TPMAlgSHA256, tpm2.TPMAlgID(r.Uint32())), KDF: tpm2.TPMAlgID(r.Uint32())})}
	}
	return tpm2.Marshal(tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          pick1(r, tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512, tpm2.TPMAlgID(r.Uint32())),
		ObjectAttributes: *attrs,
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: randBytes(r, pick1(r, 0, 32, r.IntN(100)))},
		Parameters:       tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: scheme}),
		Unique:           tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: randBytes(r, pick1(r, 0, 32, r.IntN(100)))}),
	})
}

// String prints a decoded TPMT_SENSITIVE, nil and empty
// buffers alike.
func (s *objectSensitive) String() string {
	return fmt.Sprintf("type %#04x authValue %x seedValue %x sensitive %x", s.sensitiveType, s.authValue, s.seedValue, s.sensitive)
}

// fromGoTPMSensitive is what decodeSensitive should read of sens.
func fromGoTPMSensitive(t testing.TB, sens *tpm2.TPMTSensitive) *objectSensitive {
	t.Helper()
	s := &objectSensitive{sensitiveType: sens.SensitiveType, authValue: sens.AuthValue.Buffer, seedValue: sens.SeedValue.Buffer}
	buffer := func(v *tpm2.TPM2BData, err error) []byte {
		if err != nil {
			t.Fatal(err)
		}
		return v.Buffer
	}
	switch sens.SensitiveType {
	case tpm2.TPMAlgRSA:
		v, err := sens.Sensitive.RSA()
		s.sensitive = buffer((*tpm2.TPM2BData)(v), err)
	case tpm2.TPMAlgECC:
		v, err := sens.Sensitive.ECC()
		s.sensitive = buffer((*tpm2.TPM2BData)(v), err)
	case tpm2.TPMAlgKeyedHash:
		v, err := sens.Sensitive.Bits()
		s.sensitive = buffer((*tpm2.TPM2BData)(v), err)
	case tpm2.TPMAlgSymCipher:
		v, err := sens.Sensitive.Sym()
		s.sensitive = buffer((*tpm2.TPM2BData)(v), err)
	}
	return s
}

// randomSensitive is a random TPMT_SENSITIVE of any type, encoded by
// go-tpm.
func randomSensitive(r *mrand.Rand) []byte {
	body := randBytes(r, pick1(r, 0, 32, r.IntN(300)))
	s := tpm2.TPMTSensitive{
		SensitiveType: pick1(r, tpm2.TPMAlgKeyedHash, tpm2.TPMAlgRSA, tpm2.TPMAlgECC, tpm2.TPMAlgSymCipher, tpm2.TPMAlgNull),
		AuthValue:     tpm2.TPM2BAuth{Buffer: randBytes(r, pick1(r, 0, r.IntN(64)))},
		SeedValue:     tpm2.TPM2BDigest{Buffer: randBytes(r, pick1(r, 0, 32, r.IntN(64)))},
	}
	switch s.SensitiveType {
	case tpm2.TPMAlgKeyedHash:
		s.Sensitive = tpm2.NewTPMUSensitiveComposite(s.SensitiveType, &tpm2.TPM2BSensitiveData{Buffer: body})
	case tpm2.TPMAlgRSA:
		s.Sensitive = tpm2.NewTPMUSensitiveComposite(s.SensitiveType, &tpm2.TPM2BPrivateKeyRSA{Buffer: body})
	case tpm2.TPMAlgECC:
		s.Sensitive = tpm2.NewTPMUSensitiveComposite(s.SensitiveType, &tpm2.TPM2BECCParameter{Buffer: body})
	case tpm2.TPMAlgSymCipher:
		s.Sensitive = tpm2.NewTPMUSensitiveComposite(s.SensitiveType, &tpm2.TPM2BSymKey{Buffer: body})
	}
	return tpm2.Marshal(s)
}

// randomECCPoint is a random TPMS_ECC_POINT, encoded by go-tpm.
func randomECCPoint(r *mrand.Rand) []byte {
	return tpm2.Marshal(tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: randBytes(r, pick1(r, 0, 31, 32, 33, r.IntN(80)))},
		Y: tpm2.TPM2BECCParameter{Buffer: randBytes(r, pick1(r, 0, 31, 32, 33, r.IntN(80)))},
	})
}

// agreement pairs one of the node's decoders with go-tpm's reading of the
// same structure (gotpmExact), each printing what it read.
type agreement struct {
	decode func(b []byte) (string, error)
	// gotpm returns errNotKeyedHash for a structure go-tpm reads but the
	// node refuses by design.
	gotpm func(t testing.TB, b []byte) (string, error)
}

// printed is decode with its result printed.
func printed[T fmt.Stringer](decode func([]byte) (T, error)) func([]byte) (string, error) {
	return func(b []byte) (string, error) {
		v, err := decode(b)
		if err != nil {
			return "", err
		}
		return v.String(), nil
	}
}

var (
	publicAgreement = agreement{
		decode: printed(decodeKeyedHashPublic),
		gotpm: func(t testing.TB, b []byte) (string, error) {
			p, err := gotpmExact[tpm2.TPMTPublic](b)
			switch {
			case err != nil:
				return "", err
			case p.Type != tpm2.TPMAlgKeyedHash:
				return "", errNotKeyedHash
			}
			return fromGoTPMPublic(t, p).String(), nil
		},
	}
	sensitiveAgreement = agreement{
		decode: printed(decodeSensitive),
		gotpm: func(t testing.TB, b []byte) (string, error) {
			s, err := gotpmExact[tpm2.TPMTSensitive](b)
			if err != nil {
				return "", err
			}
			return fromGoTPMSensitive(t, s).String(), nil
		},
	}
	pointAgreement = agreement{
		decode: func(b []byte) (string, error) {
			x, y, err := decodeECCPoint(b)
			return fmt.Sprintf("x %x y %x", x, y), err
		},
		gotpm: func(_ testing.TB, b []byte) (string, error) {
			p, err := gotpmExact[tpm2.TPMSECCPoint](b)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("x %x y %x", p.X.Buffer, p.Y.Buffer), nil
		},
	}
)

// check fails t unless the node's decoder accepts b exactly when go-tpm
// does, reading the same values, and refuses it with errNotTPM or, for a
// structure refused by design, errNotKeyedHash. It reports whether b was
// accepted.
func (a agreement) check(t testing.TB, b []byte) bool {
	t.Helper()
	got, err := a.decode(b)
	want, gotpmErr := a.gotpm(t, b)
	switch {
	case errors.Is(gotpmErr, errNotKeyedHash):
		if !errors.Is(err, errNotKeyedHash) {
			t.Fatalf("%x: %v, want %v", b, err, errNotKeyedHash)
		}
	case (err == nil) != (gotpmErr == nil):
		t.Fatalf("%x: the node's decoder: %v, go-tpm: %v", b, err, gotpmErr)
	case err != nil:
		if !errors.Is(err, errNotTPM) && !errors.Is(err, errNotKeyedHash) {
			t.Fatalf("%x: %v is neither %v nor %v", b, err, errNotTPM, errNotKeyedHash)
		}
	case got != want:
		t.Fatalf("%x:\n got %s\nwant %s (go-tpm)", b, got, want)
	}
	return err == nil
}

// Random structures go-tpm encodes decode to what go-tpm decodes of them.
func TestDecodersRoundTripGoTPM(t *testing.T) {
	r := mrand.New(mrand.NewPCG(7, 8))
	for range 1000 {
		for _, enc := range []struct {
			a agreement
			b []byte
		}{
			{publicAgreement, randomPublic(t, r)},
			{sensitiveAgreement, randomSensitive(r)},
			{pointAgreement, randomECCPoint(r)},
		} {
			if !enc.a.check(t, enc.b) {
				t.Fatalf("%x refused", enc.b)
			}
		}
	}
}

// sealedPublicArea is the public area of a credential sealing makes for
// node without PCRs.
func sealedPublicArea(t *testing.T, node *Node) []byte {
	t.Helper()
	cred := seal(t, node.EKPublic(), []byte("payload"), nil)
	blob, err := sealing.BlobFromProto(cred.GetBlob())
	if err != nil {
		t.Fatal(err)
	}
	return blob.GetPublicArea()
}

// Each malformed structure is refused by the node's decoder and by go-tpm
// alike, with errNotTPM (errNotKeyedHash for another object type, which
// go-tpm reads).
func TestDecodersRefuse(t *testing.T) {
	r := mrand.New(mrand.NewPCG(9, 10))
	public := sealedPublicArea(t, newNode(t, ECC))
	sensitive := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: randBytes(r, 32)},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: randBytes(r, 32)}),
	})
	point := tpm2.Marshal(tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: randBytes(r, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: randBytes(r, 32)}})
	rsaPublic := newNode(t, RSA).ChallengeRequest().GetAkPublic()

	// edit returns a copy of b with f applied.
	edit := func(b []byte, f func([]byte) []byte) []byte { return f(bytes.Clone(b)) }
	put16 := func(off int, v uint16) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint16(b[off:], v); return b }
	}
	// Offsets in the sealed public: type 0, nameAlg 2, attributes 4,
	// authPolicy 8 (empty), scheme 10, unique 12.
	tests := []struct {
		name    string
		a       agreement
		in      []byte
		wantErr error
	}{
		{"public: trailing byte", publicAgreement, append(bytes.Clone(public), 0), errNotTPM},
		{"public: empty", publicAgreement, nil, errNotTPM},
		{"public: type only", publicAgreement, public[:2], errNotTPM},
		{"public: unique truncated", publicAgreement, public[:len(public)-1], errNotTPM},
		{"public: unique size one more", publicAgreement, edit(public, put16(12, 33)), errNotTPM},
		{"public: unique size one less", publicAgreement, edit(public, put16(12, 31)), errNotTPM},
		{"public: authPolicy size beyond the end", publicAgreement, edit(public, put16(8, 0xffff)), errNotTPM},
		{"public: unknown object type", publicAgreement, edit(public, put16(0, 0x7777)), errNotTPM},
		{"public: TPM_ALG_ERROR type", publicAgreement, edit(public, put16(0, 0)), errNotTPM},
		{"public: unknown keyed-hash scheme", publicAgreement, edit(public, put16(10, uint16(tpm2.TPMAlgECDSA))), errNotTPM},
		{"public: zero keyed-hash scheme", publicAgreement, edit(public, put16(10, 0)), errNotTPM},
		{"public: HMAC scheme tag in a null-scheme area", publicAgreement, edit(public, put16(10, uint16(tpm2.TPMAlgHMAC))), errNotTPM},
		{"public: RSA key", publicAgreement, rsaPublic, errNotKeyedHash},
		{"sensitive: trailing byte", sensitiveAgreement, append(bytes.Clone(sensitive), 0), errNotTPM},
		{"sensitive: truncated", sensitiveAgreement, sensitive[:len(sensitive)-1], errNotTPM},
		{"sensitive: no sensitive data", sensitiveAgreement, sensitive[:len(sensitive)-34], errNotTPM},
		{"sensitive: data size one more", sensitiveAgreement, edit(sensitive, put16(len(sensitive)-34, 33)), errNotTPM},
		{"sensitive: seed size one less", sensitiveAgreement, edit(sensitive, put16(4, 31)), errNotTPM},
		{"sensitive: unknown type", sensitiveAgreement, edit(sensitive, put16(0, 0x7777)), errNotTPM},
		{"point: trailing byte", pointAgreement, append(bytes.Clone(point), 0), errNotTPM},
		{"point: no Y", pointAgreement, point[:34], errNotTPM},
		{"point: Y truncated", pointAgreement, point[:len(point)-1], errNotTPM},
		{"point: X size one more", pointAgreement, edit(point, put16(0, 33)), errNotTPM},
		{"point: X size one less", pointAgreement, edit(point, put16(0, 31)), errNotTPM},
		{"point: one size byte", pointAgreement, []byte{0}, errNotTPM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.a.check(t, tt.in) {
				t.Fatalf("%x accepted", tt.in)
			}
			_, err := tt.a.decode(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("decoding %x: %v, want %v", tt.in, err, tt.wantErr)
			}
		})
	}
}

// Malformed structures in an import blob or an encrypted seed are refused
// by Open and Activate, with nothing released.
func TestOpenActivateRefuseMalformed(t *testing.T) {
	node := newNode(t, ECC)
	payload := []byte("payload")
	rewrap := func(field []byte, f func([]byte) []byte) []byte {
		return tpmcred.AppendTPM2B(nil, f(bytes.Clone(field[2:])))
	}
	trailing := func(b []byte) []byte { return append(b, 0) }
	t.Run("public area with a trailing byte", func(t *testing.T) {
		cred := seal(t, node.EKPublic(), payload, nil)
		cred.Blob.PublicArea = rewrap(cred.Blob.PublicArea, trailing)
		got, err := node.Open(cred)
		if !errors.Is(err, sealing.ErrImport) || !errors.Is(err, errNotTPM) || got != nil {
			t.Errorf("Open: %x, %v; want %v and %v", got, err, sealing.ErrImport, errNotTPM)
		}
	})
	t.Run("public area of the EK", func(t *testing.T) {
		cred := seal(t, node.EKPublic(), payload, nil)
		cred.Blob.PublicArea = tpmcred.AppendTPM2B(nil, node.ChallengeRequest().GetEkPublic())
		got, err := node.Open(cred)
		if !errors.Is(err, sealing.ErrImport) || err == nil || got != nil ||
			err.Error() != sealing.ErrImport.Error()+": public area: "+errNotKeyedHash.Error() {
			t.Errorf("Open: %x, %v", got, err)
		}
	})
	t.Run("encrypted seed with a trailing byte", func(t *testing.T) {
		cred := seal(t, node.EKPublic(), payload, nil)
		cred.Blob.EncryptedSeed = rewrap(cred.Blob.EncryptedSeed, trailing)
		got, err := node.Open(cred)
		if !errors.Is(err, sealing.ErrImport) || !errors.Is(err, errNotTPM) || got != nil {
			t.Errorf("Open: %x, %v; want %v and %v", got, err, sealing.ErrImport, errNotTPM)
		}
	})
	t.Run("credential's encrypted secret with X one byte short", func(t *testing.T) {
		resp := makeCredential(t, node.EKPublic(), node.AKName(), random(t, 32))
		resp.EncryptedSecret = rewrap(resp.EncryptedSecret, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b, 31)
			return b
		})
		got, err := node.Activate(resp)
		if !errors.Is(err, errNotTPM) || got != nil {
			t.Errorf("Activate: %x, %v; want %v", got, err, errNotTPM)
		}
	})
	// The unmodified credential still opens: the refusals consumed nothing.
	cred := seal(t, node.EKPublic(), payload, nil)
	if got, err := node.Open(cred); err != nil || !bytes.Equal(got, payload) {
		t.Errorf("Open after refusals: %x, %v", got, err)
	}
}

// FuzzDecodeKeyedHashPublic: decodeKeyedHashPublic accepts exactly the
// keyed-hash public areas go-tpm decodes and encodes back unchanged, and
// reads the same values.
func FuzzDecodeKeyedHashPublic(f *testing.F) {
	r := mrand.New(mrand.NewPCG(11, 12))
	for range 20 {
		f.Add(randomPublic(f, r))
	}
	f.Add(newNode(f, RSA).ChallengeRequest().GetAkPublic())
	f.Fuzz(func(t *testing.T, b []byte) { publicAgreement.check(t, b) })
}

// FuzzDecodeSensitive: decodeSensitive accepts exactly the TPMT_SENSITIVE
// go-tpm decodes and encodes back unchanged, and reads the same values.
func FuzzDecodeSensitive(f *testing.F) {
	r := mrand.New(mrand.NewPCG(13, 14))
	for range 20 {
		f.Add(randomSensitive(r))
	}
	f.Fuzz(func(t *testing.T, b []byte) { sensitiveAgreement.check(t, b) })
}

// FuzzDecodeECCPoint: decodeECCPoint accepts exactly the TPMS_ECC_POINT
// go-tpm decodes and encodes back unchanged, and reads the same values.
func FuzzDecodeECCPoint(f *testing.F) {
	r := mrand.New(mrand.NewPCG(15, 16))
	for range 20 {
		f.Add(randomECCPoint(r))
	}
	f.Fuzz(func(t *testing.T, b []byte) { pointAgreement.check(t, b) })
}

// What the node reads of a sealed object decides as TPM2_Load and
// TPM2_Unseal do: objects built with go-tpm's attribute names, decoded by
// the node's decoders, are opened or refused with the error promised.
func TestSealedObjectChecks(t *testing.T) {
	seed, data := bytes.Repeat([]byte{1}, 32), []byte("content key")
	unique := sha256.Sum256(append(bytes.Clone(seed), data...))
	sealed := tpm2.TPMAObject{UserWithAuth: true}
	tests := []struct {
		name      string
		attrs     tpm2.TPMAObject
		unique    []byte
		sensType  tpm2.TPMAlgID
		authValue []byte
		wantErr   string
	}{
		{name: "sealed data object", attrs: sealed},
		{name: "other attributes set", attrs: tpm2.TPMAObject{UserWithAuth: true, FixedTPM: true, FixedParent: true, AdminWithPolicy: true, NoDA: true}},
		{name: "signing key", attrs: tpm2.TPMAObject{UserWithAuth: true, SignEncrypt: true}, wantErr: "object is not a sealed data object"},
		{name: "decryption key", attrs: tpm2.TPMAObject{UserWithAuth: true, Decrypt: true}, wantErr: "object is not a sealed data object"},
		{name: "policy only", attrs: tpm2.TPMAObject{AdminWithPolicy: true}, wantErr: "object needs a policy session and the credential names no PCRs"},
		{name: "password", attrs: sealed, authValue: []byte("pw"), wantErr: "object has a password"},
		{name: "RSA sensitive area", attrs: sealed, sensType: tpm2.TPMAlgRSA, wantErr: "sensitive area type does not match the public area"},
		{name: "unique of other data", attrs: sealed, unique: make([]byte, 32), wantErr: "public area is not bound to the sensitive area"},
	}
	node := newNode(t, ECC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, typ := unique[:], tpm2.TPMAlgKeyedHash
			if tt.unique != nil {
				u = tt.unique
			}
			if tt.sensType != 0 {
				typ = tt.sensType
			}
			pub, err := decodeKeyedHashPublic(tpm2.Marshal(tpm2.TPMTPublic{
				Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: tt.attrs,
				Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{}),
				Unique:     tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: u}),
			}))
			if err != nil {
				t.Fatal(err)
			}
			composite := tpm2.NewTPMUSensitiveComposite(typ, &tpm2.TPM2BSensitiveData{Buffer: data})
			if typ == tpm2.TPMAlgRSA {
				composite = tpm2.NewTPMUSensitiveComposite(typ, &tpm2.TPM2BPrivateKeyRSA{Buffer: data})
			}
			sens, err := decodeSensitive(tpm2.Marshal(tpm2.TPMTSensitive{
				SensitiveType: typ, AuthValue: tpm2.TPM2BAuth{Buffer: tt.authValue}, SeedValue: tpm2.TPM2BDigest{Buffer: seed},
				Sensitive: composite,
			}))
			if err != nil {
				t.Fatal(err)
			}
			got, err := sealedData(pub, sens)
			if err == nil {
				err = node.authorizeUnseal(pub, sens, nil)
			}
			switch {
			case tt.wantErr == "" && (err != nil || !bytes.Equal(got, data)):
				t.Errorf("got %q, %v; want %q", got, err, data)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Errorf("got %v, want %q", err, tt.wantErr)
			}
		})
	}
}
