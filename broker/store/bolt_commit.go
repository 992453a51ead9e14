package store

import (
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Group commit for Bolt.Record: concurrent decisions share one bbolt write
// transaction and so one fsync, and nothing is answered before the commit
// that holds it is durable.
//
// One goroutine commits. A decision arriving while the store is idle is
// committed at once; while the store is busy (the previous commit carried
// more than one decision) the committer waits up to batchDelay, or until
// maxBatch decisions are queued, so that a boot storm's decisions share
// commits. Decisions are encoded by their callers before they queue, so
// the serialized part is only the transaction itself.

const (
	// batchDelay is the longest a decision waits for others while the
	// store is busy.
	batchDelay = 10 * time.Millisecond
	// maxBatch bounds the decisions of one commit.
	maxBatch = 256
)

// ErrClosed is returned by writes to a closed store.
var ErrClosed = errors.New("the store is closed")

// pending is a queued decision with its encodings.
type pending struct {
	d *Decision
	*encoded
	keys boltKeys
	done chan error
}

// CommitObserver is told of each commit of decisions: how many it
// carried, how long the transaction took (fsync included), and whether it
// failed.
type CommitObserver func(decisions int, took time.Duration, err error)

// committer is the Bolt's group commit.
type committer struct {
	db       *bolt.DB
	mu       sync.Mutex
	queue    []*pending
	closed   bool
	wake     chan struct{} // a decision was queued
	stopped  chan struct{} // closed when the loop has ended
	observer CommitObserver
}

func newCommitter(db *bolt.DB) *committer {
	c := &committer{db: db, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	go c.loop()
	return c
}

// submit queues p and waits for its commit.
func (c *committer) submit(p *pending) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.queue = append(c.queue, p)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return <-p.done
}

// close commits what is queued, then stops the loop.
func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	<-c.stopped
}

func (c *committer) loop() {
	defer close(c.stopped)
	last := 0 // decisions in the previous commit
	for {
		<-c.wake
		if last > 1 {
			c.gather()
		}
		c.mu.Lock()
		batch, closed := c.queue, c.closed
		c.queue = nil
		if len(batch) > maxBatch {
			c.queue, batch = batch[maxBatch:], batch[:maxBatch]
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
		c.mu.Unlock()
		if len(batch) > 0 {
			c.commit(batch)
		}
		last = len(batch)
		c.mu.Lock()
		done := closed && len(c.queue) == 0
		c.mu.Unlock()
		if done {
			return
		}
	}
}

// gather waits up to batchDelay for the queue to fill to maxBatch.
func (c *committer) gather() {
	timer := time.NewTimer(batchDelay)
	defer timer.Stop()
	for {
		c.mu.Lock()
		full := len(c.queue) >= maxBatch || c.closed
		c.mu.Unlock()
		if full {
			return
		}
		select {
		case <-timer.C:
			return
		case <-c.wake:
		}
	}
}

// errBatchAbort carries the failure that rolled a shared transaction back.
type errBatchAbort struct{ err error }

func (e errBatchAbort) Error() string { return e.err.Error() }

// commit writes batch in one transaction. A decision whose challenge is
// used already (ErrConsumed) writes nothing and fails alone. Any other
// failure rolls the transaction back; the decisions are then committed one
// by one, so that one bad decision fails only itself.
func (c *committer) commit(batch []*pending) {
	results := make([]error, len(batch))
	start := time.Now()
	err := c.db.Update(func(tx *bolt.Tx) error {
		chain := tx.Bucket(bucketChain)
		head, err := decodeHead(chain.Get(keyChainHead))
		if err != nil {
			return err
		}
		start, dtx := head.Seq, newDecisionTx(tx)
		for i, p := range batch {
			err := dtx.apply(p, &head)
			if err != nil && !errors.Is(err, ErrConsumed) {
				return errBatchAbort{err}
			}
			results[i] = err
		}
		if head.Seq == start {
			return nil
		}
		return chain.Put(keyChainHead, encodeHead(head))
	})
	c.observe(len(batch), time.Since(start), err)
	var abort errBatchAbort
	switch {
	case err == nil:
		for i, p := range batch {
			p.done <- results[i]
		}
	case len(batch) == 1:
		if errors.As(err, &abort) {
			err = abort.err
		}
		batch[0].done <- err
	case errors.As(err, &abort):
		for _, p := range batch {
			c.commit([]*pending{p})
		}
	default: // the commit itself failed: so would any other
		for _, p := range batch {
			p.done <- err
		}
	}
}

func (c *committer) observe(n int, took time.Duration, err error) {
	c.mu.Lock()
	o := c.observer
	c.mu.Unlock()
	if o != nil {
		o(n, took, err)
	}
}

// ObserveCommits has o told of each commit of decisions from now on (nil:
// none), for metrics. A read-only store commits nothing.
func (b *Bolt) ObserveCommits(o CommitObserver) {
	if b.commits == nil {
		return
	}
	b.commits.mu.Lock()
	b.commits.observer = o
	b.commits.mu.Unlock()
}

// apply writes one decision: the challenge's marker (refusing a used
// challenge, ErrConsumed, before anything is written), the receipt,
// chained after head (which it moves), the node record and the deny-list
// change.
func (t *decisionTx) apply(p *pending, head *ChainHead) error {
	d, k := p.d, &p.keys
	if k.challenge != nil {
		if t.consumed.Get(k.challenge) != nil {
			return ErrConsumed
		}
		if err := t.consumed.Put(k.challenge, k.marker); err != nil {
			return err
		}
	}
	if err := t.putReceipt(d.Receipt, k, p.receipt, head); err != nil {
		return err
	}
	if p.node != nil {
		if err := t.putNode(&p.stored, k.node, p.node, p.log); err != nil {
			return err
		}
	}
	if err := t.forgetNode(d.ForgetNode); err != nil {
		return err
	}
	return t.applyDeny(d, k.ekHash, p.denial)
}
