package verify

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Decoding of the TPM structures a node presents (TPMT_PUBLIC, TPMS_ATTEST,
// TPMT_SIGNATURE) without reflection: go-tpm's generic Unmarshal and
// Marshal walk struct tags on every call, which made them the largest cost
// of verifying a node. Each decoder reads every byte of its structure, in
// the TPM 2.0 Part 2 layout and with go-tpm's union members, and refuses
// what go-tpm would refuse, trailing bytes (errTrailingBytes) and the
// encodings go-tpm reads leniently (errNotCanonical), so that what it
// accepts is exactly what tpm2.Marshal encodes the result to; the tests
// check that against go-tpm.

// maxPCRSelections bounds a TPML_PCR_SELECTION's count (TPM 2.0 Part 2's
// HASH_COUNT on any TPM is far lower).
const maxPCRSelections = 16

var errShort = errors.New("ran out of data")

// wire reads TPM big-endian fields from b; the first failure sticks.
// A field go-tpm would read leniently marks the encoding not canonical,
// which end reports only if nothing else failed.
type wire struct {
	b            []byte
	err          error
	nonCanonical bool
}

func (w *wire) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

func (w *wire) take(n int) []byte {
	if w.err != nil {
		return nil
	}
	if len(w.b) < n {
		w.fail(errShort)
		return nil
	}
	v := w.b[:n:n]
	w.b = w.b[n:]
	return v
}

func (w *wire) u8() uint8 {
	if v := w.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (w *wire) u16() uint16 {
	if v := w.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (w *wire) u32() uint32 {
	if v := w.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (w *wire) u64() uint64 {
	if v := w.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (w *wire) alg() tpm2.TPMAlgID { return tpm2.TPMAlgID(w.u16()) }

// sized reads a TPM2B: a 16-bit size and that many bytes. The bytes alias
// the input.
func (w *wire) sized() []byte {
	n := w.u16()
	return w.take(int(n))
}

// end reports the first failure, else errNotCanonical, else
// errTrailingBytes if bytes remain.
func (w *wire) end() error {
	switch {
	case w.err != nil:
		return w.err
	case w.nonCanonical:
		return errNotCanonical
	case len(w.b) > 0:
		return errTrailingBytes
	}
	return nil
}

func unsupported(what string, tag tpm2.TPMAlgID) error {
	return fmt.Errorf("no %s for tag 0x%04x", what, uint16(tag))
}

// decodePublic decodes b as exactly one TPMT_PUBLIC.
func decodePublic(b []byte) (*tpm2.TPMTPublic, error) {
	w := &wire{b: b}
	pub := &tpm2.TPMTPublic{Type: w.alg(), NameAlg: w.alg()}
	pub.ObjectAttributes = objectAttributes(w.u32())
	pub.AuthPolicy = tpm2.TPM2BDigest{Buffer: w.sized()}
	switch pub.Type {
	case tpm2.TPMAlgNull: // no parameters, no unique: go-tpm reads it so
	case tpm2.TPMAlgRSA:
		p := &tpm2.TPMSRSAParms{Symmetric: w.symDefObject()}
		p.Scheme = tpm2.TPMTRSAScheme{Scheme: w.alg()}
		p.Scheme.Details = w.asymScheme(p.Scheme.Scheme)
		p.KeyBits = tpm2.TPMKeyBits(w.u16())
		p.Exponent = w.u32()
		pub.Parameters = tpm2.NewTPMUPublicParms(pub.Type, p)
		pub.Unique = tpm2.NewTPMUPublicID(pub.Type, &tpm2.TPM2BPublicKeyRSA{Buffer: w.sized()})
	case tpm2.TPMAlgECC:
		p := &tpm2.TPMSECCParms{Symmetric: w.symDefObject()}
		p.Scheme = tpm2.TPMTECCScheme{Scheme: w.alg()}
		p.Scheme.Details = w.asymScheme(p.Scheme.Scheme)
		p.CurveID = tpm2.TPMECCCurve(w.u16())
		p.KDF = tpm2.TPMTKDFScheme{Scheme: w.alg()}
		p.KDF.Details = w.kdfScheme(p.KDF.Scheme)
		pub.Parameters = tpm2.NewTPMUPublicParms(pub.Type, p)
		pt := &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: w.sized()}, Y: tpm2.TPM2BECCParameter{Buffer: w.sized()}}
		pub.Unique = tpm2.NewTPMUPublicID(pub.Type, pt)
	case tpm2.TPMAlgKeyedHash:
		p := &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: w.alg()}}
		p.Scheme.Details = w.keyedHashScheme(p.Scheme.Scheme)
		pub.Parameters = tpm2.NewTPMUPublicParms(pub.Type, p)
		pub.Unique = tpm2.NewTPMUPublicID(pub.Type, &tpm2.TPM2BDigest{Buffer: w.sized()})
	case tpm2.TPMAlgSymCipher:
		p := &tpm2.TPMSSymCipherParms{Sym: w.symDefObject()}
		pub.Parameters = tpm2.NewTPMUPublicParms(pub.Type, p)
		pub.Unique = tpm2.NewTPMUPublicID(pub.Type, &tpm2.TPM2BDigest{Buffer: w.sized()})
	default:
		w.fail(unsupported("public parameters", pub.Type))
	}
	if err := w.end(); err != nil {
		return nil, err
	}
	return pub, nil
}

// objectAttributeBits are the TPMA_OBJECT bits go-tpm has fields for;
// it keeps the others (reserved) aside, and so does objectAttributes.
const objectAttributeBits = 1<<1 | 1<<2 | 1<<4 | 1<<5 | 1<<6 | 1<<7 | 1<<8 | 1<<10 | 1<<11 | 1<<16 | 1<<17 | 1<<18 | 1<<19

// objectAttributes spreads a TPMA_OBJECT over go-tpm's bit fields.
func objectAttributes(v uint32) tpm2.TPMAObject {
	bit := func(n uint) bool { return v&(1<<n) != 0 }
	a := tpm2.TPMAObject{
		FixedTPM:             bit(1),
		STClear:              bit(2),
		FixedParent:          bit(4),
		SensitiveDataOrigin:  bit(5),
		UserWithAuth:         bit(6),
		AdminWithPolicy:      bit(7),
		FirmwareLimited:      bit(8),
		NoDA:                 bit(10),
		EncryptedDuplication: bit(11),
		Restricted:           bit(16),
		Decrypt:              bit(17),
		SignEncrypt:          bit(18),
		X509Sign:             bit(19),
	}
	for n := range 32 {
		if reserved := v &^ objectAttributeBits; reserved&(1<<n) != 0 {
			a.SetReservedBit(n, true)
		}
	}
	return a
}

// symDefObject reads a TPMT_SYM_DEF_OBJECT. go-tpm's TPMU_SYM_DETAILS has
// members for AES and XOR only: it neither reads nor writes a TDES, SM4 or
// Camellia definition, and neither does this.
func (w *wire) symDefObject() tpm2.TPMTSymDefObject {
	s := tpm2.TPMTSymDefObject{Algorithm: w.alg()}
	switch s.Algorithm {
	case tpm2.TPMAlgNull:
	case tpm2.TPMAlgAES:
		s.KeyBits = tpm2.NewTPMUSymKeyBits(s.Algorithm, tpm2.TPMKeyBits(w.u16()))
		s.Mode = tpm2.NewTPMUSymMode(s.Algorithm, w.alg())
	case tpm2.TPMAlgXOR:
		s.KeyBits = tpm2.NewTPMUSymKeyBits(s.Algorithm, w.alg())
		s.Mode = tpm2.NewTPMUSymMode(s.Algorithm, tpm2.TPMSEmpty{})
	default:
		w.fail(unsupported("symmetric algorithm", s.Algorithm))
	}
	return s
}

// asymScheme reads the details of an RSA or ECC scheme (TPMU_ASYM_SCHEME).
func (w *wire) asymScheme(scheme tpm2.TPMAlgID) tpm2.TPMUAsymScheme {
	var u tpm2.TPMUAsymScheme
	switch scheme {
	case tpm2.TPMAlgNull:
	case tpm2.TPMAlgRSASSA:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeRSASSA{HashAlg: w.alg()})
	case tpm2.TPMAlgRSAES:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSEncSchemeRSAES{})
	case tpm2.TPMAlgRSAPSS:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: w.alg()})
	case tpm2.TPMAlgOAEP:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSEncSchemeOAEP{HashAlg: w.alg()})
	case tpm2.TPMAlgECDSA:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeECDSA{HashAlg: w.alg()})
	case tpm2.TPMAlgECDH:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSKeySchemeECDH{HashAlg: w.alg()})
	case tpm2.TPMAlgECMQV:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSKeySchemeECMQV{HashAlg: w.alg()})
	case tpm2.TPMAlgECDAA:
		u = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSchemeECDAA{HashAlg: w.alg(), Count: w.u16()})
	default:
		w.fail(unsupported("asymmetric scheme", scheme))
	}
	return u
}

// kdfScheme reads the details of a TPMT_KDF_SCHEME.
func (w *wire) kdfScheme(scheme tpm2.TPMAlgID) tpm2.TPMUKDFScheme {
	var u tpm2.TPMUKDFScheme
	switch scheme {
	case tpm2.TPMAlgNull:
	case tpm2.TPMAlgMGF1:
		u = tpm2.NewTPMUKDFScheme(scheme, &tpm2.TPMSKDFSchemeMGF1{HashAlg: w.alg()})
	case tpm2.TPMAlgECDH:
		u = tpm2.NewTPMUKDFScheme(scheme, &tpm2.TPMSKDFSchemeECDH{HashAlg: w.alg()})
	case tpm2.TPMAlgKDF1SP80056A:
		u = tpm2.NewTPMUKDFScheme(scheme, &tpm2.TPMSKDFSchemeKDF1SP80056A{HashAlg: w.alg()})
	case tpm2.TPMAlgKDF2:
		u = tpm2.NewTPMUKDFScheme(scheme, &tpm2.TPMSKDFSchemeKDF2{HashAlg: w.alg()})
	case tpm2.TPMAlgKDF1SP800108:
		u = tpm2.NewTPMUKDFScheme(scheme, &tpm2.TPMSKDFSchemeKDF1SP800108{HashAlg: w.alg()})
	default:
		w.fail(unsupported("KDF scheme", scheme))
	}
	return u
}

// keyedHashScheme reads the details of a TPMT_KEYEDHASH_SCHEME.
func (w *wire) keyedHashScheme(scheme tpm2.TPMAlgID) tpm2.TPMUSchemeKeyedHash {
	var u tpm2.TPMUSchemeKeyedHash
	switch scheme {
	case tpm2.TPMAlgNull:
	case tpm2.TPMAlgHMAC:
		u = tpm2.NewTPMUSchemeKeyedHash(scheme, &tpm2.TPMSSchemeHMAC{HashAlg: w.alg()})
	case tpm2.TPMAlgXOR:
		u = tpm2.NewTPMUSchemeKeyedHash(scheme, &tpm2.TPMSSchemeXOR{HashAlg: w.alg(), KDF: w.alg()})
	default:
		w.fail(unsupported("keyed hash scheme", scheme))
	}
	return u
}

// attestHeader is what every TPMS_ATTEST says before its attested union.
type attestHeader struct {
	qualifiedSigner []byte
	extraData       []byte
	clock           tpm2.TPMSClockInfo
	firmware        uint64
}

// quoteAttest is what a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE says.
type quoteAttest struct {
	attestHeader
	selections []tpm2.TPMSPCRSelection
	pcrDigest  []byte
}

// errNotQuote is decodeQuoteAttest's answer to a TPMS_ATTEST of another
// type than a quote, whose body it does not read.
var errNotQuote = errors.New("attestation is not a quote")

// decodeQuoteAttest decodes b as exactly one TPMS_ATTEST of type QUOTE,
// magic included.
func decodeQuoteAttest(b []byte) (*quoteAttest, error) {
	w := &wire{b: b}
	a := &quoteAttest{}
	if err := w.attestHeader(tpm2.TPMSTAttestQuote, errNotQuote, &a.attestHeader); err != nil {
		return nil, err
	}
	n := w.u32()
	if w.err == nil && n > maxPCRSelections {
		return nil, fmt.Errorf("%d PCR selections", n)
	}
	for range n {
		s := tpm2.TPMSPCRSelection{Hash: w.alg()}
		size := w.u8()
		s.PCRSelect = w.take(int(size))
		if w.err != nil {
			break
		}
		a.selections = append(a.selections, s)
	}
	a.pcrDigest = w.sized()
	if err := w.end(); err != nil {
		return nil, err
	}
	return a, nil
}

// attestHeader reads a TPMS_ATTEST up to its attested union into a:
// magic, type (notType if it is not typ), qualifiedSigner, extraData,
// clockInfo and firmwareVersion.
func (w *wire) attestHeader(typ tpm2.TPMST, notType error, a *attestHeader) error {
	magic := w.u32()
	got := tpm2.TPMST(w.u16())
	if w.err == nil && magic != uint32(tpm2.TPMGeneratedValue) {
		return fmt.Errorf("magic 0x%08x is not TPM_GENERATED", magic)
	}
	if w.err == nil && got != typ {
		return notType
	}
	a.qualifiedSigner, a.extraData = w.sized(), w.sized()
	a.clock.Clock = w.u64()
	a.clock.ResetCount = w.u32()
	a.clock.RestartCount = w.u32()
	switch safe := w.u8(); safe {
	case 0, 1:
		a.clock.Safe = safe == 1
	default:
		w.nonCanonical = true // go-tpm reads any non-zero byte as yes
	}
	a.firmware = w.u64()
	return nil
}

// certifyAttest is what a TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY says:
// the header fields and TPMS_CERTIFY_INFO.
type certifyAttest struct {
	attestHeader
	name, qualifiedName []byte
}

// errNotCertify is decodeCertifyAttest's answer to a TPMS_ATTEST of
// another type than a certify.
var errNotCertify = errors.New("attestation is not a certify")

// decodeCertifyAttest decodes b as exactly one TPMS_ATTEST of type
// CERTIFY, magic included.
func decodeCertifyAttest(b []byte) (*certifyAttest, error) {
	w := &wire{b: b}
	a := &certifyAttest{}
	if err := w.attestHeader(tpm2.TPMSTAttestCertify, errNotCertify, &a.attestHeader); err != nil {
		return nil, err
	}
	a.name, a.qualifiedName = w.sized(), w.sized()
	if err := w.end(); err != nil {
		return nil, err
	}
	return a, nil
}

// signature is a decoded TPMT_SIGNATURE: RSA ones carry sig, ECC ones r
// and s.
type signature struct {
	alg, hash tpm2.TPMAlgID
	sig, r, s []byte
}

// decodeSignature decodes b as exactly one TPMT_SIGNATURE.
func decodeSignature(b []byte) (*signature, error) {
	w := &wire{b: b}
	s := &signature{alg: w.alg()}
	switch s.alg {
	case tpm2.TPMAlgNull:
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		s.hash, s.sig = w.alg(), w.sized()
	case tpm2.TPMAlgECDSA, tpm2.TPMAlgECDAA:
		s.hash, s.r, s.s = w.alg(), w.sized(), w.sized()
	case tpm2.TPMAlgHMAC:
		s.hash = w.alg()
		if w.err != nil {
			break
		}
		h, err := s.hash.Hash()
		if err != nil {
			w.fail(err)
			break
		}
		s.sig = w.take(h.Size())
	default:
		w.fail(unsupported("signature", s.alg))
	}
	if err := w.end(); err != nil {
		return nil, err
	}
	return s, nil
}

// objectName is the TPM name of the object whose public area is pub,
// decoded from public by decodePublic: nameAlg || H_nameAlg(public).
func objectName(pub *tpm2.TPMTPublic, public []byte) ([]byte, error) {
	h, err := pub.NameAlg.Hash()
	if err != nil {
		return nil, err
	}
	name := make([]byte, 0, 2+h.Size())
	return appendDigest(binary.BigEndian.AppendUint16(name, uint16(pub.NameAlg)), h, public), nil
}
