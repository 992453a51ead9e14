package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxPCRApprovalRetries bounds how often UpdatePCRApproval re-reads after
// another update landed first.
const maxPCRApprovalRetries = 16

// PCRApprovals implements PCRApprovals.
func (e *Etcd) PCRApprovals(ctx context.Context) ([]PCRApproval, uint64, error) {
	all, epoch, _, err := e.pcrApprovals(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("unable to read PCR approvals: %w", err)
	}
	return all, epoch, nil
}

// pcrApprovals reads, at one revision, every approval (oldest first), the
// revocation epoch and the epoch key's ModRevision (0: none stored).
func (e *Etcd) pcrApprovals(ctx context.Context) ([]PCRApproval, uint64, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, 0, e.explain(ctx, err)
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Txn(rctx).Then(
		clientv3.OpGet(e.key(etcdPCRApprovals, ""), clientv3.WithPrefix()),
		clientv3.OpGet(e.key(etcdPCREpoch, "")),
	).Commit()
	if err != nil {
		return nil, 0, 0, e.explain(ctx, err)
	}
	recs, ep := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	out := make([]PCRApproval, 0, len(recs))
	for _, kv := range recs {
		var a PCRApproval
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			return nil, 0, 0, fmt.Errorf("unable to decode PCR approval %s: %w", kv.Key, err)
		}
		out = append(out, a)
	}
	sortOldestFirst(out)
	epoch, rev := initialEpoch(out), int64(0)
	if len(ep) == 1 {
		if epoch, err = strconv.ParseUint(string(ep[0].Value), 10, 64); err != nil {
			return nil, 0, 0, errors.New("the PCR revocation epoch is malformed")
		}
		rev = ep[0].ModRevision
	}
	return out, epoch, rev, nil
}

// UpdatePCRApproval implements PCRApprovals: every update also writes the
// epoch key, and commits only if that key is as read (a Txn comparing its
// ModRevision), so that updates apply one after the other; on a conflict
// it reads again and calls fn again.
func (e *Etcd) UpdatePCRApproval(ctx context.Context, fn func(all []PCRApproval) (PCRApproval, error)) (PCRApproval, error) {
	e.approvalsMu.Lock()
	defer e.approvalsMu.Unlock()
	for range maxPCRApprovalRetries {
		all, epoch, rev, err := e.pcrApprovals(ctx)
		if err != nil {
			return PCRApproval{}, fmt.Errorf("unable to store PCR approval: %w", err)
		}
		a, err := fn(all)
		if err != nil {
			return PCRApproval{}, err
		}
		revokes, err := checkPCRApprovalUpdate(findApproval(all, a.ID), a)
		if err != nil {
			return PCRApproval{}, fmt.Errorf("unable to store PCR approval: %w", err)
		}
		if revokes {
			epoch++
		}
		val, err := json.Marshal(a)
		if err != nil {
			return PCRApproval{}, fmt.Errorf("unable to encode PCR approval: %w", err)
		}
		rctx, cancel := e.request(ctx)
		epochKey := e.key(etcdPCREpoch, "")
		resp, err := e.cli.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(epochKey), "=", rev)).
			Then(clientv3.OpPut(e.key(etcdPCRApprovals, a.ID), string(val)), clientv3.OpPut(epochKey, strconv.FormatUint(epoch, 10))).
			Commit()
		cancel()
		if err != nil {
			return PCRApproval{}, fmt.Errorf("unable to store PCR approval: %w", e.explain(ctx, err))
		}
		if resp.Succeeded {
			return a, nil
		}
	}
	return PCRApproval{}, errors.New("unable to store PCR approval: other updates kept landing first")
}
