package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Chaining on etcd. Every decision's transaction writes the chain head
// (chain_head) and compares its mod revision with the one this process
// last saw, so that of decisions extending the chain from one head, in
// any number of processes, exactly one commits; a head another broker
// moved fails the transaction, which reads the new head in the same round
// trip (errRetry: Record tries again).
//
// Within one process the decisions waiting for the head are combined:
// whoever holds the head (chainMu) commits every queued decision that
// writes no key another of them writes, in one transaction, chained in
// queue order, so that concurrent decisions share etcd round trips instead
// of taking the head one at a time. When such a transaction fails, each of
// its decisions is tried alone, to learn which compare failed.

// Bounds of a combined transaction: etcd refuses more than 128 operations
// (--max-txn-ops) and requests above 1.5 MiB (--max-request-bytes).
const (
	maxCombinedOps   = 120
	maxCombinedBytes = 1 << 20
)

// chained is one decision's transaction, waiting for the chain head: its
// compares and writes but the receipt's own, which chaining makes.
type chained struct {
	d                     *Decision
	body                  []byte // the receipt without Seq and Prev
	receiptKey, markerKey string
	cmps                  []clientv3.Cmp
	ops                   []clientv3.Op

	done bool // set, with err, by the holder of chainMu that committed it
	err  error
}

// size is what c adds to a transaction: operations and bytes.
func (c *chained) size() (int, int) {
	n := len(c.body) + 200
	for _, op := range c.ops {
		n += len(op.KeyBytes()) + len(op.ValueBytes())
	}
	return len(c.ops) + 2, n
}

// commitChained commits c chained after the head, possibly with other
// decisions of this process, and returns its outcome.
func (e *Etcd) commitChained(ctx context.Context, c *chained) error {
	e.qmu.Lock()
	e.queue = append(e.queue, c)
	e.qmu.Unlock()
	e.chainMu.Lock()
	defer e.chainMu.Unlock()
	if c.done {
		return c.err
	}
	batch := e.takeBatch(c)
	if len(batch) > 1 {
		// The others' callers wait on this commit: bound it by the request
		// timeout alone, not by this caller's context.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.timeout)
		defer cancel()
		if e.commitBatch(bctx, batch) {
			return c.err
		}
	}
	for _, b := range batch {
		b.err, b.done = e.commitOne(ctx, b), true
		if b.err != nil {
			b.d.Receipt.Seq, b.d.Receipt.Prev = 0, ""
		}
	}
	return c.err
}

// takeBatch removes from the queue c and the queued decisions that write
// no key an earlier one of the batch writes, up to the bounds.
func (e *Etcd) takeBatch(c *chained) []*chained {
	e.qmu.Lock()
	defer e.qmu.Unlock()
	batch := []*chained{c}
	written := map[string]bool{}
	fits := func(b *chained) bool {
		for _, op := range b.ops {
			if written[string(op.KeyBytes())] {
				return false
			}
		}
		return !written[b.receiptKey]
	}
	note := func(b *chained) {
		for _, op := range b.ops {
			written[string(op.KeyBytes())] = true
		}
		written[b.receiptKey] = true
	}
	note(c)
	ops, bytes := c.size()
	rest := e.queue[:0]
	for _, b := range e.queue {
		if b == c {
			continue
		}
		n, m := b.size()
		if ops+n+1 <= maxCombinedOps && bytes+m <= maxCombinedBytes && len(b.cmps)+len(batch[0].cmps) < maxCombinedOps && fits(b) {
			batch = append(batch, b)
			note(b)
			ops, bytes = ops+n, bytes+m
			continue
		}
		rest = append(rest, b)
	}
	clear(e.queue[len(rest):])
	e.queue = rest
	return batch
}

// commitBatch tries batch in one transaction and reports whether it
// decided every decision's outcome (committed, or failed without a doubt
// about which); false leaves them to be tried alone.
func (e *Etcd) commitBatch(ctx context.Context, batch []*chained) bool {
	headKey := e.key(etcdChainHead, "")
	head, headRev := e.head, e.headRev
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(headKey), "=", headRev)}
	var ops []clientv3.Op
	for _, b := range batch {
		cmps = append(cmps, b.cmps...)
		r := b.d.Receipt
		val := head.next(r, b.body)
		ops = append(append(ops, b.ops...), clientv3.OpPut(b.receiptKey, string(val)),
			clientv3.OpPut(e.key(etcdReceiptsBySeq, seqName(r.Seq)), r.ID))
	}
	if len(cmps) > maxCombinedOps {
		return false
	}
	ops = append(ops, clientv3.OpPut(headKey, string(encodeHead(head))))
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(headKey)).Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		e.dropLeases()
		return false
	case err != nil:
		for _, b := range batch {
			b.err, b.done = err, true
			b.d.Receipt.Seq, b.d.Receipt.Prev = 0, ""
		}
		return true
	case resp.Succeeded:
		e.head, e.headRev = head, resp.Header.Revision
		for _, b := range batch {
			b.err, b.done = nil, true
		}
		return true
	}
	if err := e.refreshHead(resp.Responses[0], headRev); err != nil {
		for _, b := range batch {
			b.err, b.done = err, true
			b.d.Receipt.Seq, b.d.Receipt.Prev = 0, ""
		}
		return true
	}
	return false
}

// commitOne commits c alone, chained after the head, and says why it
// failed: ErrConsumed, ErrExists, or errRetry (the head or a node record
// changed).
func (e *Etcd) commitOne(ctx context.Context, c *chained) error {
	headKey := e.key(etcdChainHead, "")
	head, headRev := e.head, e.headRev
	r := c.d.Receipt
	val := head.next(r, c.body)
	ops := append(c.ops[:len(c.ops):len(c.ops)], clientv3.OpPut(c.receiptKey, string(val)),
		clientv3.OpPut(e.key(etcdReceiptsBySeq, seqName(r.Seq)), r.ID),
		clientv3.OpPut(headKey, string(encodeHead(head))))
	cmps := append(c.cmps[:len(c.cmps):len(c.cmps)], clientv3.Compare(clientv3.ModRevision(headKey), "=", headRev))
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(ops...).
		Else(clientv3.OpGet(c.markerKey, clientv3.WithCountOnly()), clientv3.OpGet(c.receiptKey, clientv3.WithCountOnly()),
			clientv3.OpGet(headKey)).
		Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		e.dropLeases()
		return errRetry
	}
	if err != nil {
		return err
	}
	if resp.Succeeded {
		e.head, e.headRev = head, resp.Header.Revision
		return nil
	}
	if err := e.refreshHead(resp.Responses[2], headRev); err != nil {
		return err
	}
	switch {
	case c.d.ChallengeID != "" && resp.Responses[0].GetResponseRange().Count > 0:
		return ErrConsumed
	case resp.Responses[1].GetResponseRange().Count > 0:
		return fmt.Errorf("receipt id %w", ErrExists)
	}
	return errRetry
}

// refreshHead takes the head read by a failed transaction (the response
// of a get of chain_head), when another writer moved it from headRev.
func (e *Etcd) refreshHead(got *etcdserverpb.ResponseOp, headRev int64) error {
	kvs := got.GetResponseRange().Kvs
	if len(kvs) == 0 || kvs[0].ModRevision == headRev {
		return nil
	}
	h, err := decodeHead(kvs[0].Value)
	if err != nil {
		return err
	}
	e.head, e.headRev = h, kvs[0].ModRevision
	return nil
}
