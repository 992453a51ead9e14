package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxRecordAttempts bounds Record's retries when a concurrent decision
// changed the node record (or SVID index entries) it read.
const maxRecordAttempts = 64

// errRetry is a transaction that failed on what it read, not on the marker
// or the receipt ID: read again and retry.
var errRetry = errors.New("node record changed concurrently")

// Record implements Decisions in one etcd transaction: If the marker and
// the receipt do not exist and the node record and SVID index entries it
// read are unchanged, Then it writes them all. A transaction that failed
// on what it read is retried; one that failed on the marker returns
// ErrConsumed. An event log is written once, by content hash, before the
// transaction (a log nobody refers to is harmless). A call that fails
// because the cluster is unreachable may, like any distributed commit,
// have been committed: the caller releases nothing either way.
func (e *Etcd) Record(ctx context.Context, d *Decision) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to record decision: %w", e.explain(ctx, err))
	}
	enc, err := d.prepare()
	if err != nil {
		return fmt.Errorf("unable to record decision: %w", e.explain(ctx, err))
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	err = e.record(rctx, d, enc)
	for i := 1; errors.Is(err, errRetry) && i < maxRecordAttempts; i++ {
		// Back off a little, more after each conflict, so that writers
		// of one node record do not collide in lockstep.
		time.Sleep(time.Duration(rand.Int64N(int64(min(i, 10)) * int64(time.Millisecond))))
		err = e.record(rctx, d, enc)
	}
	if err != nil {
		d.Receipt.Seq, d.Receipt.Prev = 0, "" // not chained: not written
		return fmt.Errorf("unable to record decision: %w", e.explain(ctx, err))
	}
	return nil
}

// record tries d's transaction once; enc is d encoded. The receipt is
// chained after the head (commitChained, etcd_commit.go).
func (e *Etcd) record(ctx context.Context, d *Decision, enc *encoded) error {
	r := d.Receipt
	markerKey, receiptKey := e.key(etcdConsumed, d.ChallengeID), e.key(etcdReceipts, r.ID)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(receiptKey), "=", 0)}
	var ops []clientv3.Op
	if r.EKHash != "" {
		ops = append(ops, clientv3.OpPut(e.ekIndexPrefix(r.EKHash)+r.ID, ""))
	}
	if d.ChallengeID != "" {
		lease, err := e.lease(ctx, d.ChallengeExpiry)
		if err != nil {
			return err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(markerKey), "=", 0))
		ops = append(ops, clientv3.OpPut(markerKey, d.ChallengeExpiry.UTC().Format(time.RFC3339Nano), clientv3.WithLease(lease)))
	}
	nodeCmps, nodeOps, err := e.nodeOps(ctx, d, enc)
	if err != nil {
		return err
	}
	ops = append(append(ops, nodeOps...), e.denyOps(d, enc)...)
	return e.commitChained(ctx, &chained{d: d, body: enc.receipt, receiptKey: receiptKey, markerKey: markerKey,
		cmps: append(cmps, nodeCmps...), ops: ops})
}

// denyOps are the writes of d's deny-list change.
func (e *Etcd) denyOps(d *Decision, enc *encoded) []clientv3.Op {
	key := e.key(etcdDenied, d.Receipt.EKHash)
	switch d.Deny {
	case DenyAdd:
		return []clientv3.Op{clientv3.OpPut(key, string(enc.denial))}
	case DenyRemove:
		return []clientv3.Op{clientv3.OpDelete(key)}
	}
	return nil
}

// lease returns a lease that outlives exp by MarkerGrace: shared by every
// marker whose challenge expires in the same second, granted on first use.
func (e *Etcd) lease(ctx context.Context, exp time.Time) (clientv3.LeaseID, error) {
	sec := exp.Add(MarkerGrace).Unix() + 1 // the end of that second
	now := time.Now().Unix()
	e.mu.Lock()
	id, ok := e.leases[sec]
	for s := range e.leases {
		if s < now {
			delete(e.leases, s) // expired with its markers
		}
	}
	e.mu.Unlock()
	if ok {
		return id, nil
	}
	ttl := max(sec-now+1, 2)
	resp, err := e.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("unable to grant a lease for the used challenge: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if prev, ok := e.leases[sec]; ok {
		return prev, nil // a concurrent call granted one first; ours just expires
	}
	e.leases[sec] = resp.ID
	return resp.ID, nil
}

// dropLeases forgets the cached leases, after etcd said one is gone.
func (e *Etcd) dropLeases() {
	e.mu.Lock()
	defer e.mu.Unlock()
	clear(e.leases)
}

// PurgeConsumed implements Decisions: markers expire with their leases,
// so there is nothing to purge.
func (e *Etcd) PurgeConsumed(ctx context.Context, _ time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("unable to purge used challenges: %w", e.explain(ctx, err))
	}
	return 0, nil
}

// nodeOps returns what writing d's node record (or forgetting one) adds to
// the transaction: compares that the record and the SVID index entries
// are still as read, and the writes. It stores the record's event log
// first when the cluster does not hold it yet.
func (e *Etcd) nodeOps(ctx context.Context, d *Decision, enc *encoded) ([]clientv3.Cmp, []clientv3.Op, error) {
	ek := d.ForgetNode
	if d.Node != nil {
		ek = d.Node.EKHash
	}
	if ek == "" {
		return nil, nil, nil
	}
	nodeKey := e.key(etcdNodes, ek)
	stored, log := enc.stored, enc.log
	reads := []clientv3.Op{clientv3.OpGet(nodeKey)}
	if d.Node != nil {
		if len(log) > 0 {
			reads = append(reads, clientv3.OpGet(e.key(etcdEventLogs, stored.Evidence.EventLogSHA256), clientv3.WithCountOnly()))
		}
	}
	resp, err := e.cli.Txn(ctx).Then(reads...).Commit()
	if err != nil {
		return nil, nil, err
	}
	if len(log) > 0 && resp.Responses[1].GetResponseRange().Count == 0 {
		if err := e.putEventLog(ctx, stored.Evidence.EventLogSHA256, log); err != nil {
			return nil, nil, err
		}
	}
	var prev NodeRecord
	var nodeRev int64
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		nodeRev = kvs[0].ModRevision
		if prev, err = decodeNodeHead(ek, kvs[0].Value); err != nil {
			return nil, nil, err
		}
	}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(nodeKey), "=", nodeRev)}
	svidCmps, ops, err := e.svidOps(ctx, ek, prev.SVIDs, stored.SVIDs)
	if err != nil {
		return nil, nil, err
	}
	if d.Node == nil {
		return append(cmps, svidCmps...), append(ops, clientv3.OpDelete(nodeKey)), nil
	}
	return append(cmps, svidCmps...), append(ops, clientv3.OpPut(nodeKey, string(enc.node))), nil
}

// svidOps moves ek's SVID index entries from the serials of prev to those
// of next: it refuses a serial another node's entry holds, and compares
// every entry it read.
func (e *Etcd) svidOps(ctx context.Context, ek string, prev, next []NodeSVID) ([]clientv3.Cmp, []clientv3.Op, error) {
	if len(prev) == 0 && len(next) == 0 {
		return nil, nil, nil
	}
	var serials []string
	keep := map[string]bool{}
	for _, s := range next {
		if !keep[s.Serial] { // etcd refuses two writes of one key in a transaction
			keep[s.Serial] = true
			serials = append(serials, s.Serial)
		}
	}
	for _, s := range prev {
		if !keep[s.Serial] {
			serials = append(serials, s.Serial)
		}
	}
	reads := make([]clientv3.Op, len(serials))
	for i, s := range serials {
		reads[i] = clientv3.OpGet(e.key(etcdNodeSVIDs, s))
	}
	resp, err := e.cli.Txn(ctx).Then(reads...).Commit()
	if err != nil {
		return nil, nil, err
	}
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for i, s := range serials {
		key := e.key(etcdNodeSVIDs, s)
		owner, rev := "", int64(0)
		if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
			owner, rev = string(kvs[0].Value), kvs[0].ModRevision
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", rev))
		switch {
		case keep[s] && owner != "" && owner != ek:
			return nil, nil, fmt.Errorf("node svid serial %s is already recorded for another node", s)
		case keep[s]:
			ops = append(ops, clientv3.OpPut(key, ek))
		case owner == ek:
			ops = append(ops, clientv3.OpDelete(key))
		}
	}
	return cmps, ops, nil
}

// putEventLog stores an event log under its SHA-256 unless it is there.
func (e *Etcd) putEventLog(ctx context.Context, sum string, log []byte) error {
	key := e.key(etcdEventLogs, sum)
	_, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(log))).Commit()
	if err != nil {
		return fmt.Errorf("unable to store event log: %w", err)
	}
	return nil
}
