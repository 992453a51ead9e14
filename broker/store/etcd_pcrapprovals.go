package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// PCRApprovals implements PCRApprovals.
func (e *Etcd) PCRApprovals(ctx context.Context) ([]PCRApproval, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to read PCR approvals: %w", e.explain(ctx, err))
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Get(rctx, e.key(etcdPCRApprovals, ""), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("unable to read PCR approvals: %w", e.explain(ctx, err))
	}
	out := make([]PCRApproval, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var a PCRApproval
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			return nil, fmt.Errorf("unable to decode PCR approval %s: %w", kv.Key, err)
		}
		out = append(out, a)
	}
	sortOldestFirst(out)
	return out, nil
}

// PutPCRApproval implements PCRApprovals.
func (e *Etcd) PutPCRApproval(ctx context.Context, a PCRApproval) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to store PCR approval: %w", e.explain(ctx, err))
	}
	if err := a.Validate(); err != nil {
		return fmt.Errorf("unable to store PCR approval: %w", err)
	}
	val, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("unable to encode PCR approval: %w", err)
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	if _, err := e.cli.Put(rctx, e.key(etcdPCRApprovals, a.ID), string(val)); err != nil {
		return fmt.Errorf("unable to store PCR approval: %w", e.explain(ctx, err))
	}
	return nil
}
