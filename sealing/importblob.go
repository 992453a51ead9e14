package sealing

import (
	"crypto"
	"crypto/rand"
	"fmt"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/tpm2"
)

// sealedObjectNameAlg is the name algorithm of the sealed data object that
// carries the CEK, and the hash of every policy session that opens it.
const sealedObjectNameAlg = tpm2.TPMAlgSHA256

// ekPublicFromKey returns the TPMT_PUBLIC of an EK made from the TCG default
// template (RSA-2048 or ECC P-256) whose public key is ek.
func ekPublicFromKey(ek crypto.PublicKey) (*tpm2.TPMTPublic, error) {
	legacyPub, err := server.CreateEKPublicAreaFromKey(ek)
	if err != nil {
		return nil, fmt.Errorf("unable to use the EK: %w", err)
	}
	enc, err := legacyPub.Encode()
	if err != nil {
		return nil, fmt.Errorf("unable to use the EK: %w", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](enc)
	if err != nil {
		return nil, fmt.Errorf("unable to use the EK: %w", err)
	}
	return pub, nil
}

// importBlob makes the import blob of secret to ek: a sealed keyed-hash
// object (name algorithm SHA-256) duplicated to ek with an outer wrapper
// only, as TPM2_Import under the EK takes it. An empty authPolicy makes an
// object opened with an empty password (userWithAuth); otherwise only a
// policy session whose digest is authPolicy opens it (adminWithPolicy, as
// go-tpm-tools' import blobs). Every release mode makes its blob here.
func importBlob(ek *tpm2.TPMTPublic, secret, authPolicy []byte) (*tpmpb.ImportBlob, error) {
	encap, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, fmt.Errorf("unable to use the EK: %w", err)
	}
	h, err := sealedObjectNameAlg.Hash()
	if err != nil {
		return nil, err
	}
	seed := make([]byte, h.Size())
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("unable to generate object seed: %w", err)
	}
	unique := h.New()
	unique.Write(seed)
	unique.Write(secret)
	pub := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: sealedObjectNameAlg,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique.Sum(nil)}),
	}
	if len(authPolicy) == 0 {
		pub.ObjectAttributes.UserWithAuth = true
	} else {
		pub.ObjectAttributes.AdminWithPolicy = true
		pub.AuthPolicy = tpm2.TPM2BDigest{Buffer: authPolicy}
	}
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, fmt.Errorf("unable to name the sealed object: %w", err)
	}
	sensitive := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: secret}),
	})
	defer clear(sensitive)
	dup, encSeed, err := tpm2.CreateDuplicate(rand.Reader, encap, name.Buffer, sensitive)
	if err != nil {
		return nil, fmt.Errorf("unable to duplicate the sealed object to the EK: %w", err)
	}
	return &tpmpb.ImportBlob{Duplicate: dup, EncryptedSeed: encSeed, PublicArea: tpm2.Marshal(pub)}, nil
}
