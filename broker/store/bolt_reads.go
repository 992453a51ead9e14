package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// NodeBySVIDSerial implements Nodes.
func (b *Bolt) NodeBySVIDSerial(ctx context.Context, serial string) (NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record by svid: %w", err)
	}
	if !validSerial(serial) {
		return NodeRecord{}, fmt.Errorf("unable to get node record by svid: %w", ErrNotFound)
	}
	var n NodeRecord
	err := b.db.View(func(tx *bolt.Tx) error {
		idx, nodes := tx.Bucket(bucketNodeSVIDs), tx.Bucket(bucketNodes)
		if idx == nil || nodes == nil {
			return ErrNotFound // a store written before node SVIDs existed
		}
		ek := idx.Get([]byte(serial))
		if ek == nil {
			return ErrNotFound
		}
		v := nodes.Get(ek)
		if v == nil {
			return ErrNotFound
		}
		var err error
		if n, err = loadNode(tx, string(ek), v); err != nil {
			return err
		}
		for _, s := range n.SVIDs {
			if s.Serial == serial {
				return nil
			}
		}
		return ErrNotFound // an index entry the record no longer backs
	})
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record by svid: %w", err)
	}
	return n, nil
}

// GetDenial implements Nodes.
func (b *Bolt) GetDenial(ctx context.Context, ekHash string) (Denial, error) {
	if err := ctx.Err(); err != nil {
		return Denial{}, fmt.Errorf("unable to get denial: %w", err)
	}
	if ekHash == "" || len(ekHash) > maxEKHashLength {
		return Denial{}, fmt.Errorf("unable to get denial: %w", ErrNotFound)
	}
	var d Denial
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketDenied)
		if bk == nil {
			return ErrNotFound
		}
		v := bk.Get([]byte(ekHash))
		if v == nil {
			return ErrNotFound
		}
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("unable to decode denial %s: %w", ekHash, err)
		}
		return nil
	})
	if err != nil {
		return Denial{}, fmt.Errorf("unable to get denial: %w", err)
	}
	return d, nil
}

// GetNode implements Nodes.
func (b *Bolt) GetNode(ctx context.Context, ekHash string) (NodeRecord, error) {
	return b.getNode(ctx, ekHash, loadNode)
}

// GetNodeHead implements NodeHeads.
func (b *Bolt) GetNodeHead(ctx context.Context, ekHash string) (NodeRecord, error) {
	return b.getNode(ctx, ekHash, func(_ *bolt.Tx, ekHash string, v []byte) (NodeRecord, error) {
		return decodeNodeHead(ekHash, v)
	})
}

// getNode reads the record of ekHash and decodes it with decode.
func (b *Bolt) getNode(ctx context.Context, ekHash string, decode func(tx *bolt.Tx, ekHash string, v []byte) (NodeRecord, error)) (NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", err)
	}
	if ekHash == "" || len(ekHash) > maxEKHashLength {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", ErrNotFound)
	}
	var n NodeRecord
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketNodes)
		if bk == nil {
			return ErrNotFound // a store written before node records existed
		}
		v := bk.Get([]byte(ekHash))
		if v == nil {
			return ErrNotFound
		}
		var err error
		n, err = decode(tx, ekHash, v)
		return err
	})
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", err)
	}
	return n, nil
}

// ListNodes implements Nodes: in EK hash order.
func (b *Bolt) ListNodes(ctx context.Context, opts ListNodesOpts) ([]NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to list node records: %w", err)
	}
	limit, err := listLimit(opts.Limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list node records: %w", err)
	}
	var out []NodeRecord
	err = b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketNodes)
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
		k, v := c.First()
		if opts.After != "" {
			k, v = c.Seek([]byte(opts.After))
			if k != nil && string(k) == opts.After {
				k, v = c.Next()
			}
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			n, err := loadNode(tx, string(k), v)
			if err != nil {
				return err
			}
			out = append(out, n)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("unable to list node records: %w", err)
	}
	return out, nil
}

// GetReceipt implements Receipts.
func (b *Bolt) GetReceipt(ctx context.Context, id string) (Receipt, error) {
	if err := ctx.Err(); err != nil {
		return Receipt{}, fmt.Errorf("unable to get receipt: %w", err)
	}
	if validateID(id) != nil {
		return Receipt{}, fmt.Errorf("unable to get receipt: %w", ErrNotFound)
	}
	r, err := getRecord(b.db, bucketReceipts, id, decodeReceipt)
	if err != nil {
		return Receipt{}, fmt.Errorf("unable to get receipt: %w", err)
	}
	return r, nil
}

// ListReceipts implements Receipts: newest (highest ID) first.
func (b *Bolt) ListReceipts(ctx context.Context, opts ListOpts) ([]Receipt, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to list receipts: %w", err)
	}
	limit, err := listLimit(opts.Limit)
	if err != nil {
		return nil, fmt.Errorf("unable to list receipts: %w", err)
	}
	var out []Receipt
	err = b.db.View(func(tx *bolt.Tx) error {
		receipts := tx.Bucket(bucketReceipts)
		if receipts == nil {
			return nil
		}
		add := func(id, v []byte) error {
			r, err := decodeReceipt(string(id), v)
			if err != nil {
				return err
			}
			out = append(out, r)
			return nil
		}
		if opts.EKHash == "" {
			c := receipts.Cursor()
			for k, v := lastBefore(c, []byte(opts.Before), nil); k != nil && len(out) < limit; k, v = c.Prev() {
				if err := add(k, v); err != nil {
					return err
				}
			}
			return nil
		}
		idx := tx.Bucket(bucketReceiptsByEK)
		if idx == nil {
			return nil
		}
		prefix := ekIndexKey(opts.EKHash, "")
		c := idx.Cursor()
		for k, _ := lastBefore(c, []byte(opts.Before), prefix); bytes.HasPrefix(k, prefix) && len(out) < limit; k, _ = c.Prev() {
			id := k[len(prefix):]
			v := receipts.Get(id)
			if v == nil {
				continue // index entry without a receipt; nothing to show
			}
			if err := add(id, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("unable to list receipts: %w", err)
	}
	return out, nil
}

// lastBefore positions c on the last key k with prefix+before > k (or the last
// key with prefix when before is empty; IDs are ASCII, so 0xff sorts after
// every ID), and returns it. The caller checks the prefix.
func lastBefore(c *bolt.Cursor, before, prefix []byte) ([]byte, []byte) {
	seek := append(bytes.Clone(prefix), before...)
	if len(before) == 0 {
		seek = append(seek, 0xff)
	}
	if k, _ := c.Seek(seek); k == nil {
		return c.Last()
	}
	return c.Prev()
}

// ekIndexKey is len(ekHash) as 2 bytes, ekHash, then id: unambiguous for any
// EK hash.
func ekIndexKey(ekHash, id string) []byte {
	return appendEKIndexKey(make([]byte, 0, 2+len(ekHash)+len(id)), ekHash, id)
}

// appendEKIndexKey appends ekIndexKey(ekHash, id) to b.
func appendEKIndexKey(b []byte, ekHash, id string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(ekHash)))
	b = append(b, ekHash...)
	return append(b, id...)
}

func decodeReceipt(id string, v []byte) (Receipt, error) {
	var r Receipt
	if err := json.Unmarshal(v, &r); err != nil {
		return Receipt{}, fmt.Errorf("unable to decode receipt %s: %w", id, err)
	}
	return r, nil
}

// getRecord reads and decodes the value at key in bucket; ErrNotFound when
// the bucket (a store written before it existed) or the key is missing.
func getRecord[T any](db *bolt.DB, bucket []byte, key string, decode func(string, []byte) (T, error)) (T, error) {
	var out T
	err := db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucket)
		if bk == nil {
			return ErrNotFound
		}
		v := bk.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		var err error
		out, err = decode(key, v)
		return err
	})
	return out, err
}

// loadNode decodes a stored node record and puts its event log back.
func loadNode(tx *bolt.Tx, ekHash string, v []byte) (NodeRecord, error) {
	n, err := decodeNode(ekHash, v)
	if err != nil {
		return NodeRecord{}, err
	}
	if h := n.Evidence.EventLogSHA256; h != "" && len(n.Evidence.EventLog) == 0 {
		log := tx.Bucket(bucketEventLogs).Get([]byte(h))
		if log == nil {
			return NodeRecord{}, fmt.Errorf("node record %s: event log %s is missing", ekHash, h)
		}
		n.Evidence.EventLog = bytes.Clone(log)
	}
	return n, nil
}
