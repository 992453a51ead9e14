package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// get reads one key: nil when it is missing.
// Used implements Decisions.
func (e *Etcd) Used(ctx context.Context, challengeID string) (bool, error) {
	if validateID(challengeID) != nil {
		return false, nil
	}
	v, err := e.get(ctx, e.key(etcdConsumed, challengeID))
	if err != nil {
		return false, fmt.Errorf("unable to read challenge marker: %w", e.explain(ctx, err))
	}
	return v != nil, nil
}

func (e *Etcd) get(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// GetReceipt implements Receipts.
func (e *Etcd) GetReceipt(ctx context.Context, id string) (Receipt, error) {
	if err := ctx.Err(); err != nil {
		return Receipt{}, fmt.Errorf("unable to get receipt: %w", e.explain(ctx, err))
	}
	if validateID(id) != nil {
		return Receipt{}, fmt.Errorf("unable to get receipt: %w", ErrNotFound)
	}
	v, err := e.get(ctx, e.key(etcdReceipts, id))
	if err == nil && v == nil {
		err = ErrNotFound
	}
	if err != nil {
		return Receipt{}, fmt.Errorf("unable to get receipt: %w", e.explain(ctx, err))
	}
	r, err := decodeReceipt(id, v)
	if err != nil {
		return Receipt{}, fmt.Errorf("unable to get receipt: %w", e.explain(ctx, err))
	}
	return r, nil
}

// ListReceipts implements Receipts: newest (highest ID) first.
func (e *Etcd) ListReceipts(ctx context.Context, opts ListOpts) ([]Receipt, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to list receipts: %w", e.explain(ctx, err))
	}
	limit, err := listLimit(opts.Limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list receipts: %w", e.explain(ctx, err))
	}
	out, err := e.listReceipts(ctx, opts, limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list receipts: %w", e.explain(ctx, err))
	}
	return out, nil
}

func (e *Etcd) listReceipts(ctx context.Context, opts ListOpts, limit int) ([]Receipt, error) {
	ctx, cancel := e.request(ctx)
	defer cancel()
	prefix := e.key(etcdReceipts, "")
	if opts.EKHash != "" {
		prefix = e.ekIndexPrefix(opts.EKHash)
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	if opts.Before != "" {
		end = prefix + opts.Before
	}
	rangeOpts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(limit)),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if opts.EKHash == "" {
		resp, err := e.cli.Get(ctx, prefix, rangeOpts...)
		if err != nil {
			return nil, err
		}
		return decodeReceipts(resp.Kvs, len(prefix))
	}
	resp, err := e.cli.Get(ctx, prefix, append(rangeOpts, clientv3.WithKeysOnly())...)
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	gets := make([]clientv3.Op, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		gets[i] = clientv3.OpGet(e.key(etcdReceipts, string(kv.Key[len(prefix):])))
	}
	tresp, err := e.cli.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return nil, err
	}
	var kvs []*mvccpb.KeyValue
	for _, r := range tresp.Responses {
		kvs = append(kvs, r.GetResponseRange().Kvs...) // an index entry without a receipt shows nothing
	}
	return decodeReceipts(kvs, len(e.key(etcdReceipts, "")))
}

func decodeReceipts(kvs []*mvccpb.KeyValue, prefixLen int) ([]Receipt, error) {
	out := make([]Receipt, 0, len(kvs))
	for _, kv := range kvs {
		r, err := decodeReceipt(string(kv.Key[prefixLen:]), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// GetNode implements Nodes.
func (e *Etcd) GetNode(ctx context.Context, ekHash string) (NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", e.explain(ctx, err))
	}
	if ekHash == "" || len(ekHash) > maxEKHashLength {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", ErrNotFound)
	}
	n, err := e.getNode(ctx, ekHash)
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", e.explain(ctx, err))
	}
	return n, nil
}

// GetNodeHead implements NodeHeads: one read, without the event log's.
func (e *Etcd) GetNodeHead(ctx context.Context, ekHash string) (NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", e.explain(ctx, err))
	}
	if ekHash == "" || len(ekHash) > maxEKHashLength {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", ErrNotFound)
	}
	v, err := e.get(ctx, e.key(etcdNodes, ekHash))
	switch {
	case err != nil:
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", e.explain(ctx, err))
	case v == nil:
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", ErrNotFound)
	}
	n, err := decodeNodeHead(ekHash, v)
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", err)
	}
	return n, nil
}

func (e *Etcd) getNode(ctx context.Context, ekHash string) (NodeRecord, error) {
	v, err := e.get(ctx, e.key(etcdNodes, ekHash))
	if err != nil {
		return NodeRecord{}, err
	}
	if v == nil {
		return NodeRecord{}, ErrNotFound
	}
	n, err := decodeNode(ekHash, v)
	if err != nil {
		return NodeRecord{}, err
	}
	ns := []NodeRecord{n}
	if err := e.loadEventLogs(ctx, ns); err != nil {
		return NodeRecord{}, err
	}
	return ns[0], nil
}

// loadEventLogs puts the event logs of ns back, reading each distinct log
// once. Logs are never deleted, so reading them after the records is safe.
func (e *Etcd) loadEventLogs(ctx context.Context, ns []NodeRecord) error {
	var sums []string
	for _, n := range ns {
		if h := n.Evidence.EventLogSHA256; h != "" && len(n.Evidence.EventLog) == 0 && !slices.Contains(sums, h) {
			sums = append(sums, h)
		}
	}
	if len(sums) == 0 {
		return nil
	}
	gets := make([]clientv3.Op, len(sums))
	for i, h := range sums {
		gets[i] = clientv3.OpGet(e.key(etcdEventLogs, h))
	}
	ctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return err
	}
	logs := map[string][]byte{}
	for i, r := range resp.Responses {
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			logs[sums[i]] = kvs[0].Value
		}
	}
	for i := range ns {
		if h := ns[i].Evidence.EventLogSHA256; h != "" && len(ns[i].Evidence.EventLog) == 0 {
			log, ok := logs[h]
			if !ok {
				return fmt.Errorf("node record %s: event log %s is missing", ns[i].EKHash, h)
			}
			ns[i].Evidence.EventLog = slices.Clone(log)
		}
	}
	return nil
}

// ListNodes implements Nodes: in EK hash order.
func (e *Etcd) ListNodes(ctx context.Context, opts ListNodesOpts) ([]NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to list node records: %w", e.explain(ctx, err))
	}
	limit, err := listLimit(opts.Limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list node records: %w", e.explain(ctx, err))
	}
	out, err := e.listNodes(ctx, opts.After, limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list node records: %w", e.explain(ctx, err))
	}
	return out, nil
}

func (e *Etcd) listNodes(ctx context.Context, after string, limit int) ([]NodeRecord, error) {
	prefix := e.key(etcdNodes, "")
	from := prefix
	if after != "" {
		from = prefix + after + "\x00" // the first key after prefix+after
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Get(rctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)),
		clientv3.WithLimit(int64(limit)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, err
	}
	out := make([]NodeRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := decodeNode(string(kv.Key[len(prefix):]), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if err := e.loadEventLogs(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// NodeBySVIDSerial implements Nodes.
func (e *Etcd) NodeBySVIDSerial(ctx context.Context, serial string) (NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record by svid: %w", e.explain(ctx, err))
	}
	if !validSerial(serial) {
		return NodeRecord{}, fmt.Errorf("unable to get node record by svid: %w", ErrNotFound)
	}
	n, err := e.nodeBySVIDSerial(ctx, serial)
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record by svid: %w", e.explain(ctx, err))
	}
	return n, nil
}

func (e *Etcd) nodeBySVIDSerial(ctx context.Context, serial string) (NodeRecord, error) {
	ek, err := e.get(ctx, e.key(etcdNodeSVIDs, serial))
	if err != nil {
		return NodeRecord{}, err
	}
	if ek == nil {
		return NodeRecord{}, ErrNotFound
	}
	n, err := e.getNode(ctx, string(ek))
	if err != nil {
		return NodeRecord{}, err
	}
	for _, s := range n.SVIDs {
		if s.Serial == serial {
			return n, nil
		}
	}
	return NodeRecord{}, ErrNotFound // an index entry the record no longer backs
}

// GetDenial implements Nodes.
func (e *Etcd) GetDenial(ctx context.Context, ekHash string) (Denial, error) {
	if err := ctx.Err(); err != nil {
		return Denial{}, fmt.Errorf("unable to get denial: %w", e.explain(ctx, err))
	}
	if ekHash == "" || len(ekHash) > maxEKHashLength {
		return Denial{}, fmt.Errorf("unable to get denial: %w", ErrNotFound)
	}
	v, err := e.get(ctx, e.key(etcdDenied, ekHash))
	if err == nil && v == nil {
		err = ErrNotFound
	}
	if err != nil {
		return Denial{}, fmt.Errorf("unable to get denial: %w", e.explain(ctx, err))
	}
	var d Denial
	if err := json.Unmarshal(v, &d); err != nil {
		return Denial{}, fmt.Errorf("unable to get denial: unable to decode denial %s: %w", ekHash, err)
	}
	return d, nil
}
