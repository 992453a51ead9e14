// Package sealing is keybroker's envelope for released secrets.
//
// The broker (Wrap, pure Go) draws a 32-byte content-encryption key (CEK),
// makes a go-tpm-tools import blob of the CEK to the node's EK, optionally
// with a PolicyPCR over attested PCR values, and encrypts the payload as a
// compact JWE (alg "dir", enc "A256GCM") under the CEK. The node (Open) imports
// the blob inside its TPM, which yields the CEK only in that TPM and, for a
// sealed envelope, only while the PCRs hold the attested values; then it
// decrypts the JWE. A TPM sealed object holds at most 128 bytes, which is why
// only the CEK goes through the TPM.
//
// SealCredential and OpenCredential carry an envelope as the keybroker API's
// Credential, whose import blob fields are whole TPM2Bs as TPM2_Import takes
// them (BlobToProto, BlobFromProto; docs/protocol.md).
package sealing

import (
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// CEKSize is the size of the content-encryption key in bytes.
const CEKSize = 32

// MaxJWESize bounds the JWE a node accepts to open.
const MaxJWESize = 1 << 20

// Envelope is a wrapped secret: an import blob carrying the CEK and the
// payload encrypted under it.
type Envelope struct {
	Blob *tpmpb.ImportBlob
	JWE  string
	// Authorization, when set, says which PCR-policy signers (and policy
	// counter) the blob's object is bound to: open it with OpenAuthorized.
	Authorization *Authorization
}

// WrapOpts tune Wrap. The zero value binds the secret to the TPM only.
type WrapOpts struct {
	// PCRs, when set, seals the CEK to these PCR values (one bank): the TPM
	// opens the envelope only while its PCRs hold them. Nil (and no
	// Authorization) means TPM_BOUND.
	PCRs *tpmpb.PCRs
	// Authorization, when set instead of PCRs, seals the CEK to approvals
	// (pcr_policy = "authorized"): the TPM opens the envelope in any state
	// one of its signers approved (SignApproval), and in no other.
	Authorization *Authorization
	// KeyID is put in the JWE header ("kid"), e.g. the credential name.
	KeyID string
}

// Wrap encrypts payload so that only the TPM holding ek can open it. ek must
// be the public key of an EK made from the TCG default template (RSA-2048 or
// ECC P-256).
func Wrap(ek crypto.PublicKey, payload []byte, opts WrapOpts) (*Envelope, error) {
	key, err := ekFromKey(ek)
	if err != nil {
		return nil, err
	}
	return wrap(key, payload, opts)
}

// wrap is Wrap to the EK ek.
func wrap(ek *tpmcred.Key, payload []byte, opts WrapOpts) (*Envelope, error) {
	var authPolicy []byte
	switch {
	case opts.PCRs != nil && opts.Authorization != nil:
		return nil, errors.New("an envelope is sealed to PCR values or to approvals, not both")
	case opts.PCRs != nil:
		p, err := LiteralPCRPolicy(opts.PCRs)
		if err != nil {
			return nil, fmt.Errorf("unable to create import blob: %w", err)
		}
		authPolicy = p
	case opts.Authorization != nil:
		p, err := opts.Authorization.AuthPolicy()
		if err != nil {
			return nil, fmt.Errorf("unable to create import blob: %w", err)
		}
		authPolicy = p
	}
	cek := make([]byte, CEKSize)
	if _, err := rand.Read(cek); err != nil {
		return nil, fmt.Errorf("unable to generate content key: %w", err)
	}
	defer clear(cek)
	blob, err := importBlob(ek, cek, authPolicy)
	if err != nil {
		return nil, fmt.Errorf("unable to create import blob: %w", err)
	}
	blob.Pcrs = opts.PCRs
	var hdr *jose.EncrypterOptions
	if opts.KeyID != "" {
		hdr = (&jose.EncrypterOptions{}).WithHeader("kid", opts.KeyID)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: cek}, hdr)
	if err != nil {
		return nil, fmt.Errorf("unable to create JWE encrypter: %w", err)
	}
	obj, err := enc.Encrypt(payload)
	if err != nil {
		return nil, fmt.Errorf("unable to encrypt payload: %w", err)
	}
	jwe, err := obj.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("unable to serialize JWE: %w", err)
	}
	return &Envelope{Blob: blob, JWE: jwe, Authorization: opts.Authorization}, nil
}

// ErrImport reports that the TPM refused to import the envelope's key: it was
// made for another TPM, or (for a sealed envelope) the PCRs no longer hold
// the attested values.
var ErrImport = errors.New("the TPM refused to open the envelope")

// Open imports the envelope's CEK inside the TPM under ek and decrypts the
// payload. ek must be the EK loaded with its policy session, as
// client.EndorsementKeyRSA and client.EndorsementKeyECC return it. After
// ErrImport from a refused TPM2_Import that session is spent (go-tpm-tools
// keeps one per loaded key): load the EK again before the next Open, as
// agent.Node does.
func Open(ek *client.Key, env *Envelope) ([]byte, error) {
	if env == nil || env.Blob == nil {
		return nil, errors.New("envelope has no import blob")
	}
	if env.Authorization != nil {
		return nil, errors.New("envelope is sealed to PCR-policy approvals: open it with OpenAuthorized")
	}
	if len(env.JWE) > MaxJWESize {
		return nil, errors.New("envelope JWE is too large")
	}
	cek, err := ek.Import(env.Blob)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrImport, err)
	}
	defer clear(cek)
	return decrypt(cek, env.JWE)
}

// decrypt decrypts jwe (dir, A256GCM) under the CEK a TPM unsealed.
func decrypt(cek []byte, jwe string) ([]byte, error) {
	if len(cek) != CEKSize {
		return nil, fmt.Errorf("envelope content key has %d bytes, want %d", len(cek), CEKSize)
	}
	obj, err := jose.ParseEncrypted(jwe, []jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("unable to parse JWE: %w", err)
	}
	out, err := obj.Decrypt(cek)
	if err != nil {
		return nil, fmt.Errorf("unable to decrypt JWE: %w", err)
	}
	return out, nil
}
