package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits on what a Challenge may hold, so that a caller cannot make the store
// keep arbitrary amounts of data for a request that never completes.
const (
	// MaxChallengeBytes bounds the sum of a Challenge's byte fields (EK
	// public, EK certificate, intermediates, AK public).
	MaxChallengeBytes = 64 << 10
	// MaxIntermediates bounds the number of EK intermediate certificates.
	MaxIntermediates = 16
	// MaxIDLength bounds challenge and receipt IDs.
	MaxIDLength = 128
)

// Limits for ListReceipts and ListNodes.
const (
	// DefaultListLimit is used when ListOpts.Limit is zero.
	DefaultListLimit = 100
	// MaxListLimit is the largest number of receipts or node records one
	// call returns; larger limits are lowered to it.
	MaxListLimit = 1000
)

var (
	// ErrNotFound is returned for a challenge, receipt or node record that
	// does not exist, including a challenge that was already consumed.
	ErrNotFound = errors.New("not found")
	// ErrExpired is returned by GetChallenge for a challenge whose expiry
	// has passed; the challenge stays until PurgeExpired deletes it.
	ErrExpired = errors.New("challenge expired")
	// ErrLocked is returned by OpenBolt when another process holds the store.
	ErrLocked = errors.New("locked by another process")
)

// Challenge is an outstanding credential-activation challenge: what the node
// presented and the hash of the secret it must prove it activated.
type Challenge struct {
	// ID is random, URL-safe and made by the caller (32 characters by
	// convention; at most MaxIDLength of [A-Za-z0-9._-]).
	ID string
	// EKPublic is the EK public area (TPMT_PUBLIC) as sent by the node.
	EKPublic []byte
	// EKCertificate is the EK certificate (DER) as sent, if any.
	EKCertificate []byte
	// EKIntermediates are the intermediate certificates (DER) as sent.
	EKIntermediates [][]byte
	// AKPublic is the AK public area (TPMT_PUBLIC) as sent.
	AKPublic []byte
	// SecretHash is the SHA-256 of the activation secret. The secret
	// itself is never stored.
	SecretHash [32]byte
	// ExpiresAt is when the challenge stops being accepted. A challenge is
	// expired once now is not before ExpiresAt. It must be set.
	ExpiresAt time.Time
}

// Expired reports whether c is no longer valid at now.
func (c Challenge) Expired(now time.Time) bool {
	return !now.Before(c.ExpiresAt)
}

// Validate checks that c can be stored: a well-formed ID, an expiry, and byte
// fields within MaxChallengeBytes.
func (c Challenge) Validate() error {
	var errs []error
	if err := validateID(c.ID); err != nil {
		errs = append(errs, fmt.Errorf("challenge id %w", err))
	}
	if c.ExpiresAt.IsZero() {
		errs = append(errs, errors.New("challenge expiry cannot be zero"))
	}
	if len(c.EKIntermediates) > MaxIntermediates {
		errs = append(errs, fmt.Errorf("challenge has %d ek intermediates, at most %d allowed",
			len(c.EKIntermediates), MaxIntermediates))
	}
	n := len(c.EKPublic) + len(c.EKCertificate) + len(c.AKPublic)
	for _, b := range c.EKIntermediates {
		n += len(b)
	}
	if n > MaxChallengeBytes {
		errs = append(errs, fmt.Errorf("challenge holds %d bytes, at most %d allowed", n, MaxChallengeBytes))
	}
	return errors.Join(errs...)
}

// validateID returns an error completing "challenge id ..." or "receipt id ...".
func validateID(id string) error {
	switch {
	case id == "":
		return errors.New("cannot be empty")
	case len(id) > MaxIDLength:
		return fmt.Errorf("is longer than %d characters", MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		switch ch := id[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9', ch == '-', ch == '_', ch == '.':
		default:
			return errors.New("must contain only [A-Za-z0-9._-]")
		}
	}
	return nil
}

// Receipt records one attestation decision and what was released. Receipts
// are written before anything is released, and never changed afterwards.
type Receipt struct {
	// ID is assigned by PutReceipt (or ConsumeChallenge) when empty: the UTC time followed by
	// random hex, e.g. "20240102T150405.000000000Z-0a1b2c3d", so that IDs
	// sort in time order.
	ID string `json:"id"`
	// Time is when the decision was made; PutReceipt (or ConsumeChallenge)
	// sets it to the current time when zero.
	Time        time.Time `json:"time"`
	ChallengeID string    `json:"challenge_id,omitempty"`
	EKHash      string    `json:"ek_hash,omitempty"`
	AKName      []byte    `json:"ak_name,omitempty"`
	QuoteDigest []byte    `json:"quote_digest,omitempty"`
	Allowed     bool      `json:"allowed"`
	// Check names the failed check, or "policy" when policy denied; empty
	// when allowed.
	Check string `json:"check,omitempty"`
	// Failures lists every failed condition, for operators.
	Failures   []string       `json:"failures,omitempty"`
	Policies   []string       `json:"policies,omitempty"`
	PolicyHash string         `json:"policy_hash,omitempty"`
	Released   []ReleasedItem `json:"released,omitempty"`
	// DenyListed records that this refusal put the node (EKHash) on the
	// deny list. Storing the receipt applies it: a DenyListed receipt adds
	// the node to the deny list, an Allowed one removes it, in the same
	// commit. The caller decides which refusals deny-list a node.
	DenyListed bool `json:"deny_listed,omitempty"`
}

// ReleasedItem describes one credential released under a receipt. It never
// holds the credential itself.
type ReleasedItem struct {
	Name     string    `json:"name"`
	Type     string    `json:"type"`
	Mode     string    `json:"mode"`
	Serial   string    `json:"serial,omitempty"`
	NotAfter time.Time `json:"not_after,omitzero"`
	PCRBank  string    `json:"pcr_bank,omitempty"`
	PCRs     []uint32  `json:"pcrs,omitempty"`
	// SPIFFEID is the ID of an X.509-SVID.
	SPIFFEID spiffeid.ID `json:"spiffe_id,omitzero"`
}

// ListOpts selects receipts for ListReceipts. The zero value returns the
// newest DefaultListLimit receipts.
type ListOpts struct {
	// Limit is the most receipts to return: 0 means DefaultListLimit, and
	// values above MaxListLimit are lowered to it. Negative is an error.
	Limit int
	// EKHash, when set, returns only receipts for this EK.
	EKHash string
	// Before, when set, returns only receipts whose ID sorts before it: pass
	// the last ID of one page to get the next.
	Before string
}

// Store is the broker's state. Implementations are safe for concurrent use.
type Store interface {
	// PutChallenge stores a new challenge. It fails if the challenge does
	// not validate or its ID already exists.
	PutChallenge(ctx context.Context, c Challenge) error
	// GetChallenge returns the challenge without consuming it. It returns
	// ErrNotFound for an unknown, consumed or malformed ID and ErrExpired
	// for a challenge expired at now. It never writes.
	GetChallenge(ctx context.Context, id string, now time.Time) (Challenge, error)
	// ConsumeChallenge deletes the challenge and stores r, the receipt of
	// its decision (applying its deny-list change, see
	// Receipt.DenyListed), in one durable commit: when it returns nil both
	// are on disk, and r.ID and r.Time are set as PutReceipt sets them. If the
	// challenge is gone (consumed, purged or never stored) it stores nothing
	// and returns ErrNotFound, so under concurrency exactly one call per
	// challenge succeeds and exactly one receipt is stored. It does not
	// check expiry: the caller checked it with GetChallenge.
	//
	// A non-nil node is written in the same commit, replacing the node's
	// record: its LastReceiptID is set to r.ID, and a zero FirstSeen to
	// LastSeen. A node record that does not validate (no EK hash, more than
	// MaxNodeRecordBytes, malformed SVID serials) fails the call and
	// nothing is stored. A nil node leaves node records untouched. The
	// node's SVIDs replace those of its previous record in the
	// NodeBySVIDSerial index.
	ConsumeChallenge(ctx context.Context, id string, r *Receipt, node *NodeRecord) error
	// PutReceipt durably stores r before returning, assigning r.ID (and
	// r.Time) when empty, and applies its deny-list change (see
	// Receipt.DenyListed). An existing ID is never overwritten.
	PutReceipt(ctx context.Context, r *Receipt) error
	// ListReceipts returns receipts newest first (by ID).
	ListReceipts(ctx context.Context, opts ListOpts) ([]Receipt, error)
	// GetReceipt returns one receipt, or ErrNotFound.
	GetReceipt(ctx context.Context, id string) (Receipt, error)
	// GetNode returns the record of the node with this EK hash, or
	// ErrNotFound.
	GetNode(ctx context.Context, ekHash string) (NodeRecord, error)
	// ListNodes returns node records in EK hash order.
	ListNodes(ctx context.Context, opts ListNodesOpts) ([]NodeRecord, error)
	// NodeBySVIDSerial returns the record of the node whose last
	// attestation released the node X.509-SVID with this serial (lowercase
	// hex, as NodeSVID.Serial), or ErrNotFound: also for the SVIDs of an
	// earlier attestation, which the node's next attestation replaced.
	NodeBySVIDSerial(ctx context.Context, serial string) (NodeRecord, error)
	// GetDenial returns the deny-list entry of the node with this EK hash,
	// or ErrNotFound when the node is not on the deny list.
	GetDenial(ctx context.Context, ekHash string) (Denial, error)
	// PurgeExpired deletes challenges expired at now and returns how many.
	PurgeExpired(ctx context.Context, now time.Time) (int, error)
	// Close releases the store.
	Close() error
}
