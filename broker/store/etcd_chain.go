package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// seqName is a sequence number as a key name: 20 decimal digits, so that
// names sort in sequence order.
func seqName(seq uint64) string { return fmt.Sprintf("%020d", seq) }

// ChainHead implements Checkpoints.
func (e *Etcd) ChainHead(ctx context.Context) (ChainHead, error) {
	if err := ctx.Err(); err != nil {
		return ChainHead{}, fmt.Errorf("unable to read the receipt chain head: %w", e.explain(ctx, err))
	}
	v, err := e.get(ctx, e.key(etcdChainHead, ""))
	if err != nil {
		return ChainHead{}, fmt.Errorf("unable to read the receipt chain head: %w", e.explain(ctx, err))
	}
	h, err := decodeHead(v)
	if err != nil {
		return ChainHead{}, fmt.Errorf("unable to read the receipt chain head: %w", err)
	}
	return h, nil
}

// PutCheckpoint implements Checkpoints: created only if absent.
func (e *Etcd) PutCheckpoint(ctx context.Context, c Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to store checkpoint: %w", e.explain(ctx, err))
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("unable to store checkpoint: %w", err)
	}
	val, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("unable to store checkpoint: %w", err)
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	key := e.key(etcdCheckpoints, seqName(c.Seq))
	resp, err := e.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).Commit()
	switch {
	case err != nil:
		return fmt.Errorf("unable to store checkpoint: %w", e.explain(ctx, err))
	case !resp.Succeeded:
		return fmt.Errorf("unable to store checkpoint: checkpoint of seq %d %w", c.Seq, ErrExists)
	}
	return nil
}

// ListCheckpoints implements Checkpoints.
func (e *Etcd) ListCheckpoints(ctx context.Context, after uint64, limit int) ([]Checkpoint, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to list checkpoints: %w", e.explain(ctx, err))
	}
	limit, err := listLimit(limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list checkpoints: %w", err)
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	prefix := e.key(etcdCheckpoints, "")
	resp, err := e.cli.Get(rctx, prefix+seqName(after+1), clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)),
		clientv3.WithLimit(int64(limit)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("unable to list checkpoints: %w", e.explain(ctx, err))
	}
	out := make([]Checkpoint, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c Checkpoint
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			return nil, fmt.Errorf("unable to list checkpoints: unable to decode checkpoint %s: %w", kv.Key[len(prefix):], err)
		}
		out = append(out, c)
	}
	return out, nil
}

// deleteBatch is how many receipts one DeleteReceiptsBefore transaction
// deletes: etcd refuses transactions of more than 128 operations, and
// each receipt takes two (itself and its EK index entry).
const deleteBatch = 50

// DeleteReceiptsBefore implements Receipts in transactions of at most
// deleteBatch receipts: first the chained receipts, in chain order, each
// transaction with the checkpoint of its last receipt; then receipts
// written before chaining.
func (e *Etcd) DeleteReceiptsBefore(ctx context.Context, before time.Time, limit int, seal Sealer) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("unable to delete receipts: %w", e.explain(ctx, err))
	}
	if limit <= 0 {
		return 0, errors.New("unable to delete receipts: limit must be positive")
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	end := receiptIDBefore(before)
	var n int
	for _, step := range []func(context.Context, string, int, Sealer) (int, error){e.deleteChainPrefix, e.deleteUnchained} {
		for n < limit {
			deleted, err := step(rctx, end, min(limit-n, deleteBatch), seal)
			n += deleted
			if err != nil {
				return n, fmt.Errorf("unable to delete receipts: %w", e.explain(ctx, err))
			}
			if deleted == 0 {
				break
			}
		}
	}
	return n, nil
}

// deleteChainPrefix deletes the oldest chained receipts (at most batch)
// up to the first whose ID is end or after, with the checkpoint seal signs
// for the last one, if no other writer deleted them first.
func (e *Etcd) deleteChainPrefix(ctx context.Context, end string, batch int, seal Sealer) (int, error) {
	if seal == nil {
		return 0, nil
	}
	prefix := e.key(etcdReceiptsBySeq, "")
	resp, err := e.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithLimit(int64(batch)),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return 0, err
	}
	var gets []clientv3.Op
	var lastSeq uint64
	for _, kv := range resp.Kvs {
		if string(kv.Value) >= end {
			break
		}
		if lastSeq, err = strconv.ParseUint(string(kv.Key[len(prefix):]), 10, 64); err != nil {
			return 0, fmt.Errorf("bad receipt sequence key %s", kv.Key)
		}
		gets = append(gets, clientv3.OpGet(e.key(etcdReceipts, string(kv.Value))))
	}
	if len(gets) == 0 {
		return 0, nil
	}
	got, err := e.cli.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return 0, err
	}
	lastKvs := got.Responses[len(gets)-1].GetResponseRange().Kvs
	if len(lastKvs) == 0 {
		return 0, fmt.Errorf("receipt of seq %d is missing", lastSeq)
	}
	cp, err := seal(ChainHead{Seq: lastSeq, Hash: ReceiptHash(lastKvs[0].Value)})
	if err != nil {
		return 0, fmt.Errorf("unable to sign the checkpoint of the chain's new start: %w", err)
	}
	if err := cp.Validate(); err != nil {
		return 0, err
	}
	cpVal, err := json.Marshal(cp)
	if err != nil {
		return 0, err
	}
	cpKey := e.key(etcdCheckpoints, seqName(lastSeq))
	ops := []clientv3.Op{
		clientv3.OpDelete(prefix, clientv3.WithRange(e.key(etcdReceiptsBySeq, seqName(lastSeq+1)))),
		clientv3.OpDelete(e.key(etcdCheckpoints, ""), clientv3.WithRange(cpKey)),
		clientv3.OpPut(cpKey, string(cpVal)),
	}
	receiptsPrefix := e.key(etcdReceipts, "")
	for _, r := range got.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			var rc Receipt
			_ = json.Unmarshal(kv.Value, &rc) // an undecodable receipt is deleted all the same
			if rc.EKHash != "" {
				ops = append(ops, clientv3.OpDelete(e.ekIndexPrefix(rc.EKHash)+string(kv.Key[len(receiptsPrefix):])))
			}
		}
	}
	// Another broker purging at the same time deleted the same receipts
	// first when the last one is gone or changed: nothing to do.
	tresp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(lastKvs[0].Key)), "=", lastKvs[0].ModRevision)).
		Then(ops...).Commit()
	if err != nil || !tresp.Succeeded {
		return 0, err
	}
	return len(gets), nil
}

// deleteUnchained deletes the oldest receipts written before chaining (at
// most batch) whose ID sorts before end.
func (e *Etcd) deleteUnchained(ctx context.Context, end string, batch int, _ Sealer) (int, error) {
	start := e.key(etcdReceipts, "")
	from := start
	for {
		resp, err := e.cli.Get(ctx, from, clientv3.WithRange(start+end), clientv3.WithLimit(int64(deleteBatch)),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil || len(resp.Kvs) == 0 {
			return 0, err
		}
		var ops []clientv3.Op
		n := 0
		for _, kv := range resp.Kvs {
			var r Receipt
			if err := json.Unmarshal(kv.Value, &r); err != nil || r.Seq != 0 || n == batch {
				continue // chained (deleted in chain order only), undecodable (kept for verify), or enough
			}
			n++
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			if r.EKHash != "" {
				ops = append(ops, clientv3.OpDelete(e.ekIndexPrefix(r.EKHash)+string(kv.Key[len(start):])))
			}
		}
		if n > 0 {
			if _, err := e.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				return 0, err
			}
			return n, nil
		}
		if len(resp.Kvs) < deleteBatch {
			return 0, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
