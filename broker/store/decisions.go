package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// DenyChange is what a decision does to its node's deny-list entry. The
// broker decides it (see broker's deny-list rule); the store only applies it.
type DenyChange int

const (
	// DenyUnchanged leaves the deny list as it is.
	DenyUnchanged DenyChange = iota
	// DenyAdd puts the receipt's node on the deny list, naming the receipt.
	DenyAdd
	// DenyRemove takes the receipt's node off the deny list.
	DenyRemove
)

// Decision is everything one decision writes, in one transaction: the
// marker that uses up its challenge, its receipt, the node's new record and
// its deny-list change.
type Decision struct {
	// ChallengeID names the challenge the decision uses up; a second
	// decision on the same ID fails with ErrConsumed and writes nothing.
	// Empty for a decision on no challenge (an operator's action).
	ChallengeID string
	// ChallengeExpiry is when the challenge stops being accepted: the
	// marker is kept at least MarkerGrace past it.
	ChallengeExpiry time.Time
	// Receipt is stored; an empty ID (and zero Time) is assigned
	// (NewReceiptID) and written back.
	Receipt *Receipt
	// Node, when non-nil, replaces the record of Node.EKHash; its
	// LastReceiptID is set to the receipt's ID. The caller sets FirstSeen.
	Node *NodeRecord
	// ForgetNode, when not empty, deletes the record of this EK hash and
	// its SVIDs' index entries (an operator forgetting a node).
	ForgetNode string
	// Deny changes the deny-list entry of Receipt.EKHash.
	Deny DenyChange
}

// MarkerGrace is how long past its challenge's expiry a used-challenge
// marker is kept. Replicas' clocks differ: a replica whose clock lags still
// accepts a challenge after another replica's clock says it expired, so the
// marker must outlive the expiry by more than the clock difference allowed
// (challenge.MaxClockSkew) and the longest challenge TTL.
const MarkerGrace = 15 * time.Minute

// Decisions records decisions. Implementations are safe for concurrent use.
type Decisions interface {
	// Record writes d durably and atomically: when it returns nil the
	// marker, the receipt (chained: its Seq and Prev set, also in
	// d.Receipt), the node record and the deny-list change are all stored
	// (fsync'd, or committed by a quorum); on error none is. Of
	// concurrent Records with one ChallengeID exactly one succeeds; the
	// others return an error wrapping ErrConsumed.
	Record(ctx context.Context, d *Decision) error
	// Used reports whether a decision on the challenge was recorded (while
	// its marker lasts, at least until the challenge expires): a read that
	// lets a replayed answer be refused before any work. Only Record
	// decides: a concurrent answer may record first.
	Used(ctx context.Context, challengeID string) (bool, error)
	// PurgeConsumed deletes the markers whose challenge expired more than
	// MarkerGrace before now (a backend whose markers expire by themselves
	// returns 0) and returns how many.
	PurgeConsumed(ctx context.Context, now time.Time) (int, error)
}

// Validate checks that d can be recorded.
func (d *Decision) Validate() error {
	var errs []error
	r := d.Receipt
	switch {
	case r == nil:
		return errors.New("decision receipt cannot be nil")
	case d.ChallengeID != "" && d.ChallengeExpiry.IsZero():
		errs = append(errs, errors.New("challenge expiry cannot be zero"))
	case d.ChallengeID != "" && validateID(d.ChallengeID) != nil:
		errs = append(errs, fmt.Errorf("challenge id %w", validateID(d.ChallengeID)))
	}
	if r.ID != "" {
		if err := validateID(r.ID); err != nil {
			errs = append(errs, fmt.Errorf("receipt id %w", err))
		}
	}
	if len(r.EKHash) > maxEKHashLength {
		errs = append(errs, fmt.Errorf("ek hash is longer than %d bytes", maxEKHashLength))
	}
	switch {
	case d.Deny == DenyAdd && r.Allowed:
		errs = append(errs, errors.New("an allowed decision cannot deny-list its node"))
	case d.Deny != DenyUnchanged && r.EKHash == "":
		errs = append(errs, errors.New("a decision without an ek hash cannot change the deny list"))
	case d.Deny < DenyUnchanged || d.Deny > DenyRemove:
		errs = append(errs, fmt.Errorf("unknown deny-list change %d", d.Deny))
	}
	if d.Node != nil {
		// Its size is checked when it is encoded, once, by the backend.
		if err := validateNode(d.Node); err != nil {
			errs = append(errs, err)
		}
	}
	if d.ForgetNode != "" && d.Node != nil {
		errs = append(errs, errors.New("a decision cannot both write and forget a node record"))
	}
	return errors.Join(errs...)
}

// encoded is a decision in its stored forms.
type encoded struct {
	receipt []byte     // the receipt without Seq and Prev (chainReceipt adds them)
	stored  NodeRecord // the node record as stored: its event log apart (splitEventLog)
	node    []byte     // stored, encoded (nil: no node record)
	log     []byte     // the node's event log (nil: none)
	denial  []byte     // the deny-list entry the decision adds (nil: none)
}

// prepare validates d, fills in the receipt's time and ID and the node's
// LastReceiptID, and encodes it once for the backend: what every backend
// does before writing. A decision that cannot be encoded is refused as it
// was given, unchanged.
func (d *Decision) prepare() (*encoded, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	r := *d.Receipt
	if r.Time.IsZero() {
		r.Time = time.Now().UTC().Round(0)
	}
	if r.ID == "" {
		r.ID = NewReceiptID(r.Time)
	}
	r.DenyListed = d.Deny == DenyAdd
	r.Seq, r.Prev = 0, "" // the commit chains it
	enc := &encoded{}
	var err error
	if enc.receipt, err = EncodeReceipt(&r); err != nil {
		return nil, err
	}
	var node *NodeRecord
	if d.Node != nil {
		n := *d.Node
		n.LastReceiptID = r.ID
		enc.stored, enc.log = splitEventLog(n)
		if enc.node, err = encodeNode(enc.stored); err != nil {
			return nil, err
		}
		node = &n
	}
	if d.Deny == DenyAdd {
		den := Denial{EKHash: r.EKHash, Time: r.Time, ReceiptID: r.ID, Check: r.Check}
		if enc.denial, err = json.Marshal(den); err != nil {
			return nil, fmt.Errorf("unable to encode denial: %w", err)
		}
	}
	*d.Receipt = r
	if node != nil {
		*d.Node = *node
	}
	return enc, nil
}
