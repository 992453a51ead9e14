package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// seqKey is a sequence number as a key: 8 bytes big-endian, so that keys
// sort in sequence order.
func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// ChainHead implements Checkpoints.
func (b *Bolt) ChainHead(ctx context.Context) (ChainHead, error) {
	if err := ctx.Err(); err != nil {
		return ChainHead{}, fmt.Errorf("unable to read the receipt chain head: %w", err)
	}
	var h ChainHead
	err := b.db.View(func(tx *bolt.Tx) error {
		var v []byte
		if bk := tx.Bucket(bucketChain); bk != nil { // nil: written before chaining
			v = bk.Get(keyChainHead)
		}
		var err error
		h, err = decodeHead(v)
		return err
	})
	if err != nil {
		return ChainHead{}, fmt.Errorf("unable to read the receipt chain head: %w", err)
	}
	return h, nil
}

// PutCheckpoint implements Checkpoints.
func (b *Bolt) PutCheckpoint(ctx context.Context, c Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to store checkpoint: %w", err)
	}
	err := b.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketCheckpoints).Get(seqKey(c.Seq)) != nil {
			return fmt.Errorf("checkpoint of seq %d %w", c.Seq, ErrExists)
		}
		return putCheckpoint(tx, c)
	})
	if err != nil {
		return fmt.Errorf("unable to store checkpoint: %w", err)
	}
	return nil
}

// ListCheckpoints implements Checkpoints.
func (b *Bolt) ListCheckpoints(ctx context.Context, after uint64, limit int) ([]Checkpoint, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to list checkpoints: %w", err)
	}
	limit, err := listLimit(limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list checkpoints: %w", err)
	}
	var out []Checkpoint
	err = b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketCheckpoints)
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var cp Checkpoint
			if err := json.Unmarshal(v, &cp); err != nil {
				return fmt.Errorf("unable to decode checkpoint %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, cp)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("unable to list checkpoints: %w", err)
	}
	return out, nil
}

// DeleteReceiptsBefore implements Receipts in one transaction: first the
// chained receipts, in chain order, with the checkpoint of the last one;
// then receipts written before chaining, in ID order.
func (b *Bolt) DeleteReceiptsBefore(ctx context.Context, before time.Time, limit int, seal Sealer) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("unable to delete receipts: %w", err)
	}
	if limit <= 0 {
		return 0, errors.New("unable to delete receipts: limit must be positive")
	}
	end := []byte(receiptIDBefore(before))
	var n int
	err := b.db.Update(func(tx *bolt.Tx) error {
		chained, err := deleteChainPrefix(tx, end, limit, seal)
		if err != nil {
			return err
		}
		unchained, err := deleteUnchained(tx, end, limit-chained)
		n = chained + unchained
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("unable to delete receipts: %w", err)
	}
	return n, nil
}

// deleteChainPrefix deletes the oldest chained receipts (at most limit)
// up to the first whose ID is end or after, stores the checkpoint seal
// signs for the last one deleted and deletes the checkpoints before it.
func deleteChainPrefix(tx *bolt.Tx, end []byte, limit int, seal Sealer) (int, error) {
	if seal == nil || limit <= 0 {
		return 0, nil
	}
	receipts, bySeq, idx := tx.Bucket(bucketReceipts), tx.Bucket(bucketReceiptsBySeq), tx.Bucket(bucketReceiptsByEK)
	var seqs, ids [][]byte
	c := bySeq.Cursor()
	for k, id := c.First(); k != nil && len(seqs) < limit && bytes.Compare(id, end) < 0; k, id = c.Next() {
		seqs, ids = append(seqs, bytes.Clone(k)), append(ids, bytes.Clone(id))
	}
	if len(seqs) == 0 {
		return 0, nil
	}
	last := receipts.Get(ids[len(ids)-1])
	if last == nil {
		return 0, fmt.Errorf("receipt %s of seq %d is missing", ids[len(ids)-1], binary.BigEndian.Uint64(seqs[len(seqs)-1]))
	}
	cp, err := seal(ChainHead{Seq: binary.BigEndian.Uint64(seqs[len(seqs)-1]), Hash: ReceiptHash(last)})
	if err != nil {
		return 0, fmt.Errorf("unable to sign the checkpoint of the chain's new start: %w", err)
	}
	if err := putCheckpoint(tx, cp); err != nil {
		return 0, err
	}
	for i, id := range ids {
		var r Receipt
		_ = json.Unmarshal(receipts.Get(id), &r) // an undecodable receipt is deleted all the same
		if err := receipts.Delete(id); err != nil {
			return 0, err
		}
		if err := bySeq.Delete(seqs[i]); err != nil {
			return 0, err
		}
		if r.EKHash != "" {
			if err := idx.Delete(ekIndexKey(r.EKHash, string(id))); err != nil {
				return 0, err
			}
		}
	}
	return len(ids), deleteCheckpointsBefore(tx, cp.Seq)
}

// putCheckpoint stores c, replacing a checkpoint of the same Seq.
func putCheckpoint(tx *bolt.Tx, c Checkpoint) error {
	if err := c.Validate(); err != nil {
		return err
	}
	val, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketCheckpoints).Put(seqKey(c.Seq), val)
}

// deleteCheckpointsBefore deletes the checkpoints of receipts before seq.
func deleteCheckpointsBefore(tx *bolt.Tx, seq uint64) error {
	bk := tx.Bucket(bucketCheckpoints)
	var doomed [][]byte
	c := bk.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) < seq; k, _ = c.Next() {
		doomed = append(doomed, bytes.Clone(k))
	}
	for _, k := range doomed {
		if err := bk.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// deleteUnchained deletes at most limit receipts written before chaining
// (Seq 0) whose ID sorts before end, oldest first.
func deleteUnchained(tx *bolt.Tx, end []byte, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	bk, idx := tx.Bucket(bucketReceipts), tx.Bucket(bucketReceiptsByEK)
	type doomed struct{ id, ek []byte }
	var del []doomed
	c := bk.Cursor()
	for k, v := c.First(); k != nil && bytes.Compare(k, end) < 0 && len(del) < limit; k, v = c.Next() {
		var r Receipt
		if err := json.Unmarshal(v, &r); err != nil || r.Seq != 0 {
			// Chained receipts go in chain order only; one that does not
			// decode is kept for "receipts verify" to name.
			continue
		}
		del = append(del, doomed{bytes.Clone(k), []byte(r.EKHash)})
	}
	for _, d := range del {
		if err := bk.Delete(d.id); err != nil {
			return 0, err
		}
		if len(d.ek) > 0 {
			if err := idx.Delete(ekIndexKey(string(d.ek), string(d.id))); err != nil {
				return 0, err
			}
		}
	}
	return len(del), nil
}
