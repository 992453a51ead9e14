package tpmcred_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"testing"
	"testing/cryptotest"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// shape is an EK shape go-tpm's ImportEncapsulationKey accepts.
type shape struct {
	name string
	pub  func(t testing.TB) *tpm2.TPMTPublic
}

var shapes = []shape{
	{"RSA-2048 SHA-256 AES-128", func(t testing.TB) *tpm2.TPMTPublic {
		return rsaPublic(t, 2048, tpm2.TPMAlgSHA256, tpm2.TPMAlgNull, 128)
	}},
	{"RSA-2048 SHA-256 OAEP-SHA-384 AES-128", func(t testing.TB) *tpm2.TPMTPublic {
		return rsaPublic(t, 2048, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, 128)
	}},
	{"RSA-3072 SHA-384 AES-256", func(t testing.TB) *tpm2.TPMTPublic {
		return rsaPublic(t, 3072, tpm2.TPMAlgSHA384, tpm2.TPMAlgNull, 256)
	}},
	{"RSA-4096 SHA-512 AES-192", func(t testing.TB) *tpm2.TPMTPublic {
		return rsaPublic(t, 4096, tpm2.TPMAlgSHA512, tpm2.TPMAlgNull, 192)
	}},
	{"ECC P-256 SHA-256 AES-128", func(t testing.TB) *tpm2.TPMTPublic {
		return eccPublic(t, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256, 128)
	}},
	{"ECC P-256 with an x coordinate the TPM wrote without its leading zero", func(t testing.TB) *tpm2.TPMTPublic {
		for {
			p := eccPublic(t, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256, 128)
			if pt, _ := p.Unique.ECC(); pt.X.Buffer[0] == 0 {
				pt.X.Buffer = pt.X.Buffer[1:]
				return p
			}
		}
	}},
	{"ECC P-256 SHA-1 AES-128", func(t testing.TB) *tpm2.TPMTPublic {
		return eccPublic(t, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA1, 128)
	}},
	{"ECC P-384 SHA-384 AES-256", func(t testing.TB) *tpm2.TPMTPublic {
		return eccPublic(t, tpm2.TPMECCNistP384, tpm2.TPMAlgSHA384, 256)
	}},
	{"ECC P-521 SHA-512 AES-256", func(t testing.TB) *tpm2.TPMTPublic {
		return eccPublic(t, tpm2.TPMECCNistP521, tpm2.TPMAlgSHA512, 256)
	}},
}

// TestMatchesGoTPM holds MakeCredential, Duplicate and Encapsulate to
// go-tpm's tpm2.CreateCredential, tpm2.CreateDuplicate and the
// LabeledEncapsulationKey's Encapsulate: with the same randomness, the
// same bytes. The randomness is crypto/rand's global source, seeded by
// cryptotest.SetGlobalRandom: since Go 1.26 ecdh.GenerateKey ignores the
// reader it is given (unless GODEBUG=cryptocustomrand=1) and draws from it.
func TestMatchesGoTPM(t *testing.T) {
	name := append([]byte{0x00, 0x0b}, bytes.Repeat([]byte{0xa5}, 32)...)
	secret := bytes.Repeat([]byte{0x5a}, 32)
	sensitive := bytes.Repeat([]byte{0x3c}, 72)
	for _, s := range shapes {
		t.Run(s.name, func(t *testing.T) {
			pub := s.pub(t)
			theirs, err := tpm2.ImportEncapsulationKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			ours, err := tpmcred.NewKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			if ours.NameAlg() != theirs.NameAlg() {
				t.Errorf("NameAlg = %v, go-tpm %v", ours.NameAlg(), theirs.NameAlg())
			}
			ops := []struct {
				name         string
				theirs, ours func() ([]byte, []byte, error)
			}{
				{"MakeCredential",
					func() ([]byte, []byte, error) { return tpm2.CreateCredential(rand.Reader, theirs, name, secret) },
					func() ([]byte, []byte, error) { return ours.MakeCredential(rand.Reader, name, secret) }},
				{"Duplicate",
					func() ([]byte, []byte, error) { return tpm2.CreateDuplicate(rand.Reader, theirs, name, sensitive) },
					func() ([]byte, []byte, error) { return ours.Duplicate(rand.Reader, name, sensitive) }},
				{"Encapsulate",
					func() ([]byte, []byte, error) { return theirs.Encapsulate(rand.Reader, "SECRET") },
					func() ([]byte, []byte, error) { return ours.Encapsulate(rand.Reader, "SECRET") }},
			}
			for seed := uint64(1); seed <= 3; seed++ {
				for _, op := range ops {
					cryptotest.SetGlobalRandom(t, seed)
					want1, want2, err := op.theirs()
					if err != nil {
						t.Fatal(err)
					}
					cryptotest.SetGlobalRandom(t, seed)
					got1, got2, err := op.ours()
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got1, want1) || !bytes.Equal(got2, want2) {
						t.Errorf("seed %d: %s = %x, %x\ngo-tpm: %x, %x", seed, op.name, got1, got2, want1, want2)
					}
				}
			}
			// Fresh randomness gives fresh outputs: nothing is cached.
			a, _, _ := ours.MakeCredential(rand.Reader, name, secret)
			b, _, _ := ours.MakeCredential(rand.Reader, name, secret)
			if bytes.Equal(a, b) {
				t.Error("two credentials from different randomness are equal")
			}
		})
	}
}

// rsaPublic is a restricted decryption key's public area for a fresh RSA
// key of bits, with OAEP hash oaep (TPMAlgNull: the scheme is null).
func rsaPublic(t testing.TB, bits int, nameAlg, oaep tpm2.TPMAlgID, symBits tpm2.TPMKeyBits) *tpm2.TPMTPublic {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	scheme := tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull}
	if oaep != tpm2.TPMAlgNull {
		scheme = tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgOAEP,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgOAEP, &tpm2.TPMSEncSchemeOAEP{HashAlg: oaep})}
	}
	return &tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgRSA,
		NameAlg:          nameAlg,
		ObjectAttributes: ekAttributes,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: aesCFB(symBits),
			Scheme:    scheme,
			KeyBits:   tpm2.TPMKeyBits(bits),
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()}),
	}
}

// eccPublic is a restricted decryption key's public area for a fresh key
// on curve.
func eccPublic(t testing.TB, curve tpm2.TPMECCCurve, nameAlg tpm2.TPMAlgID, symBits tpm2.TPMKeyBits) *tpm2.TPMTPublic {
	t.Helper()
	c := map[tpm2.TPMECCCurve]ecdh.Curve{
		tpm2.TPMECCNistP256: ecdh.P256(), tpm2.TPMECCNistP384: ecdh.P384(), tpm2.TPMECCNistP521: ecdh.P521(),
	}[curve]
	k, err := c.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw := k.PublicKey().Bytes()[1:]
	x, y := raw[:len(raw)/2], raw[len(raw)/2:]
	return eccArea(curve, nameAlg, aesCFB(symBits), x, y)
}

func eccArea(curve tpm2.TPMECCCurve, nameAlg tpm2.TPMAlgID, sym tpm2.TPMTSymDefObject, x, y []byte) *tpm2.TPMTPublic {
	return &tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          nameAlg,
		ObjectAttributes: ekAttributes,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: sym,
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   curve,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y},
		}),
	}
}

var ekAttributes = tpm2.TPMAObject{
	FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, AdminWithPolicy: true,
	Restricted: true, Decrypt: true,
}

func aesCFB(bits tpm2.TPMKeyBits) tpm2.TPMTSymDefObject {
	return tpm2.TPMTSymDefObject{
		Algorithm: tpm2.TPMAlgAES,
		KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, bits),
		Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
	}
}
