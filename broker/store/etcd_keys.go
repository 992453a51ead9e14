package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ChallengeKeys implements ChallengeKeys.
func (e *Etcd) ChallengeKeys(ctx context.Context) ([]ChallengeKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to read challenge keys: %w", e.explain(ctx, err))
	}
	keys, _, err := e.readChallengeKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("unable to read challenge keys: %w", e.explain(ctx, err))
	}
	return keys, nil
}

// readChallengeKeys returns the stored keys, newest first, and the
// revision it read them at.
func (e *Etcd) readChallengeKeys(ctx context.Context) ([]ChallengeKey, int64, error) {
	ctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.key(etcdChallengeKeys, ""), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	keys := make([]ChallengeKey, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var k ChallengeKey
		if err := json.Unmarshal(kv.Value, &k); err != nil {
			return nil, 0, fmt.Errorf("unable to decode challenge key %s: %w", kv.Key, err)
		}
		keys = append(keys, k)
	}
	sortNewestFirst(keys)
	return keys, resp.Header.Revision, nil
}

// AddChallengeKey implements ChallengeKeys in one transaction that
// succeeds only if no challenge key changed since they were read.
func (e *Etcd) AddChallengeKey(ctx context.Context, k ChallengeKey, newestID string, deleteBefore time.Time) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to add challenge key: %w", e.explain(ctx, err))
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("unable to add challenge key: %w", e.explain(ctx, err))
	}
	val, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("unable to encode challenge key: %w", err)
	}
	if err := e.addChallengeKey(ctx, k, string(val), newestID, deleteBefore); err != nil {
		return fmt.Errorf("unable to add challenge key: %w", e.explain(ctx, err))
	}
	return nil
}

func (e *Etcd) addChallengeKey(ctx context.Context, k ChallengeKey, val, newestID string, deleteBefore time.Time) error {
	keys, rev, err := e.readChallengeKeys(ctx)
	if err != nil {
		return err
	}
	if err := CheckNewest(keys, newestID); err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpPut(e.key(etcdChallengeKeys, k.ID), val)}
	for _, old := range keys {
		if old.ID == k.ID {
			return fmt.Errorf("challenge key id %w", ErrExists)
		}
		if old.Created.Before(deleteBefore) {
			ops = append(ops, clientv3.OpDelete(e.key(etcdChallengeKeys, old.ID)))
		}
	}
	ctx, cancel := e.request(ctx)
	defer cancel()
	// No key was added, changed or deleted since the read: every key under
	// the prefix was last modified at or before rev, and all read are there.
	prefix := e.key(etcdChallengeKeys, "")
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix()}
	for _, old := range keys {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(e.key(etcdChallengeKeys, old.ID)), ">", 0))
	}
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return ErrConflict
	}
	return nil
}
