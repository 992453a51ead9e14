package softtpm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"golang.org/x/crypto/cryptobyte"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// The structures a node writes on every Quote and reads on every Activate
// and Open, encoded and decoded by hand: go-tpm's reflection-based
// tpm2.Marshal and tpm2.Unmarshal cost about a tenth of a load generator's
// CPU. The encoders write what tpm2.Marshal writes, byte for byte; the
// decoders accept exactly the canonical encodings that tpm2.Unmarshal reads
// and tpm2.Marshal writes back unchanged (one structure, no trailing
// bytes), for the shapes a node supports, and refuse the rest.
// tpmwire_test.go holds both to go-tpm.

// quoteAttest is what a quote's TPMS_ATTEST carries (type
// TPM_ST_ATTEST_QUOTE, magic TPM_GENERATED_VALUE, one PCR selection).
type quoteAttest struct {
	signer    []byte // qualifiedSigner: TPM2B_NAME body
	extraData []byte // TPM2B_DATA body, at most MaxQualifyingData bytes
	clock     tpm2.TPMSClockInfo
	firmware  uint64
	bank      tpm2.TPMAlgID
	pcrSelect []byte // sizeofSelect is its length
	pcrDigest []byte
}

// encode returns the TPMS_ATTEST.
func (a *quoteAttest) encode() []byte {
	b := make([]byte, 0, 4+2+2+len(a.signer)+2+len(a.extraData)+17+8+4+3+len(a.pcrSelect)+2+len(a.pcrDigest))
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMGeneratedValue))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTAttestQuote))
	b = tpmcred.AppendTPM2B(b, a.signer)
	b = tpmcred.AppendTPM2B(b, a.extraData)
	b = binary.BigEndian.AppendUint64(b, a.clock.Clock)
	b = binary.BigEndian.AppendUint32(b, a.clock.ResetCount)
	b = binary.BigEndian.AppendUint32(b, a.clock.RestartCount)
	b = append(b, yesNo(a.clock.Safe))
	b = binary.BigEndian.AppendUint64(b, a.firmware)
	// TPMS_QUOTE_INFO: a TPML_PCR_SELECTION of one TPMS_PCR_SELECTION,
	// then the TPM2B_DIGEST of the selected PCRs.
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint16(b, uint16(a.bank))
	b = append(b, byte(len(a.pcrSelect)))
	b = append(b, a.pcrSelect...)
	return tpmcred.AppendTPM2B(b, a.pcrDigest)
}

// yesNo encodes a TPMI_YES_NO.
func yesNo(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// encodeECDSASignature returns the TPMT_SIGNATURE of an ECDSA signature
// (r, s) over a digest of hash.
func encodeECDSASignature(hash tpm2.TPMAlgID, r, s []byte) []byte {
	b := make([]byte, 0, 2+2+2+len(r)+2+len(s))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgECDSA))
	b = binary.BigEndian.AppendUint16(b, uint16(hash))
	b = tpmcred.AppendTPM2B(b, r)
	return tpmcred.AppendTPM2B(b, s)
}

// encodeRSASSASignature returns the TPMT_SIGNATURE of an RSASSA-PKCS1-v1_5
// signature sig over a digest of hash.
func encodeRSASSASignature(hash tpm2.TPMAlgID, sig []byte) []byte {
	b := make([]byte, 0, 2+2+2+len(sig))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgRSASSA))
	b = binary.BigEndian.AppendUint16(b, uint16(hash))
	return tpmcred.AppendTPM2B(b, sig)
}

// errTruncated reports a structure that ends early or is followed by
// more bytes.
var errTruncated = fmt.Errorf("truncated or trailing bytes: %w", errNotTPM)

// decodeECCPoint decodes b as exactly one TPMS_ECC_POINT and returns its
// coordinates, which alias b.
func decodeECCPoint(b []byte) (x, y []byte, err error) {
	s := cryptobyte.String(b)
	var xs, ys cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&xs) || !s.ReadUint16LengthPrefixed(&ys) || !s.Empty() {
		return nil, nil, errTruncated
	}
	return xs, ys, nil
}

// TPMA_OBJECT bits the node reads of a sealed data object.
const (
	attrUserWithAuth = 1 << 6
	attrDecrypt      = 1 << 17
	attrSignEncrypt  = 1 << 18
)

// keyedHashPublic is what the node reads of a keyed-hash object's
// TPMT_PUBLIC.
type keyedHashPublic struct {
	nameAlg    tpm2.TPMAlgID
	attributes uint32 // TPMA_OBJECT, every bit as encoded
	authPolicy []byte
	// scheme is the TPMT_KEYEDHASH_SCHEME: TPM_ALG_NULL, TPM_ALG_HMAC
	// (schemeHash) or TPM_ALG_XOR (schemeHash, schemeKDF).
	scheme, schemeHash, schemeKDF tpm2.TPMAlgID
	unique                        []byte
}

// errNotKeyedHash reports a public area of another type, which a node
// never imports.
var errNotKeyedHash = errors.New("public area is not a keyed-hash object")

// decodeKeyedHashPublic decodes b as exactly one TPMT_PUBLIC of a
// keyed-hash object; its byte fields alias b. An object of another known
// type (RSA, ECC, symmetric cipher, null) is refused with errNotKeyedHash,
// anything else with errNotTPM.
func decodeKeyedHashPublic(b []byte) (*keyedHashPublic, error) {
	s := cryptobyte.String(b)
	var typ uint16
	if !s.ReadUint16(&typ) {
		return nil, errTruncated
	}
	switch tpm2.TPMAlgID(typ) {
	case tpm2.TPMAlgKeyedHash:
	case tpm2.TPMAlgRSA, tpm2.TPMAlgECC, tpm2.TPMAlgSymCipher, tpm2.TPMAlgNull:
		return nil, errNotKeyedHash
	default:
		return nil, fmt.Errorf("unknown object type %#04x: %w", typ, errNotTPM)
	}
	var (
		p                     keyedHashPublic
		nameAlg, scheme       uint16
		authPolicy, unique    cryptobyte.String
		schemeHash, schemeKDF uint16
	)
	if !s.ReadUint16(&nameAlg) || !s.ReadUint32(&p.attributes) ||
		!s.ReadUint16LengthPrefixed(&authPolicy) || !s.ReadUint16(&scheme) {
		return nil, errTruncated
	}
	// TPMS_KEYEDHASH_PARMS: the scheme's details by its tag.
	switch tpm2.TPMAlgID(scheme) {
	case tpm2.TPMAlgNull:
	case tpm2.TPMAlgHMAC:
		if !s.ReadUint16(&schemeHash) {
			return nil, errTruncated
		}
	case tpm2.TPMAlgXOR:
		if !s.ReadUint16(&schemeHash) || !s.ReadUint16(&schemeKDF) {
			return nil, errTruncated
		}
	default:
		return nil, fmt.Errorf("unknown keyed-hash scheme %#04x: %w", scheme, errNotTPM)
	}
	if !s.ReadUint16LengthPrefixed(&unique) || !s.Empty() {
		return nil, errTruncated
	}
	p.nameAlg, p.scheme = tpm2.TPMAlgID(nameAlg), tpm2.TPMAlgID(scheme)
	p.schemeHash, p.schemeKDF = tpm2.TPMAlgID(schemeHash), tpm2.TPMAlgID(schemeKDF)
	p.authPolicy, p.unique = authPolicy, unique
	return &p, nil
}

// objectSensitive is a TPMT_SENSITIVE: every object type's sensitive
// area (RSA prime, ECC private scalar, keyed-hash data, symmetric key) is
// one TPM2B, and a null one has none.
type objectSensitive struct {
	sensitiveType tpm2.TPMAlgID
	authValue     []byte
	seedValue     []byte
	sensitive     []byte // nil for TPM_ALG_NULL
}

// decodeSensitive decodes b as exactly one TPMT_SENSITIVE; its byte fields
// alias b.
func decodeSensitive(b []byte) (*objectSensitive, error) {
	s := cryptobyte.String(b)
	var (
		typ                   uint16
		auth, seed, sensitive cryptobyte.String
	)
	if !s.ReadUint16(&typ) || !s.ReadUint16LengthPrefixed(&auth) || !s.ReadUint16LengthPrefixed(&seed) {
		return nil, errTruncated
	}
	switch tpm2.TPMAlgID(typ) {
	case tpm2.TPMAlgNull:
	case tpm2.TPMAlgRSA, tpm2.TPMAlgECC, tpm2.TPMAlgKeyedHash, tpm2.TPMAlgSymCipher:
		if !s.ReadUint16LengthPrefixed(&sensitive) {
			return nil, errTruncated
		}
	default:
		return nil, fmt.Errorf("unknown sensitive type %#04x: %w", typ, errNotTPM)
	}
	if !s.Empty() {
		return nil, errTruncated
	}
	return &objectSensitive{sensitiveType: tpm2.TPMAlgID(typ), authValue: auth, seedValue: seed, sensitive: sensitive}, nil
}
