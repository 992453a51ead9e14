package sealing

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// The hand-written TPMT_PUBLIC, name and TPMT_SENSITIVE of the sealed
// object are byte for byte what go-tpm's reflection-based Marshal writes,
// for both kinds of object (password and policy).
func TestSealedEncoding(t *testing.T) {
	seed := bytes.Repeat([]byte{0x5e}, 32)
	secret := bytes.Repeat([]byte{0xce}, CEKSize)
	unique := bytes.Repeat([]byte{0x11}, 32)
	for _, authPolicy := range [][]byte{nil, bytes.Repeat([]byte{0xa0}, 32)} {
		pub := tpm2.TPMTPublic{
			Type:    tpm2.TPMAlgKeyedHash,
			NameAlg: sealedObjectNameAlg,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
				Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique}),
		}
		if len(authPolicy) == 0 {
			pub.ObjectAttributes.UserWithAuth = true
		} else {
			pub.ObjectAttributes.AdminWithPolicy = true
			pub.AuthPolicy = tpm2.TPM2BDigest{Buffer: authPolicy}
		}
		if got, want := sealedPublic(authPolicy, unique), tpm2.Marshal(pub); !bytes.Equal(got, want) {
			t.Fatalf("policy %x: sealedPublic = %x\nwant %x", authPolicy, got, want)
		}
		// The name importBlob computes from those bytes is the TPM's.
		blob, err := importBlob(testEK(t), secret, authPolicy)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tpm2.Unmarshal[tpm2.TPMTPublic](blob.GetPublicArea())
		if err != nil {
			t.Fatalf("the blob's public area does not unmarshal: %v", err)
		}
		if got.ObjectAttributes.UserWithAuth != (len(authPolicy) == 0) || got.ObjectAttributes.AdminWithPolicy == (len(authPolicy) == 0) ||
			!bytes.Equal(got.AuthPolicy.Buffer, authPolicy) {
			t.Fatalf("policy %x: the blob's public area is %+v", authPolicy, got)
		}
	}
	want := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: secret}),
	})
	if got := sealedSensitive(seed, secret); !bytes.Equal(got, want) {
		t.Fatalf("sealedSensitive = %x\nwant %x", got, want)
	}
}

// testEK is an ECC P-256 EK (TCG default template) with a fresh key.
func testEK(t *testing.T) *tpmcred.Key {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ekFromKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return ek
}
