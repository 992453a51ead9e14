// Package challenge makes, stores and consumes the single-use secrets that
// bind an attestation to one TPM: each secret is encrypted with
// MakeCredential to the node's EK for its AK's name, so only the TPM holding
// both keys can recover it, and it is accepted back exactly once before it
// expires. This package never touches a TPM.
package challenge

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
)

// SecretSize is the size of the activation secret in bytes.
const SecretSize = 32

// DefaultTTL is how long a challenge stays valid when Opts.TTL is zero.
const DefaultTTL = 60 * time.Second

// MaxTTL is the longest a challenge may be configured to stay valid.
const MaxTTL = 10 * time.Minute

// Errors returned by Lookup and Consume.
var (
	ErrUnknown = errors.New("challenge is unknown or already used")
	ErrExpired = errors.New("challenge has expired")
)

// Opts configure an Issuer. The zero value is the safe default.
type Opts struct {
	// TTL is how long a challenge may be answered; default DefaultTTL.
	TTL time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Issuer makes and consumes challenges, keeping them in a store.Store so that
// every broker replica sharing the store honours single use.
type Issuer struct {
	store store.Store
	ttl   time.Duration
	now   func() time.Time
}

// New returns an Issuer keeping challenges in s.
func New(s store.Store, opts Opts) *Issuer {
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Issuer{store: s, ttl: opts.TTL, now: opts.Now}
}

// Evidence is what the node presented with its challenge request; it is kept
// with the challenge so that the node can be verified again when it answers.
type Evidence struct {
	EKPublic        []byte
	EKCertificate   []byte
	EKIntermediates [][]byte
	AKPublic        []byte
}

// Issued is a challenge as sent to the node.
type Issued struct {
	ID              string
	CredentialBlob  []byte // TPM2B_ID_OBJECT
	EncryptedSecret []byte // TPM2B_ENCRYPTED_SECRET
	ExpiresAt       time.Time
}

// Issue makes a fresh secret for a verified node, encrypts it to the node's
// EK for its AK name and stores its hash (never the secret) with a TTL.
func (i *Issuer) Issue(ctx context.Context, node *verify.NodeIdentity, ev Evidence) (*Issued, error) {
	secret := make([]byte, SecretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("unable to generate challenge secret: %w", err)
	}
	blob, encSecret, err := MakeCredential(node.EKPublic(), node.AKName(), secret)
	if err != nil {
		return nil, err
	}
	idBytes := make([]byte, 24)
	if _, err := rand.Read(idBytes); err != nil {
		return nil, fmt.Errorf("unable to generate challenge id: %w", err)
	}
	c := store.Challenge{
		ID:              base64.RawURLEncoding.EncodeToString(idBytes),
		EKPublic:        ev.EKPublic,
		EKCertificate:   ev.EKCertificate,
		EKIntermediates: ev.EKIntermediates,
		AKPublic:        ev.AKPublic,
		SecretHash:      sha256.Sum256(secret),
		ExpiresAt:       i.now().Add(i.ttl),
	}
	clear(secret)
	if err := i.store.PutChallenge(ctx, c); err != nil {
		return nil, fmt.Errorf("unable to store challenge: %w", err)
	}
	return &Issued{ID: c.ID, CredentialBlob: blob, EncryptedSecret: encSecret, ExpiresAt: c.ExpiresAt}, nil
}

// Lookup returns a challenge without using it up, so that its answer can be
// verified before the decision is recorded with Consume. It returns
// ErrUnknown for an unknown or used ID, and ErrExpired for an expired one
// together with the challenge, so that the refusal can be recorded with
// Consume like any other.
func (i *Issuer) Lookup(ctx context.Context, id string) (store.Challenge, error) {
	// The store is asked as of the zero time, when no challenge had
	// expired, so that an expired challenge comes back with what it holds;
	// the issuer's clock decides expiry.
	c, err := i.store.GetChallenge(ctx, id, time.Time{})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.Challenge{}, ErrUnknown
	case errors.Is(err, store.ErrExpired):
		return store.Challenge{}, ErrExpired
	case err != nil:
		return store.Challenge{}, fmt.Errorf("unable to look up challenge: %w", err)
	}
	if c.Expired(i.now()) {
		return c, ErrExpired
	}
	return c, nil
}

// Consume removes the challenge and durably records r, the receipt of its
// decision, and node, the node's record when the answer was verified (nil
// leaves the record as it is), in one commit, so a challenge is answered at
// most once. It returns ErrUnknown, having recorded nothing, when the
// challenge is already gone: a concurrent answer consumed it first. On
// success r.ID is set.
func (i *Issuer) Consume(ctx context.Context, id string, r *store.Receipt, node *store.NodeRecord) error {
	err := i.store.ConsumeChallenge(ctx, id, r, node)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return ErrUnknown
	case err != nil:
		return fmt.Errorf("unable to consume challenge: %w", err)
	}
	return nil
}

// MakeCredential performs TPM2_MakeCredential in software: it encrypts secret
// to the EK so that TPM2_ActivateCredential releases it only for an object
// named akName in the same TPM. It returns the TPM2B_ID_OBJECT and the
// TPM2B_ENCRYPTED_SECRET.
func MakeCredential(ek *tpm2.TPMTPublic, akName, secret []byte) (credentialBlob, encryptedSecret []byte, err error) {
	key, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to use EK for credential activation: %w", err)
	}
	idObject, encSecret, err := tpm2.CreateCredential(rand.Reader, key, akName, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to make credential: %w", err)
	}
	return sized(idObject), sized(encSecret), nil
}

// sized prefixes b with its 16-bit big-endian length, as in every TPM2B.
func sized(b []byte) []byte {
	out := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(b)), uint16(len(b)))
	return append(out, b...)
}
