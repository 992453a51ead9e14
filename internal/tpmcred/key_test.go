package tpmcred_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

func TestNewKeyRefuses(t *testing.T) {
	withRSA := func(bits int, edit func(*tpm2.TPMSRSAParms, *tpm2.TPM2BPublicKeyRSA)) func(t *testing.T) *tpm2.TPMTPublic {
		return func(t *testing.T) *tpm2.TPMTPublic {
			pub := rsaPublic(t, bits, tpm2.TPMAlgSHA256, tpm2.TPMAlgNull, 128)
			p, _ := pub.Parameters.RSADetail()
			u, _ := pub.Unique.RSA()
			edit(p, u)
			return pub
		}
	}
	withECC := func(edit func(*tpm2.TPMSECCParms, *tpm2.TPMSECCPoint)) func(t *testing.T) *tpm2.TPMTPublic {
		return func(t *testing.T) *tpm2.TPMTPublic {
			pub := eccPublic(t, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256, 128)
			p, _ := pub.Parameters.ECCDetail()
			u, _ := pub.Unique.ECC()
			edit(p, u)
			return pub
		}
	}
	keep := func(*tpm2.TPMSRSAParms, *tpm2.TPM2BPublicKeyRSA) {}
	tests := []struct {
		name string
		pub  func(t *testing.T) *tpm2.TPMTPublic
		// goTPMRefuses: go-tpm's ImportEncapsulationKey refuses it too;
		// the others it accepts and fails (or succeeds weakly) later.
		goTPMRefuses bool
		wantErr      string
	}{
		{"keyed hash", func(t *testing.T) *tpm2.TPMTPublic {
			return &tpm2.TPMTPublic{Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
				Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{}),
				Unique:     tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{})}
		}, true, "unsupported key: type 0x0008 is not RSA or ECC"},
		{"RSA name algorithm SM3", func(t *testing.T) *tpm2.TPMTPublic {
			pub := rsaPublic(t, 2048, tpm2.TPMAlgSHA256, tpm2.TPMAlgNull, 128)
			pub.NameAlg = tpm2.TPMAlgSM3256
			return pub
		}, true, "unsupported key: name algorithm: unsupported hash algorithm"},
		{"RSA OAEP hash SM3", withRSA(2048, func(p *tpm2.TPMSRSAParms, _ *tpm2.TPM2BPublicKeyRSA) {
			p.Scheme = tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgOAEP,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgOAEP, &tpm2.TPMSEncSchemeOAEP{HashAlg: tpm2.TPMAlgSM3256})}
		}), true, "unsupported key: OAEP hash: unsupported hash algorithm"},
		{"RSA-1024", withRSA(1024, keep), false, "unsupported key: RSA modulus has 1024 bits, want 2048 to 4096"},
		{"RSA modulus longer than 4096 bits", withRSA(2048, func(_ *tpm2.TPMSRSAParms, u *tpm2.TPM2BPublicKeyRSA) {
			u.Buffer = append(bytes.Repeat([]byte{0xff}, 512), u.Buffer...)
		}), false, "unsupported key: RSA modulus has 6144 bits, want 2048 to 4096"},
		{"RSA even modulus", withRSA(2048, func(_ *tpm2.TPMSRSAParms, u *tpm2.TPM2BPublicKeyRSA) {
			u.Buffer[len(u.Buffer)-1] &^= 1
		}), false, "unsupported key: RSA modulus is even"},
		{"RSA even exponent", withRSA(2048, func(p *tpm2.TPMSRSAParms, _ *tpm2.TPM2BPublicKeyRSA) {
			p.Exponent = 65536
		}), false, "unsupported key: RSA exponent 65536 is not odd, at least 3 and below 2^31"},
		{"RSA exponent beyond 2^31-1", withRSA(2048, func(p *tpm2.TPMSRSAParms, _ *tpm2.TPM2BPublicKeyRSA) {
			p.Exponent = 0x80000001
		}), false, "unsupported key: RSA exponent 2147483649 is not odd, at least 3 and below 2^31"},
		{"RSA null symmetric", withRSA(2048, func(p *tpm2.TPMSRSAParms, _ *tpm2.TPM2BPublicKeyRSA) {
			p.Symmetric = tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}
		}), false, "unsupported key: symmetric algorithm 0x0010 is not AES"},
		{"ECC curve BN-256", withECC(func(p *tpm2.TPMSECCParms, _ *tpm2.TPMSECCPoint) {
			p.CurveID = tpm2.TPMECCBNP256
		}), true, "unsupported key: ECC curve 0x0010 is not NIST P-256, P-384 or P-521"},
		{"ECC point off the curve", withECC(func(_ *tpm2.TPMSECCParms, pt *tpm2.TPMSECCPoint) {
			pt.Y.Buffer = bytes.Clone(pt.Y.Buffer)
			pt.Y.Buffer[31] ^= 1
		}), true, "unsupported key: ECC public key is not a point on P-256"},
		{"ECC point at infinity", withECC(func(_ *tpm2.TPMSECCParms, pt *tpm2.TPMSECCPoint) {
			pt.X.Buffer, pt.Y.Buffer = nil, nil
		}), true, "unsupported key: ECC public key is not a point on P-256"},
		{"ECC coordinate longer than the curve's", withECC(func(_ *tpm2.TPMSECCParms, pt *tpm2.TPMSECCPoint) {
			pt.X.Buffer = append([]byte{0}, pt.X.Buffer...)
		}), false, "unsupported key: ECC coordinates are longer than P-256's"},
		{"ECC XOR symmetric", withECC(func(p *tpm2.TPMSECCParms, _ *tpm2.TPMSECCPoint) {
			p.Symmetric = tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgXOR,
				KeyBits: tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgXOR, tpm2.TPMAlgSHA256)}
		}), false, "unsupported key: symmetric algorithm 0x000a is not AES"},
		{"ECC AES-CTR", withECC(func(p *tpm2.TPMSECCParms, _ *tpm2.TPMSECCPoint) {
			p.Symmetric.Mode = tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCTR)
		}), false, "unsupported key: symmetric mode 0x0040 is not CFB"},
		{"ECC AES-512", withECC(func(p *tpm2.TPMSECCParms, _ *tpm2.TPMSECCPoint) {
			p.Symmetric.KeyBits = tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(512))
		}), false, "unsupported key: AES key size 512 is not 128, 192 or 256 bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := tt.pub(t)
			k, err := tpmcred.NewKey(pub)
			if err == nil || !errors.Is(err, tpmcred.ErrUnsupported) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewKey = %v, %v; want an error containing %q, wrapping ErrUnsupported", k, err, tt.wantErr)
			}
			if _, err := tpm2.ImportEncapsulationKey(pub); (err != nil) != tt.goTPMRefuses {
				t.Errorf("go-tpm's ImportEncapsulationKey = %v; the test says it refuses: %v", err, tt.goTPMRefuses)
			}
		})
	}
	if _, err := tpmcred.NewKey(nil); !errors.Is(err, tpmcred.ErrUnsupported) {
		t.Errorf("NewKey(nil) = %v", err)
	}
}

// The TPM's exponent 0 is 65537.
func TestNewKeyDefaultExponent(t *testing.T) {
	pub := rsaPublic(t, 2048, tpm2.TPMAlgSHA256, tpm2.TPMAlgNull, 128)
	for _, e := range []uint32{0, 65537} {
		p, _ := pub.Parameters.RSADetail()
		p.Exponent = e
		k, err := tpmcred.NewKey(pub)
		if err != nil {
			t.Fatalf("exponent %d: %v", e, err)
		}
		if _, _, err := k.MakeCredential(rand.Reader, []byte{0, 0xb}, []byte("s")); err != nil {
			t.Fatalf("exponent %d: %v", e, err)
		}
	}
}

func TestProtectRefusesOversizedInput(t *testing.T) {
	k, err := tpmcred.NewKey(eccPublic(t, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256, 128))
	if err != nil {
		t.Fatal(err)
	}
	name := make([]byte, tpmcred.MaxNameSize)
	tests := []struct {
		name    string
		call    func() ([]byte, []byte, error)
		wantErr string
	}{
		{"credential", func() ([]byte, []byte, error) {
			return k.MakeCredential(rand.Reader, name, make([]byte, tpmcred.MaxCredentialSize+1))
		}, "credential has 65 bytes, more than 64"},
		{"credential's name", func() ([]byte, []byte, error) {
			return k.MakeCredential(rand.Reader, make([]byte, tpmcred.MaxNameSize+1), nil)
		}, "name has 67 bytes, more than 66"},
		{"sensitive area", func() ([]byte, []byte, error) {
			return k.Duplicate(rand.Reader, name, make([]byte, tpmcred.MaxSensitiveSize+1))
		}, "sensitive area has 2049 bytes, more than 2048"},
		{"duplicate's name", func() ([]byte, []byte, error) {
			return k.Duplicate(rand.Reader, make([]byte, tpmcred.MaxNameSize+1), nil)
		}, "name has 67 bytes, more than 66"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b, err := tt.call()
			if err == nil || err.Error() != tt.wantErr || a != nil || b != nil {
				t.Fatalf("= %x, %x, %v; want nothing and %q", a, b, err, tt.wantErr)
			}
		})
	}
	// The largest inputs are accepted.
	if _, _, err := k.MakeCredential(rand.Reader, name, make([]byte, tpmcred.MaxCredentialSize)); err != nil {
		t.Error(err)
	}
	if _, _, err := k.Duplicate(rand.Reader, name, make([]byte, tpmcred.MaxSensitiveSize)); err != nil {
		t.Error(err)
	}
}

// A random source that fails refuses the credential rather than making
// one from a short seed.
func TestEncapsulateRefusesShortRandomness(t *testing.T) {
	k, err := tpmcred.NewKey(rsaPublic(t, 2048, tpm2.TPMAlgSHA256, tpm2.TPMAlgNull, 128))
	if err != nil {
		t.Fatal(err)
	}
	id, enc, err := k.MakeCredential(bytes.NewReader(make([]byte, 10)), []byte{0, 0xb}, []byte("s"))
	if err == nil || id != nil || enc != nil || !strings.Contains(err.Error(), "unable to generate the seed") {
		t.Fatalf("MakeCredential with 10 random bytes = %x, %x, %v", id, enc, err)
	}
}

// A Key not made by NewKey protects nothing.
func TestZeroKeyRefuses(t *testing.T) {
	for _, k := range []*tpmcred.Key{nil, {}} {
		if id, enc, err := k.MakeCredential(rand.Reader, []byte{0, 0xb}, []byte("s")); err == nil || id != nil || enc != nil {
			t.Errorf("MakeCredential with %#v = %x, %x, %v", k, id, enc, err)
		}
		if dup, seed, err := k.Duplicate(rand.Reader, []byte{0, 0xb}, []byte("s")); err == nil || dup != nil || seed != nil {
			t.Errorf("Duplicate with %#v = %x, %x, %v", k, dup, seed, err)
		}
		if s, enc, err := k.Encapsulate(rand.Reader, "SECRET"); err == nil || s != nil || enc != nil {
			t.Errorf("Encapsulate with %#v = %x, %x, %v", k, s, enc, err)
		}
	}
}
