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
	p := &pending{d: d, encoded: enc, keys: makeBoltKeys(d), done: make(chan error, 1)}
	if err := b.commits.submit(p); err != nil {
		d.Receipt.Seq, d.Receipt.Prev = 0, "" // not chained: not written
		return fmt.Errorf("unable to record decision: %w", err)
	}
	return nil
}

// appendMarker appends a consumed-challenge marker to b: the challenge's
// expiry in unix nanoseconds, big-endian.
func appendMarker(b []byte, expiry time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(expiry.UnixNano()))
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

// decisionTx is a write transaction's buckets that decisions write, looked
// up once per commit rather than once per write.
type decisionTx struct {
	consumed, receipts, bySeq, byEK, nodes, svids, denied, logs *bolt.Bucket
}

func newDecisionTx(tx *bolt.Tx) *decisionTx {
	t := &decisionTx{
		consumed: tx.Bucket(bucketConsumed),
		receipts: tx.Bucket(bucketReceipts),
		bySeq:    tx.Bucket(bucketReceiptsBySeq),
		byEK:     tx.Bucket(bucketReceiptsByEK),
		nodes:    tx.Bucket(bucketNodes),
		svids:    tx.Bucket(bucketNodeSVIDs),
		denied:   tx.Bucket(bucketDenied),
		logs:     tx.Bucket(bucketEventLogs),
	}
	// Receipt IDs start with their time: receipts are appended, and pages
	// split at bbolt's default half fill would stay half empty.
	t.receipts.FillPercent = receiptsFillPercent
	t.bySeq.FillPercent = 1 // sequence numbers only grow
	return t
}

// boltKeys are the keys and values of a decision's writes that do not
// depend on the commit, made once before it queues, in one allocation:
// bbolt keeps them until the transaction ends.
type boltKeys struct {
	challenge, marker []byte // the challenge's marker: nil for no challenge
	receipt           []byte // the receipt's ID
	seq               []byte // its sequence number, set when it is chained
	ekIndex           []byte // its receipts_by_ek entry: nil without an EK hash
	ekHash            []byte // the receipt's EK hash: its deny-list entry
	node              []byte // the node record's EK hash: nil without a record
}

func makeBoltKeys(d *Decision) boltKeys {
	r, ek := d.Receipt, d.Receipt.EKHash
	var node string
	if d.Node != nil {
		node = d.Node.EKHash
	}
	buf := make([]byte, 0, len(d.ChallengeID)+8+len(r.ID)+8+2+2*len(ek)+len(r.ID)+len(node))
	at := 0
	// cut returns what was appended to buf since the last cut.
	cut := func() []byte {
		b := buf[at:len(buf):len(buf)]
		at = len(buf)
		return b
	}
	var k boltKeys
	if d.ChallengeID != "" {
		buf = append(buf, d.ChallengeID...)
		k.challenge = cut()
		buf = appendMarker(buf, d.ChallengeExpiry)
		k.marker = cut()
	}
	buf = append(buf, r.ID...)
	k.receipt = cut()
	buf = binary.BigEndian.AppendUint64(buf, 0)
	k.seq = cut()
	if ek != "" {
		buf = appendEKIndexKey(buf, ek, r.ID)
		k.ekIndex = cut()
		buf = append(buf, ek...)
		k.ekHash = cut()
	}
	if d.Node != nil {
		buf = append(buf, node...)
		k.node = cut()
	}
	return k
}

// putReceipt writes r, encoded without Seq and Prev as body, chained
// after head (which it moves), with its sequence and EK index entries.
func (t *decisionTx) putReceipt(r *Receipt, k *boltKeys, body []byte, head *ChainHead) error {
	if t.receipts.Get(k.receipt) != nil {
		return fmt.Errorf("receipt id %w", ErrExists)
	}
	if err := t.receipts.Put(k.receipt, head.next(r, body)); err != nil {
		return err
	}
	// k.seq is written in place: bbolt holds the key by reference until
	// the transaction ends, which is safe because a decision is applied
	// once per transaction (a retry runs in a fresh one).
	binary.BigEndian.PutUint64(k.seq, r.Seq)
	if err := t.bySeq.Put(k.seq, k.receipt); err != nil {
		return err
	}
	if k.ekIndex == nil {
		return nil
	}
	return t.byEK.Put(k.ekIndex, []byte{})
}

// putNode writes stored, the node record as stored (splitEventLog) and
// encoded as val, its event log once by content hash (nil: none), and its
// SVIDs' index entries; key is its EK hash.
func (t *decisionTx) putNode(stored *NodeRecord, key, val, log []byte) error {
	if len(log) > 0 {
		sum := []byte(stored.Evidence.EventLogSHA256)
		if t.logs.Get(sum) == nil {
			if err := t.logs.Put(sum, log); err != nil {
				return err
			}
		}
	}
	if err := t.indexNodeSVIDs(stored); err != nil {
		return err
	}
	return t.nodes.Put(key, val)
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
func (t *decisionTx) forgetNode(ekHash string) error {
	if ekHash == "" {
		return nil
	}
	if err := t.unindexNodeSVIDs(ekHash); err != nil {
		return err
	}
	return t.nodes.Delete([]byte(ekHash))
}

// applyDeny applies d's deny-list change to the entry of key, the
// receipt's EK hash; denial is the encoded entry DenyAdd puts.
func (t *decisionTx) applyDeny(d *Decision, key, denial []byte) error {
	switch d.Deny {
	case DenyAdd:
		return t.denied.Put(key, denial)
	case DenyRemove:
		return t.denied.Delete(key)
	}
	return nil
}

// indexNodeSVIDs points the serials of n's SVIDs at n in the node SVID
// index, removing those of the record n replaces.
func (t *decisionTx) indexNodeSVIDs(n *NodeRecord) error {
	if err := t.unindexNodeSVIDs(n.EKHash); err != nil {
		return err
	}
	for _, s := range n.SVIDs {
		if owner := t.svids.Get([]byte(s.Serial)); owner != nil && string(owner) != n.EKHash {
			return fmt.Errorf("node svid serial %s is already recorded for another node", s.Serial)
		}
		if err := t.svids.Put([]byte(s.Serial), []byte(n.EKHash)); err != nil {
			return err
		}
	}
	return nil
}

// unindexNodeSVIDs removes the index entries of the SVIDs of the stored
// record of ekHash.
func (t *decisionTx) unindexNodeSVIDs(ekHash string) error {
	v := t.nodes.Get([]byte(ekHash))
	if v == nil {
		return nil
	}
	prev, err := decodeNodeHead(ekHash, v)
	if err != nil {
		return err
	}
	for _, s := range prev.SVIDs {
		if string(t.svids.Get([]byte(s.Serial))) == ekHash {
			if err := t.svids.Delete([]byte(s.Serial)); err != nil {
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
