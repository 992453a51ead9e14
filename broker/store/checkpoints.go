package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Checkpoints reads the receipt chain's head and keeps the signed
// checkpoints of it. Who signs, and when, is the caller's business (the
// broker's receipt_checkpoints); the store only keeps them, one per
// sequence number. Implementations are safe for concurrent use.
type Checkpoints interface {
	// ChainHead returns the newest receipt's Seq and hash (Seq 0 and
	// GenesisHash when no chained receipt was ever written).
	ChainHead(ctx context.Context) (ChainHead, error)
	// PutCheckpoint stores c, or returns an error wrapping ErrExists when
	// a checkpoint of c.Seq is stored already.
	PutCheckpoint(ctx context.Context, c Checkpoint) error
	// ListCheckpoints returns the checkpoints whose Seq is above after,
	// lowest Seq first, at most limit (as ListOpts.Limit).
	ListCheckpoints(ctx context.Context, after uint64, limit int) ([]Checkpoint, error)
}

// Checkpoint is a signed chain head: the signer vouches that receipt Seq
// of the chain has hash Head, and so, through the Prev hashes, for every
// receipt before it.
type Checkpoint struct {
	Seq  uint64    `json:"seq"`
	Head string    `json:"head"`
	Time time.Time `json:"time"`
	// KeyID names the signing key (issue.KeyID of its public key).
	KeyID string `json:"key_id"`
	// Signature is an ASN.1 DER ECDSA P-256 signature over the SHA-256 of
	// SignedMessage.
	Signature []byte `json:"signature"`
}

// maxSignatureLength bounds a checkpoint's signature (a P-256 DER
// signature is at most 72 bytes).
const maxSignatureLength = 256

// SignedMessage is what a checkpoint's signature covers, as text:
//
//	keybroker receipt checkpoint v1
//	seq <Seq in decimal>
//	head <Head>
//	time <Time, UTC, RFC 3339 with nanoseconds>
//	key <KeyID>
//
// each line ending in "\n".
func (c Checkpoint) SignedMessage() []byte {
	return fmt.Appendf(nil, "keybroker receipt checkpoint v1\nseq %d\nhead %s\ntime %s\nkey %s\n",
		c.Seq, c.Head, c.Time.UTC().Format(time.RFC3339Nano), c.KeyID)
}

// Validate checks that c can be stored (not its signature).
func (c Checkpoint) Validate() error {
	var errs []error
	if c.Seq == 0 {
		errs = append(errs, errors.New("checkpoint seq cannot be 0"))
	}
	if len(c.Head) != len(GenesisHash) {
		errs = append(errs, errors.New("checkpoint head must be a hex SHA-256"))
	}
	if c.KeyID == "" || len(c.KeyID) > MaxIDLength {
		errs = append(errs, fmt.Errorf("checkpoint key id must be 1 to %d characters", MaxIDLength))
	}
	if len(c.Signature) == 0 || len(c.Signature) > maxSignatureLength {
		errs = append(errs, fmt.Errorf("checkpoint signature must be 1 to %d bytes", maxSignatureLength))
	}
	return errors.Join(errs...)
}

// Sealer signs a checkpoint of head. DeleteReceiptsBefore calls it for the
// receipt that will be the last deleted, so that the chain left behind
// begins right after a signed checkpoint.
type Sealer func(head ChainHead) (Checkpoint, error)
