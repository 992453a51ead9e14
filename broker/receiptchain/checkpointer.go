package receiptchain

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// Checkpointer signs the head of one store's receipt chain when it is due:
// once Every receipts were added since the last checkpoint, or Interval
// after it when receipts were added at all; or on demand. The broker and
// the Vault auth method both schedule their checkpoints with it. It is
// safe for concurrent use.
type Checkpointer struct {
	st       store.Checkpoints
	signer   *Signer
	every    uint64
	interval time.Duration

	mu     sync.Mutex
	last   uint64    // the newest head signed or found signed
	lastAt time.Time // when
}

// NewCheckpointer returns a Checkpointer of st's chain signing with signer
// every receipts or interval apart (every 0 is 1).
func NewCheckpointer(st store.Checkpoints, signer *Signer, every uint64, interval time.Duration) *Checkpointer {
	return &Checkpointer{st: st, signer: signer, every: max(every, 1), interval: interval}
}

// Sign signs the head when it is due (or, with force, when it moved since
// the last checkpoint) and returns the head the newest checkpoint covers,
// and whether it signed it now. The first call after NewCheckpointer
// signs any head not signed before (a checkpoint of it already stored is
// kept).
func (c *Checkpointer) Sign(ctx context.Context, now time.Time, force bool) (store.ChainHead, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	head, err := c.st.ChainHead(ctx)
	if err != nil {
		return store.ChainHead{}, false, err
	}
	if head.Seq == 0 || head.Seq == c.last {
		return head, false, nil
	}
	if !force && head.Seq-c.last < c.every && now.Sub(c.lastAt) < c.interval {
		return head, false, nil
	}
	cp, err := c.signer.Seal(head)
	if err != nil {
		return store.ChainHead{}, false, err
	}
	// Another writer of the same store may have signed this head first.
	if err := c.st.PutCheckpoint(ctx, cp); err != nil && !errors.Is(err, store.ErrExists) {
		return store.ChainHead{}, false, err
	}
	c.last, c.lastAt = head.Seq, now
	return head, true, nil
}
