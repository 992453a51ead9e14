package tpmcred

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Seed labels (TPM 2.0 Part 1, §24.4 and §23.3.2.3), and the KDFa labels of
// the keys derived from a seed.
const (
	labelIdentity  = "IDENTITY"
	labelDuplicate = "DUPLICATE"
	labelStorage   = "STORAGE"
	labelIntegrity = "INTEGRITY"
)

// The TPM's bounds on what it unwraps: a credential is a TPM2B_DIGEST
// (at most the largest digest, SHA-512's, which ActivateCredential
// accepts; TPM2_MakeCredential itself would also refuse one longer than
// the EK name algorithm's digest, a bound not applied here), a name is a hash algorithm and a
// digest, and a duplicated TPMT_SENSITIVE fits a TPM2B_PRIVATE (with
// room for an RSA-4096 private key).
const (
	MaxCredentialSize = 64
	MaxNameSize       = 2 + 64
	MaxSensitiveSize  = 2048
)

var errNoKey = errors.New("no key: make one with NewKey")

// OAEP labels of the seed: the seed label and its terminating zero.
var (
	oaepIdentity  = []byte(labelIdentity + "\x00")
	oaepDuplicate = []byte(labelDuplicate + "\x00")
)

// Encapsulate makes a fresh seed for label ("IDENTITY", "DUPLICATE",
// "SECRET") and encrypts it to k: the seed, and the contents of the
// TPM2B_ENCRYPTED_SECRET the TPM recovers it from. For an RSA key the seed
// is as long as the OAEP hash's digest and is read from random, then
// encrypted with OAEP (label || 0); for an ECC key an ephemeral key pair is
// generated (crypto/ecdh: random only as its GenerateKey honours it) and
// the seed is KDFe(nameAlg, Z, label, ephemeral x, key x), the secret the
// ephemeral point (a TPMS_ECC_POINT).
func (k *Key) Encapsulate(random io.Reader, label string) (seed, encSecret []byte, err error) {
	var oaepLabel []byte
	switch label {
	case labelIdentity:
		oaepLabel = oaepIdentity
	case labelDuplicate:
		oaepLabel = oaepDuplicate
	default:
		oaepLabel = []byte(label + "\x00")
	}
	return k.encapsulate(random, label, oaepLabel)
}

func (k *Key) encapsulate(random io.Reader, label string, oaepLabel []byte) (seed, encSecret []byte, err error) {
	if k == nil || k.rsa == nil && k.ecc == nil {
		return nil, nil, errNoKey
	}
	if k.rsa != nil {
		seed = make([]byte, k.oaepHash.Size())
		if _, err := io.ReadFull(random, seed); err != nil {
			return nil, nil, fmt.Errorf("unable to generate the seed: %w", err)
		}
		encSecret, err = rsa.EncryptOAEP(k.oaepHash.New(), random, k.rsa, seed, oaepLabel)
		if err != nil {
			clear(seed)
			return nil, nil, fmt.Errorf("unable to encrypt the seed: %w", err)
		}
		return seed, encSecret, nil
	}
	eph, err := k.ecc.Curve().GenerateKey(random)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to generate the ephemeral key: %w", err)
	}
	z, err := eph.ECDH(k.ecc)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to agree on the seed: %w", err)
	}
	defer clear(z)
	size := len(k.eccX)
	var buf [1 + 2*66]byte
	pt := append(buf[:0], eph.PublicKey().Bytes()...) // 0x04 || x || y
	if len(pt) != 1+2*size || pt[0] != 4 {
		return nil, nil, fmt.Errorf("ephemeral key is not an uncompressed point")
	}
	x, y := pt[1:1+size], pt[1+size:]
	seed = KDFe(k.nameHash, z, label, x, k.eccX, k.nameHash.Size()*8)
	// TPMS_ECC_POINT: x and y, each a TPM2B_ECC_PARAMETER.
	encSecret = make([]byte, 0, 4+2*size)
	encSecret = AppendTPM2B(encSecret, x)
	encSecret = AppendTPM2B(encSecret, y)
	return seed, encSecret, nil
}

// MakeCredential is TPM2_MakeCredential to k: it protects credential (at
// most MaxCredentialSize bytes) so that TPM2_ActivateCredential releases it
// only in k's TPM and only for the object named name. It returns the
// contents of the TPM2B_ID_OBJECT and of the TPM2B_ENCRYPTED_SECRET, as
// tpm2.CreateCredential does.
func (k *Key) MakeCredential(random io.Reader, name, credential []byte) (idObject, encSecret []byte, err error) {
	if len(credential) > MaxCredentialSize {
		return nil, nil, fmt.Errorf("credential has %d bytes, more than %d", len(credential), MaxCredentialSize)
	}
	return k.protect(random, labelIdentity, oaepIdentity, name, credential)
}

// Duplicate wraps sensitive, an object's TPMT_SENSITIVE (at most
// MaxSensitiveSize bytes), in an outer wrapper to k for the object named
// name, with no inner wrapper: it returns the contents of the
// TPM2B_PRIVATE that TPM2_Import under k takes, and of the
// TPM2B_ENCRYPTED_SECRET holding its seed, as tpm2.CreateDuplicate does.
func (k *Key) Duplicate(random io.Reader, name, sensitive []byte) (duplicate, encSeed []byte, err error) {
	if len(sensitive) > MaxSensitiveSize {
		return nil, nil, fmt.Errorf("sensitive area has %d bytes, more than %d", len(sensitive), MaxSensitiveSize)
	}
	return k.protect(random, labelDuplicate, oaepDuplicate, name, sensitive)
}

// protect makes a seed for label and returns, with its encryption to k, the
// wrapped TPM2B of data: the integrity HMAC as a TPM2B_DIGEST, then
// data's TPM2B in AES-CFB (zero IV) under KDFa(seed, "STORAGE", name), the
// HMAC under KDFa(seed, "INTEGRITY") over that ciphertext || name (TPM 2.0
// Part 1, §24.4 to §24.5 and §23.3.2.3).
func (k *Key) protect(random io.Reader, label string, oaepLabel, name, data []byte) (wrapped, encSecret []byte, err error) {
	if k == nil {
		return nil, nil, errNoKey
	}
	if len(name) > MaxNameSize {
		return nil, nil, fmt.Errorf("name has %d bytes, more than %d", len(name), MaxNameSize)
	}
	seed, encSecret, err := k.encapsulate(random, label, oaepLabel)
	if err != nil {
		return nil, nil, err
	}
	defer clear(seed)

	macSize := k.nameHash.Size()
	wrapped = make([]byte, 2+macSize+2+len(data))
	binary.BigEndian.PutUint16(wrapped, uint16(macSize))
	enc := wrapped[2+macSize:]
	binary.BigEndian.PutUint16(enc, uint16(len(data)))
	copy(enc[2:], data)

	// Both keys are KDFa of the seed: one HMAC keyed with it serves both.
	seedMAC := hmac.New(k.nameHash.New, seed)
	symKey := kdfa(seedMAC, labelStorage, name, nil, k.symBytes*8)
	defer clear(symKey)
	block, err := aes.NewCipher(symKey)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to set up AES: %w", err)
	}
	var iv [aes.BlockSize]byte
	//nolint:staticcheck // CFB with a zero IV is what the TPM specifies.
	cipher.NewCFBEncrypter(block, iv[:]).XORKeyStream(enc, enc)

	seedMAC.Reset()
	macKey := kdfa(seedMAC, labelIntegrity, nil, nil, macSize*8)
	defer clear(macKey)
	mac := hmac.New(k.nameHash.New, macKey)
	mac.Write(enc)
	mac.Write(name)
	mac.Sum(wrapped[2:2]) // fills wrapped[2 : 2+macSize]
	return wrapped, encSecret, nil
}

// AppendTPM2B appends a TPM2B: a 16-bit big-endian size, then data.
func AppendTPM2B(b, data []byte) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(data))), data...)
}
