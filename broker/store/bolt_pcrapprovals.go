package store

import (
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// PCRApprovals implements PCRApprovals.
func (b *Bolt) PCRApprovals(ctx context.Context) ([]PCRApproval, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to read PCR approvals: %w", err)
	}
	var out []PCRApproval
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketPCRApprovals)
		if bk == nil {
			return nil // a store opened read-only before approvals existed
		}
		return bk.ForEach(func(k, v []byte) error {
			var a PCRApproval
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("unable to decode PCR approval %s: %w", k, err)
			}
			out = append(out, a)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("unable to read PCR approvals: %w", err)
	}
	sortOldestFirst(out)
	return out, nil
}

// PutPCRApproval implements PCRApprovals.
func (b *Bolt) PutPCRApproval(ctx context.Context, a PCRApproval) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to store PCR approval: %w", err)
	}
	if err := a.Validate(); err != nil {
		return fmt.Errorf("unable to store PCR approval: %w", err)
	}
	val, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("unable to encode PCR approval: %w", err)
	}
	if err := b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPCRApprovals).Put([]byte(a.ID), val)
	}); err != nil {
		return fmt.Errorf("unable to store PCR approval: %w", err)
	}
	return nil
}
