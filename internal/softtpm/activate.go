package softtpm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/keybroker/keybroker/internal/tpmcred"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Labels of the seed encryption (TPM 2.0 Part 1, 24 and 23.3).
const (
	labelIdentity  = "IDENTITY"
	labelDuplicate = "DUPLICATE"
)

// Limits on what Activate reads, the 2-byte size included: above any TPM's
// TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
const (
	MaxCredentialBlobSize  = 1024
	MaxEncryptedSecretSize = 1024
	// maxCredentialSize is a TPM2B_DIGEST's limit (sizeof(TPMU_HA)).
	maxCredentialSize = 64
)

// The default EK templates' name algorithm and symmetric key: SHA-256 and
// AES-128-CFB, for the RSA and the ECC template alike.
const ekSymBits = 128

// ErrIntegrity reports an outer wrapper whose HMAC does not verify: the
// blob was made for another EK, or for another object (another AK name),
// or it was altered.
var ErrIntegrity = errors.New("integrity check failed: not made for this EK and object")

// Activate is TPM2_ActivateCredential with the node's EK and AK: it
// recovers the seed from encrypted_secret with the EK, checks the
// credential blob's HMAC over the AK's name and decrypts the secret. A blob
// made for another EK or another AK is refused with ErrIntegrity, as a TPM
// refuses it (TPM_RC_INTEGRITY).
func (n *Node) Activate(resp *pb.ChallengeResponse) ([]byte, error) {
	blob, err := tpm2b(resp.GetCredentialBlob(), MaxCredentialBlobSize)
	if err != nil {
		return nil, fmt.Errorf("credential_blob: %w", err)
	}
	encSecret, err := tpm2b(resp.GetEncryptedSecret(), MaxEncryptedSecretSize)
	if err != nil {
		return nil, fmt.Errorf("encrypted_secret: %w", err)
	}
	plain, err := n.unwrap(encSecret, labelIdentity, blob, n.akName)
	if err != nil {
		return nil, fmt.Errorf("unable to activate the credential: %w", err)
	}
	defer clear(plain)
	cred, err := tpm2b(plain, 2+maxCredentialSize)
	if err != nil || len(cred) == 0 {
		return nil, fmt.Errorf("unable to activate the credential: the credential is not a TPM2B_DIGEST")
	}
	return bytes.Clone(cred), nil
}

// unwrap removes an outer wrapper (TPM 2.0 Part 1, 23.3.2.3): the seed is
// decrypted from encSeed with the EK under label, then wrapped (a
// TPM2B_DIGEST HMAC followed by the ciphertext) is checked with the HMAC
// key KDFa(seed, "INTEGRITY") over ciphertext || name, and decrypted with
// AES-128-CFB under KDFa(seed, "STORAGE", name) and a zero IV.
func (n *Node) unwrap(encSeed []byte, label string, wrapped, name []byte) ([]byte, error) {
	seed, err := n.decryptSeed(encSeed, label)
	if err != nil {
		return nil, err
	}
	defer clear(seed)
	if len(wrapped) < 2 {
		return nil, fmt.Errorf("outer HMAC: %w", errNotTPM)
	}
	macSize := int(binary.BigEndian.Uint16(wrapped))
	if macSize != sha256.Size || len(wrapped) < 2+macSize {
		return nil, fmt.Errorf("outer HMAC has the wrong size: %w", ErrIntegrity)
	}
	mac, ct := wrapped[2:2+macSize], wrapped[2+macSize:]
	macKey := tpmcred.KDFa(sha256Hash, seed, "INTEGRITY", nil, nil, sha256.Size*8)
	defer clear(macKey)
	h := hmac.New(sha256.New, macKey)
	h.Write(ct)
	h.Write(name)
	if subtle.ConstantTimeCompare(h.Sum(nil), mac) != 1 {
		return nil, ErrIntegrity
	}
	symKey := tpmcred.KDFa(sha256Hash, seed, "STORAGE", name, nil, ekSymBits)
	defer clear(symKey)
	block, err := aes.NewCipher(symKey)
	if err != nil {
		return nil, fmt.Errorf("unable to set up AES: %w", err)
	}
	plain := make([]byte, len(ct))
	//nolint:staticcheck // CFB with a zero IV is what the TPM specifies.
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(plain, ct)
	return plain, nil
}

// decryptSeed recovers a seed encrypted to the EK: RSA-OAEP (SHA-256) with
// label || 0 for an RSA EK; for an ECC EK, ECDH of the EK with the ephemeral
// TPMS_ECC_POINT in encSeed and KDFe(Z, label, ephemeral x, EK x).
func (n *Node) decryptSeed(encSeed []byte, label string) ([]byte, error) {
	if n.ekRSA != nil {
		seed, err := rsa.DecryptOAEP(sha256.New(), nil, n.ekRSA, encSeed, []byte(label+"\x00"))
		if err != nil {
			return nil, fmt.Errorf("the EK cannot decrypt the seed: %w", ErrIntegrity)
		}
		return seed, nil
	}
	x, y, err := decodeECCPoint(encSeed)
	if err != nil {
		return nil, fmt.Errorf("encrypted seed is not a TPMS_ECC_POINT: %w", err)
	}
	if len(x) == 0 || len(x) > 32 || len(y) == 0 || len(y) > 32 {
		return nil, fmt.Errorf("encrypted seed is not a P-256 point: %w", errNotTPM)
	}
	raw := make([]byte, 65)
	raw[0] = 4
	copy(raw[33-len(x):33], x)
	copy(raw[65-len(y):], y)
	eph, err := ecdh.P256().NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("encrypted seed is not a point on P-256: %w", errNotTPM)
	}
	z, err := n.ekECC.ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("unable to derive the seed: %w", err)
	}
	defer clear(z)
	ekX := n.ekECC.PublicKey().Bytes()[1:33]
	return tpmcred.KDFe(sha256Hash, z, label, x, ekX, sha256.Size*8), nil
}

// tpm2b returns the body of b, which must be exactly one TPM2B of at most
// maxSize bytes in all.
func tpm2b(b []byte, maxSize int) ([]byte, error) {
	switch {
	case len(b) > maxSize:
		return nil, fmt.Errorf("exceeds %d bytes", maxSize)
	case len(b) < 2:
		return nil, fmt.Errorf("no TPM2B size: %w", errNotTPM)
	}
	if size := int(binary.BigEndian.Uint16(b)); size != len(b)-2 {
		return nil, fmt.Errorf("TPM2B size %d, %d bytes follow: %w", size, len(b)-2, errNotTPM)
	}
	return b[2:], nil
}
