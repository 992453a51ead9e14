// Package challenge makes and opens the single-use secrets that bind an
// attestation to one TPM: each secret is encrypted with MakeCredential to
// the node's EK for its AK's name, so only the TPM holding both keys can
// recover it. A challenge is a token sealed under a key all replicas share
// (see KeyRing), so issuing one writes nothing; it is accepted once, before
// it expires, because the decision on it is recorded under its ID in the
// same transaction as the decision's receipt. This package never touches a
// TPM.
package challenge

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmcred"
)

// SecretSize is the size of the activation secret in bytes.
const SecretSize = 32

// DefaultTTL is how long a challenge stays valid when Opts.TTL is zero.
const DefaultTTL = 60 * time.Second

// MaxTTL is the longest a challenge may be configured to stay valid.
const MaxTTL = 10 * time.Minute

// MaxClockSkew is the largest difference between replicas' clocks that
// single use survives: a token expiring further than MaxTTL+MaxClockSkew
// ahead of this replica's clock is refused, and used-challenge markers
// outlive their challenge by store.MarkerGrace, more than both.
const MaxClockSkew = 5 * time.Minute

// Errors returned by Open.
var (
	// ErrUnknown: the ID is not a challenge token this broker's keys
	// sealed (malformed, forged, tampered, or sealed by a key long gone).
	ErrUnknown = errors.New("challenge is unknown or already used")
	// ErrExpired: the challenge's time is up.
	ErrExpired = errors.New("challenge has expired")
	// ErrMismatch: the EK or AK material presented with the answer is not
	// what the challenge was issued for.
	ErrMismatch = errors.New("challenge was issued for another EK or AK")
)

// Opts configure an Issuer. The zero value is the safe default.
type Opts struct {
	// TTL is how long a challenge may be answered; default DefaultTTL, at
	// most MaxTTL.
	TTL time.Duration
	// KeyRotation is how long a challenge key seals new challenges;
	// default DefaultKeyRotation.
	KeyRotation time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// Epoch is the Epoch of the indexed verify.Trust the Issuer's caller
	// verifies nodes under (zero: none). Each challenge then carries the
	// node's Vouch, and Open returns it for a challenge issued under the
	// same epoch, so that the node is verified once per challenge.
	Epoch [16]byte
}

// Issuer makes challenges and opens their answers. A challenge costs no
// store write: its ID is a token sealed with a key every replica sharing
// the store holds (KeyRing), so any replica can open it. Single use is
// enforced where the decision is recorded (store.Decisions.Record with
// Challenge.ID).
type Issuer struct {
	keys  *KeyRing
	ttl   time.Duration
	now   func() time.Time
	epoch [16]byte
}

// New returns an Issuer whose keys are kept in s.
func New(s store.ChallengeKeys, opts Opts) *Issuer {
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	opts.TTL = min(opts.TTL, MaxTTL)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Issuer{keys: NewKeyRing(s, opts.KeyRotation, opts.Now), ttl: opts.TTL, now: opts.Now, epoch: opts.Epoch}
}

// Evidence is what the node presented with its challenge request, and
// presents again with its answer; the challenge carries its digest.
type Evidence struct {
	EKPublic        []byte
	EKCertificate   []byte
	EKIntermediates [][]byte
	AKPublic        []byte
}

// Issued is a challenge as sent to the node.
type Issued struct {
	ID              string // the sealed token
	CredentialBlob  []byte // TPM2B_ID_OBJECT
	EncryptedSecret []byte // TPM2B_ENCRYPTED_SECRET
	ExpiresAt       time.Time
}

// Challenge is an answered challenge, opened.
type Challenge struct {
	// ID names the challenge in the store (its used-up marker) and in
	// receipts: IDOf the token.
	ID string
	Evidence
	// SecretHash is the SHA-256 of the activation secret.
	SecretHash [32]byte
	ExpiresAt  time.Time
	// Vouch is the node's verify.Vouch when this Issuer's epoch issued
	// the challenge (verify.NodeVouched may then stand for verify.Node);
	// nil otherwise.
	Vouch *verify.Vouch
}

// Issue makes a fresh secret for a verified node, encrypts it to the node's
// EK for its AK name, and seals its hash, the digest of ev and the expiry
// into the challenge ID. The secret is never kept.
func (i *Issuer) Issue(ctx context.Context, node *verify.NodeIdentity, ev Evidence) (*Issued, error) {
	return i.issue(ctx, node, ev, node.Vouch())
}

func (i *Issuer) issue(ctx context.Context, node *verify.NodeIdentity, ev Evidence, vouch verify.Vouch) (*Issued, error) {
	key, err := i.keys.sealing(ctx)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, SecretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("unable to generate challenge secret: %w", err)
	}
	defer clear(secret)
	blob, encSecret, err := MakeCredentialTo(node.EKKey(), node.AKName(), secret)
	if err != nil {
		return nil, err
	}
	c := claims{secretHash: sha256.Sum256(secret), evidenceDigest: evidenceDigest(ev), expiresAt: i.now().Add(i.ttl)}
	if i.epoch != ([16]byte{}) {
		c.epoch, c.vouch = i.epoch, vouch
	}
	token, err := seal(key, c)
	if err != nil {
		return nil, err
	}
	return &Issued{ID: token, CredentialBlob: blob, EncryptedSecret: encSecret, ExpiresAt: c.expiresAt}, nil
}

// Open reads a challenge token answered with ev. It returns ErrUnknown for
// anything that is not a token sealed by a current key, ErrMismatch when ev
// is not what the challenge was issued for, and ErrExpired, together with
// the challenge (so that the refusal can be recorded), when its time is up.
// It never writes: whether the challenge was used already is for the
// decision's record to find.
func (i *Issuer) Open(ctx context.Context, token string, ev Evidence) (Challenge, error) {
	raw, keyID, ok := tokenKeyID(token)
	if !ok {
		return Challenge{}, ErrUnknown
	}
	key, ok, err := i.keys.opening(ctx, keyID)
	if err != nil {
		return Challenge{}, err
	}
	if !ok {
		return Challenge{}, ErrUnknown
	}
	c, ok := open(key, raw)
	if !ok {
		return Challenge{}, ErrUnknown
	}
	want := evidenceDigest(ev)
	if subtle.ConstantTimeCompare(want[:], c.evidenceDigest[:]) != 1 {
		return Challenge{}, ErrMismatch
	}
	now := i.now()
	if c.expiresAt.After(now.Add(MaxTTL + MaxClockSkew)) {
		// Sealed by a replica whose clock runs far ahead: its marker could
		// be gone while this replica still accepts the token.
		return Challenge{}, ErrUnknown
	}
	ch := Challenge{ID: IDOf(token), Evidence: ev, SecretHash: c.secretHash, ExpiresAt: c.expiresAt}
	if i.epoch != ([16]byte{}) && subtle.ConstantTimeCompare(c.epoch[:], i.epoch[:]) == 1 {
		ch.Vouch = &c.vouch
	}
	if !now.Before(c.expiresAt) {
		return ch, ErrExpired
	}
	return ch, nil
}

// MakeCredential performs TPM2_MakeCredential in software: it encrypts secret
// to the EK so that TPM2_ActivateCredential releases it only for an object
// named akName in the same TPM. It returns the TPM2B_ID_OBJECT and the
// TPM2B_ENCRYPTED_SECRET. It parses ek on every call; MakeCredentialTo
// takes an EK parsed once.
func MakeCredential(ek *tpm2.TPMTPublic, akName, secret []byte) (credentialBlob, encryptedSecret []byte, err error) {
	key, err := tpmcred.NewKey(ek)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to use EK for credential activation: %w", err)
	}
	return MakeCredentialTo(key, akName, secret)
}

// MakeCredentialTo is MakeCredential to an EK already parsed, such as
// verify.NodeIdentity.EKKey.
func MakeCredentialTo(ek *tpmcred.Key, akName, secret []byte) (credentialBlob, encryptedSecret []byte, err error) {
	idObject, encSecret, err := ek.MakeCredential(rand.Reader, akName, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to make credential: %w", err)
	}
	return tpmcred.AppendTPM2B(make([]byte, 0, 2+len(idObject)), idObject),
		tpmcred.AppendTPM2B(make([]byte, 0, 2+len(encSecret)), encSecret), nil
}
