package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// PCRApprovals implements PCRApprovals.
func (b *Bolt) PCRApprovals(ctx context.Context) ([]PCRApproval, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("unable to read PCR approvals: %w", err)
	}
	var out []PCRApproval
	var epoch uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		out, epoch, err = boltPCRApprovals(tx)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("unable to read PCR approvals: %w", err)
	}
	return out, epoch, nil
}

// boltPCRApprovals reads every approval, oldest first, and the revocation
// epoch in tx.
func boltPCRApprovals(tx *bolt.Tx) ([]PCRApproval, uint64, error) {
	var out []PCRApproval
	if bk := tx.Bucket(bucketPCRApprovals); bk != nil { // nil: opened read-only before approvals existed
		err := bk.ForEach(func(k, v []byte) error {
			var a PCRApproval
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("unable to decode PCR approval %s: %w", k, err)
			}
			out = append(out, a)
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
	}
	sortOldestFirst(out)
	epoch := initialEpoch(out)
	if bk := tx.Bucket(bucketPCRPolicy); bk != nil {
		if v := bk.Get(keyPCREpoch); v != nil {
			if len(v) != 8 {
				return nil, 0, fmt.Errorf("the PCR revocation epoch is malformed")
			}
			epoch = binary.BigEndian.Uint64(v)
		}
	}
	return out, epoch, nil
}

// UpdatePCRApproval implements PCRApprovals: one bolt transaction.
func (b *Bolt) UpdatePCRApproval(ctx context.Context, fn func(all []PCRApproval) (PCRApproval, error)) (PCRApproval, error) {
	if err := ctx.Err(); err != nil {
		return PCRApproval{}, fmt.Errorf("unable to store PCR approval: %w", err)
	}
	var a PCRApproval
	var fnErr error
	err := b.db.Update(func(tx *bolt.Tx) error {
		all, epoch, err := boltPCRApprovals(tx)
		if err != nil {
			return err
		}
		if a, fnErr = fn(all); fnErr != nil {
			return fnErr
		}
		revokes, err := checkPCRApprovalUpdate(findApproval(all, a.ID), a)
		if err != nil {
			return err
		}
		val, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("unable to encode PCR approval: %w", err)
		}
		if err := tx.Bucket(bucketPCRApprovals).Put([]byte(a.ID), val); err != nil {
			return err
		}
		if revokes {
			epoch++
		}
		return tx.Bucket(bucketPCRPolicy).Put(keyPCREpoch, binary.BigEndian.AppendUint64(nil, epoch))
	})
	switch {
	case fnErr != nil:
		return PCRApproval{}, fnErr
	case err != nil:
		return PCRApproval{}, fmt.Errorf("unable to store PCR approval: %w", err)
	}
	return a, nil
}
