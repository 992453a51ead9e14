package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Record implements Decisions: the marker check, the receipt, the node
// record and the deny-list change are written in one transaction, which
// concurrent decisions share (group commit, bolt_commit.go), so of
// concurrent calls for one challenge exactly one stores anything; Record
// returns once the commit is durable (fsync'd).
func (b *Bolt) Record(ctx context.Context, d *Decision) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to record decision: %w", err)
	}
	if b.commits == nil {
		return errors.New("unable to record decision: the store is open read-only")
	}
	enc, err := d.prepare()
	if err != nil {
		return fmt.Errorf("unable to record decision: %w", err)
	}
	if err := b.commits.submit(&pending{d: d, encoded: enc, done: make(chan error, 1)}); err != nil {
		d.Receipt.Seq, d.Receipt.Prev = 0, "" // not chained: not written
		return fmt.Errorf("unable to record decision: %w", err)
	}
	return nil
}

// markerValue is a consumed-challenge marker: the challenge's expiry in
// unix nanoseconds, big-endian.
func markerValue(expiry time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(expiry.UnixNano()))
}

// Used implements Decisions.
func (b *Bolt) Used(ctx context.Context, challengeID string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("unable to read challenge marker: %w", err)
	}
	if validateID(challengeID) != nil {
		return false, nil
	}
	used := false
	err := b.db.View(func(tx *bolt.Tx) error {
		if bk := tx.Bucket(bucketConsumed); bk != nil {
			used = bk.Get([]byte(challengeID)) != nil
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("unable to read challenge marker: %w", err)
	}
	return used, nil
}

// receiptsFillPercent is how full bbolt fills the receipts bucket's pages
// when they split.
const receiptsFillPercent = 0.9

// putReceipt writes r, encoded without Seq and Prev as body, chained
// after head (which it moves), with its sequence and EK index entries.
func putReceipt(tx *bolt.Tx, r *Receipt, body []byte, head *ChainHead) error {
	bk := tx.Bucket(bucketReceipts)
	// Receipt IDs start with their time: receipts are appended, and pages
	// split at bbolt's default half fill would stay half empty.
	bk.FillPercent = receiptsFillPercent
	if bk.Get([]byte(r.ID)) != nil {
		return fmt.Errorf("receipt id %w", ErrExists)
	}
	if err := bk.Put([]byte(r.ID), head.next(r, body)); err != nil {
		return err
	}
	bySeq := tx.Bucket(bucketReceiptsBySeq)
	bySeq.FillPercent = 1 // sequence numbers only grow
	if err := bySeq.Put(seqKey(r.Seq), []byte(r.ID)); err != nil {
		return err
	}
	if r.EKHash == "" {
		return nil
	}
	return tx.Bucket(bucketReceiptsByEK).Put(ekIndexKey(r.EKHash, r.ID), []byte{})
}

// putNode writes stored, the node record as stored (splitEventLog) and
// encoded as val, its event log once by content hash (nil: none), and its
// SVIDs' index entries.
func putNode(tx *bolt.Tx, stored NodeRecord, val, log []byte) error {
	if len(log) > 0 {
		logs := tx.Bucket(bucketEventLogs)
		key := []byte(stored.Evidence.EventLogSHA256)
		if logs.Get(key) == nil {
			if err := logs.Put(key, log); err != nil {
				return err
			}
		}
	}
	if err := indexNodeSVIDs(tx, stored); err != nil {
		return err
	}
	return tx.Bucket(bucketNodes).Put([]byte(stored.EKHash), val)
}

// splitEventLog returns n as stored, with its event log replaced by the
// log's SHA-256 (a fleet boots a few images: each log is stored once), and
// the log.
func splitEventLog(n NodeRecord) (NodeRecord, []byte) {
	log := n.Evidence.EventLog
	if len(log) == 0 {
		return n, nil
	}
	sum := sha256.Sum256(log)
	n.Evidence.EventLog = nil
	n.Evidence.EventLogSHA256 = hex.EncodeToString(sum[:])
	return n, log
}

// forgetNode deletes the record of ekHash ("": nothing) and its SVIDs'
// index entries. Its event log stays: other nodes may share it.
func forgetNode(tx *bolt.Tx, ekHash string) error {
	if ekHash == "" {
		return nil
	}
	if err := unindexNodeSVIDs(tx, ekHash); err != nil {
		return err
	}
	return tx.Bucket(bucketNodes).Delete([]byte(ekHash))
}

// applyDeny applies d's deny-list change; denial is the encoded entry
// DenyAdd puts.
func applyDeny(tx *bolt.Tx, d *Decision, denial []byte) error {
	bk := tx.Bucket(bucketDenied)
	switch d.Deny {
	case DenyAdd:
		return bk.Put([]byte(d.Receipt.EKHash), denial)
	case DenyRemove:
		return bk.Delete([]byte(d.Receipt.EKHash))
	}
	return nil
}

// indexNodeSVIDs points the serials of n's SVIDs at n in the node SVID
// index, removing those of the record n replaces.
func indexNodeSVIDs(tx *bolt.Tx, n NodeRecord) error {
	if err := unindexNodeSVIDs(tx, n.EKHash); err != nil {
		return err
	}
	idx := tx.Bucket(bucketNodeSVIDs)
	for _, s := range n.SVIDs {
		if owner := idx.Get([]byte(s.Serial)); owner != nil && string(owner) != n.EKHash {
			return fmt.Errorf("node svid serial %s is already recorded for another node", s.Serial)
		}
		if err := idx.Put([]byte(s.Serial), []byte(n.EKHash)); err != nil {
			return err
		}
	}
	return nil
}

// unindexNodeSVIDs removes the index entries of the SVIDs of the stored
// record of ekHash.
func unindexNodeSVIDs(tx *bolt.Tx, ekHash string) error {
	v := tx.Bucket(bucketNodes).Get([]byte(ekHash))
	if v == nil {
		return nil
	}
	prev, err := decodeNodeHead(ekHash, v)
	if err != nil {
		return err
	}
	idx := tx.Bucket(bucketNodeSVIDs)
	for _, s := range prev.SVIDs {
		if string(idx.Get([]byte(s.Serial))) == ekHash {
			if err := idx.Delete([]byte(s.Serial)); err != nil {
				return err
			}
		}
	}
	return nil
}

// PurgeConsumed implements Decisions. Markers that cannot be decoded are
// deleted too.
func (b *Bolt) PurgeConsumed(ctx context.Context, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("unable to purge used challenges: %w", err)
	}
	var n int
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketConsumed)
		var doomed [][]byte
		c := bk.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(v) != 8 || !now.Before(time.Unix(0, int64(binary.BigEndian.Uint64(v))).Add(MarkerGrace)) {
				doomed = append(doomed, bytes.Clone(k))
			}
		}
		// Deleting after the scan: bbolt cursors may skip keys when the
		// current key is deleted mid-iteration.
		for _, k := range doomed {
			if err := bk.Delete(k); err != nil {
				return err
			}
		}
		n = len(doomed)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("unable to purge used challenges: %w", err)
	}
	return n, nil
}
