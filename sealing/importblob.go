package sealing

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// sealedObjectNameAlg is the name algorithm of the sealed data object that
// carries the CEK, and the hash of every policy session that opens it.
const sealedObjectNameAlg = tpm2.TPMAlgSHA256

// ekFromKey returns, parsed, the EK made from the TCG default template
// (RSA-2048 or ECC P-256) whose public key is ek.
func ekFromKey(ek crypto.PublicKey) (*tpmcred.Key, error) {
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
	return parseEK(pub)
}

// parseEK parses the EK public area ek to make import blobs to it.
func parseEK(ek *tpm2.TPMTPublic) (*tpmcred.Key, error) {
	key, err := tpmcred.NewKey(ek)
	if err != nil {
		return nil, fmt.Errorf("unable to use the EK: %w", err)
	}
	return key, nil
}

// importBlob makes the import blob of secret to ek: a sealed keyed-hash
// object (name algorithm SHA-256) duplicated to ek with an outer wrapper
// only, as TPM2_Import under the EK takes it. An empty authPolicy makes an
// object opened with an empty password (userWithAuth); otherwise only a
// policy session whose digest is authPolicy opens it (adminWithPolicy, as
// go-tpm-tools' import blobs). Every release mode makes its blob here.
func importBlob(ek *tpmcred.Key, secret, authPolicy []byte) (*tpmpb.ImportBlob, error) {
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
	public := sealedPublic(authPolicy, unique.Sum(nil))
	nameHash := sha256.Sum256(public)
	name := append([]byte{byte(sealedObjectNameAlg >> 8), byte(sealedObjectNameAlg)}, nameHash[:]...)
	sensitive := sealedSensitive(seed, secret)
	defer clear(sensitive)
	dup, encSeed, err := ek.Duplicate(rand.Reader, name, sensitive)
	if err != nil {
		return nil, fmt.Errorf("unable to duplicate the sealed object to the EK: %w", err)
	}
	return &tpmpb.ImportBlob{Duplicate: dup, EncryptedSeed: encSeed, PublicArea: public}, nil
}

// The sealed object's TPMT_PUBLIC and TPMT_SENSITIVE are written by hand
// rather than with tpm2.Marshal, whose reflection (struct tags split on
// every field) cost about 600 allocations per release; TestSealedEncoding
// holds them to tpm2.Marshal's encoding.

// Object attributes of the sealed object (TPMA_OBJECT).
const (
	attrUserWithAuth    = 1 << 6
	attrAdminWithPolicy = 1 << 7
)

// sealedPublic is the TPMT_PUBLIC of a keyed-hash data object (scheme
// null, name algorithm SHA-256) with unique; an empty authPolicy sets
// userWithAuth, another adminWithPolicy and that policy.
func sealedPublic(authPolicy, unique []byte) []byte {
	attrs := uint32(attrUserWithAuth)
	if len(authPolicy) > 0 {
		attrs = attrAdminWithPolicy
	}
	b := make([]byte, 0, 16+len(authPolicy)+len(unique))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgKeyedHash))
	b = binary.BigEndian.AppendUint16(b, uint16(sealedObjectNameAlg))
	b = binary.BigEndian.AppendUint32(b, attrs)
	b = tpmcred.AppendTPM2B(b, authPolicy)
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgNull)) // TPMT_KEYEDHASH_SCHEME
	return tpmcred.AppendTPM2B(b, unique)
}

// sealedSensitive is the TPMT_SENSITIVE of that object: no authValue, the
// seed, and secret as its sensitive data.
func sealedSensitive(seed, secret []byte) []byte {
	b := make([]byte, 0, 8+len(seed)+len(secret))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgKeyedHash))
	b = tpmcred.AppendTPM2B(b, nil)
	b = tpmcred.AppendTPM2B(b, seed)
	return tpmcred.AppendTPM2B(b, secret)
}
