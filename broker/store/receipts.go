package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"
)

// Receipts reads the receipts that Decisions.Record wrote, and deletes them
// once they are past the broker's retention. Implementations are safe for
// concurrent use.
type Receipts interface {
	// ListReceipts returns receipts newest first (by ID).
	ListReceipts(ctx context.Context, opts ListOpts) ([]Receipt, error)
	// GetReceipt returns one receipt, or ErrNotFound.
	GetReceipt(ctx context.Context, id string) (Receipt, error)
	// DeleteReceiptsBefore deletes at most limit receipts whose ID sorts
	// before the IDs made at before (NewReceiptID), and returns how many
	// it deleted. Chained receipts go in chain order, from the lowest Seq,
	// up to the first one made at or after before, so that the chain left
	// has no gap; the checkpoint seal signs for the last one deleted is
	// stored in the same transaction (and older checkpoints deleted), so
	// that the chain left begins right after a signed checkpoint. With a
	// nil seal only receipts written before chaining (Seq 0) are deleted.
	DeleteReceiptsBefore(ctx context.Context, before time.Time, limit int, seal Sealer) (int, error)
}

// receiptIDLayout formats the time part of generated receipt IDs: fixed
// width, UTC, so that IDs sort in time order.
const receiptIDLayout = "20060102T150405.000000000Z"

// NewReceiptID returns a new receipt ID for a decision at t: the UTC time
// followed by random hex, e.g. "20240102T150405.000000000Z-0a1b2c3d", so
// that IDs sort in time order.
func NewReceiptID(t time.Time) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	return t.UTC().Format(receiptIDLayout) + "-" + hex.EncodeToString(b[:])
}

// receiptIDBefore is the smallest ID made at t: every ID made before t sorts
// before it.
func receiptIDBefore(t time.Time) string { return t.UTC().Format(receiptIDLayout) }
