package broker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// ExportOpts select the receipts ExportReceipts exports. The zero value
// selects every receipt.
type ExportOpts struct {
	// EKHash, when set, selects only the receipts of this EK.
	EKHash string
	// After, when set, selects only receipts made at or after it.
	After time.Time
	// Before, when set, selects only receipts made before it.
	Before time.Time
}

// ExportReceipts calls emit with every receipt opts select, newest first
// (the order of receipt IDs, which is time order), and returns how many it
// emitted. It reads store.MaxListLimit receipts at a time, through the
// running broker's admin socket or, when none runs, from the store opened
// once (always for etcd), so that it works on any number of receipts.
// Receipts written while it runs, newer than the first it read, are not
// exported.
func ExportReceipts(ctx context.Context, cfg *Config, opts ExportOpts, emit func(store.Receipt) error) (int, error) {
	if !opts.After.IsZero() && !opts.Before.IsZero() && !opts.After.Before(opts.Before) {
		return 0, fmt.Errorf("after (%s) must be before before (%s)", opts.After.Format(time.RFC3339), opts.Before.Format(time.RFC3339))
	}
	list := func(o store.ListOpts) ([]store.Receipt, error) { return ListReceipts(ctx, cfg, o) }
	if _, ok := liveSocket(cfg); !ok {
		st, err := OpenStore(ctx, cfg, StoreOpts{ReadOnly: true, LockTimeout: 2 * time.Second})
		if err != nil {
			return 0, err
		}
		defer st.Close()
		list = func(o store.ListOpts) ([]store.Receipt, error) { return st.ListReceipts(ctx, o) }
	}
	return exportPages(ctx, list, opts, emit)
}

// exportPages pages through list, newest first, from opts.Before down to
// opts.After.
func exportPages(ctx context.Context, list func(store.ListOpts) ([]store.Receipt, error), opts ExportOpts, emit func(store.Receipt) error) (int, error) {
	lo := store.ListOpts{Limit: store.MaxListLimit, EKHash: opts.EKHash}
	if !opts.Before.IsZero() {
		lo.Before = receiptIDAt(opts.Before)
	}
	var floor string
	if !opts.After.IsZero() {
		floor = receiptIDAt(opts.After)
	}
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		rs, err := list(lo)
		if err != nil {
			return n, fmt.Errorf("unable to list receipts (after %d exported): %w", n, err)
		}
		for _, r := range rs {
			if r.ID < floor {
				return n, nil
			}
			if err := emit(r); err != nil {
				return n, err
			}
			n++
		}
		if len(rs) < lo.Limit {
			return n, nil
		}
		lo.Before = rs[len(rs)-1].ID
	}
}

// receiptIDAt is the smallest receipt ID made at t (store.NewReceiptID
// without its random part): IDs made before t sort before it, IDs made at
// or after t do not.
func receiptIDAt(t time.Time) string {
	id, _, _ := strings.Cut(store.NewReceiptID(t), "-")
	return id
}
