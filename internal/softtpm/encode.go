package softtpm

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/google/go-tpm/tpm2"
)

// Encoding a public area with go-tpm's reflection costs more than making
// the keys, so New encodes each template once and appends the key: the
// unique field comes last in a TPMT_PUBLIC. TestEncodingMatchesMarshal
// checks the result against tpm2.Marshal.

// uniqueSize is the size of a template's encoded unique field.
func uniqueSize(t tpm2.TPMAlgID) int {
	if t == tpm2.TPMAlgECC {
		return 2 + 32 + 2 + 32 // TPMS_ECC_POINT of P-256
	}
	return 2 + 256 // TPM2B_PUBLIC_KEY_RSA of RSA-2048
}

var (
	prefixMu sync.Mutex
	prefixes = map[*tpm2.TPMTPublic][]byte{}
)

// publicPrefix is the encoding of *tmpl without its unique field; tmpl
// must be a package-level template whose unique is a zero key.
func publicPrefix(tmpl *tpm2.TPMTPublic) []byte {
	prefixMu.Lock()
	defer prefixMu.Unlock()
	p, ok := prefixes[tmpl]
	if !ok {
		enc := tpm2.Marshal(*tmpl)
		p = enc[:len(enc)-uniqueSize(tmpl.Type)]
		prefixes[tmpl] = p
	}
	return p
}

// encodePublic returns the TPMT_PUBLIC of tmpl with key as its unique
// field: for ECC the P-256 point's X || Y (32 bytes each), for RSA the
// 256-byte modulus.
func encodePublic(tmpl *tpm2.TPMTPublic, key []byte) []byte {
	prefix := publicPrefix(tmpl)
	out := make([]byte, 0, len(prefix)+uniqueSize(tmpl.Type))
	out = append(out, prefix...)
	if tmpl.Type == tpm2.TPMAlgECC {
		out = binary.BigEndian.AppendUint16(out, 32)
		out = append(out, key[:32]...)
		out = binary.BigEndian.AppendUint16(out, 32)
		return append(out, key[32:]...)
	}
	out = binary.BigEndian.AppendUint16(out, uint16(len(key)))
	return append(out, key...)
}

// objectName is the TPM name of an object: nameAlg || H(public), public
// being its TPMT_PUBLIC as encoded.
func objectName(nameAlg tpm2.TPMAlgID, public []byte) ([]byte, error) {
	h, err := nameAlg.Hash()
	if err != nil {
		return nil, fmt.Errorf("unable to compute the object's name: %w", err)
	}
	d := h.New()
	d.Write(public)
	return d.Sum(binary.BigEndian.AppendUint16(make([]byte, 0, 2+h.Size()), uint16(nameAlg))), nil
}

// The templates New fills in.
var (
	eccEKTemplate = tpm2.ECCEKTemplate
	rsaEKTemplate = tpm2.RSAEKTemplate
	eccAKTemplate = tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: akAttributes,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(
				tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
	rsaAKTemplate = tpm2.TPMTPublic{
		Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: akAttributes,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUAsymScheme(
				tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256})},
			KeyBits: 2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
)

// akAttributes are go-tpm-tools' AK attributes (FlagSignerDefault): a
// restricted signing key that never leaves its TPM.
var akAttributes = tpm2.TPMAObject{
	FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
	Restricted: true, SignEncrypt: true,
}
