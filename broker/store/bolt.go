package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrExists is returned when storing a challenge or receipt whose ID is
// already taken.
var ErrExists = errors.New("already exists")

// DefaultLockTimeout is how long OpenBolt waits for the file lock when
// BoltOpts.Timeout is zero.
const DefaultLockTimeout = time.Second

// maxEKHashLength bounds Receipt.EKHash, which is part of an index key.
const maxEKHashLength = 1024

var (
	bucketChallenges   = []byte("challenges")
	bucketReceipts     = []byte("receipts")
	bucketReceiptsByEK = []byte("receipts_by_ek")
	bucketNodes        = []byte("nodes")
	bucketNodeSVIDs    = []byte("node_svids") // node SVID serial -> EK hash
	bucketDenied       = []byte("denied")     // EK hash -> Denial
)

// receiptIDLayout formats the time part of generated receipt IDs: fixed
// width, UTC, so that IDs sort in time order.
const receiptIDLayout = "20060102T150405.000000000Z"

// BoltOpts configures OpenBolt. The zero value opens the file for writing,
// waiting DefaultLockTimeout for the lock.
type BoltOpts struct {
	// Timeout is how long to wait for the file lock held by another
	// process: 0 means DefaultLockTimeout; negative is an error.
	Timeout time.Duration
	// ReadOnly opens an existing file with a shared lock, for inspection
	// (for example listing receipts). Writes fail. A read-only open still
	// waits for a writer to release its exclusive lock.
	ReadOnly bool
}

// Bolt is the embedded Store: one bbolt file, locked by one process at a
// time. Every write is an fsync'd bbolt commit. It is safe for concurrent
// use.
type Bolt struct {
	db   *bolt.DB
	path string
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the store at path. A new file is created with
// mode 0600 (a writable open also tightens an existing file to 0600) and a
// missing parent directory with mode 0700. If another process holds the
// file, OpenBolt fails with an error wrapping ErrLocked after opts.Timeout.
func OpenBolt(path string, opts BoltOpts) (*Bolt, error) {
	if path == "" {
		return nil, errors.New("unable to open store: path cannot be empty")
	}
	timeout := opts.Timeout
	switch {
	case timeout < 0:
		return nil, errors.New("unable to open store: lock timeout cannot be negative")
	case timeout == 0:
		timeout = DefaultLockTimeout
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("unable to create store directory: %w", err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:  timeout,
		ReadOnly: opts.ReadOnly,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("store %s is %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("unable to open store %s: %w", path, err)
	}
	b := &Bolt{db: db, path: path}
	if opts.ReadOnly {
		return b, nil
	}
	if err := b.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return b, nil
}

// init tightens the file mode and creates the buckets.
func (b *Bolt) init() error {
	fi, err := os.Stat(b.path)
	if err != nil {
		return fmt.Errorf("unable to stat store %s: %w", b.path, err)
	}
	if fi.Mode().Perm()&^0o600 != 0 {
		if err := os.Chmod(b.path, 0o600); err != nil {
			return fmt.Errorf("unable to restrict store %s to mode 0600: %w", b.path, err)
		}
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketChallenges, bucketReceipts, bucketReceiptsByEK, bucketNodes, bucketNodeSVIDs, bucketDenied} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("unable to initialize store %s: %w", b.path, err)
	}
	return nil
}

// Close releases the file and its lock. Closing twice is harmless.
func (b *Bolt) Close() error {
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("unable to close store %s: %w", b.path, err)
	}
	return nil
}

// PutChallenge implements Store.
func (b *Bolt) PutChallenge(ctx context.Context, c Challenge) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to store challenge: %w", err)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("unable to store challenge: %w", err)
	}
	val, err := json.Marshal(challengeToRecord(c))
	if err != nil {
		return fmt.Errorf("unable to encode challenge: %w", err)
	}
	key := []byte(c.ID)
	err = b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketChallenges)
		if bk.Get(key) != nil {
			return fmt.Errorf("challenge id %w", ErrExists)
		}
		return bk.Put(key, val)
	})
	if err != nil {
		return fmt.Errorf("unable to store challenge: %w", err)
	}
	return nil
}

// GetChallenge implements Store. It only reads, so that unknown, used or
// guessed IDs cost no disk writes, and it leaves an expired challenge for
// PurgeExpired.
func (b *Bolt) GetChallenge(ctx context.Context, id string, now time.Time) (Challenge, error) {
	if err := ctx.Err(); err != nil {
		return Challenge{}, fmt.Errorf("unable to get challenge: %w", err)
	}
	if validateID(id) != nil {
		return Challenge{}, fmt.Errorf("unable to get challenge: %w", ErrNotFound)
	}
	var c Challenge
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketChallenges)
		if bk == nil {
			return ErrNotFound
		}
		v := bk.Get([]byte(id))
		if v == nil {
			return ErrNotFound
		}
		var err error
		c, err = decodeChallenge(id, v)
		return err
	})
	if err != nil {
		return Challenge{}, fmt.Errorf("unable to get challenge: %w", err)
	}
	if c.Expired(now) {
		return Challenge{}, fmt.Errorf("unable to get challenge: %w", ErrExpired)
	}
	return c, nil
}

// ConsumeChallenge implements Store. The presence check, the delete, the
// receipt and the node record are one write transaction and one fsync'd
// commit, so of concurrent calls for one ID exactly one stores its receipt
// (and node record). r is stored as PutReceipt stores it.
func (b *Bolt) ConsumeChallenge(ctx context.Context, id string, r *Receipt, node *NodeRecord) error {
	if r == nil {
		return errors.New("unable to consume challenge: receipt cannot be nil")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to consume challenge: %w", err)
	}
	if validateID(id) != nil {
		return fmt.Errorf("unable to consume challenge: %w", ErrNotFound)
	}
	var n NodeRecord
	if node != nil {
		n = *node
		if n.FirstSeen.IsZero() {
			n.FirstSeen = n.LastSeen
		}
	}
	key := []byte(id)
	var rec Receipt
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketChallenges)
		if bk.Get(key) == nil {
			return ErrNotFound // rolls back: nothing is written
		}
		if err := bk.Delete(key); err != nil {
			return err
		}
		var err error
		if rec, err = putReceipt(tx, *r); err != nil {
			return err
		}
		if node == nil {
			return nil
		}
		n.LastReceiptID = rec.ID
		val, err := encodeNode(n)
		if err != nil {
			return err
		}
		if err := indexNodeSVIDs(tx, n); err != nil {
			return err
		}
		return tx.Bucket(bucketNodes).Put([]byte(n.EKHash), val)
	})
	if err != nil {
		return fmt.Errorf("unable to consume challenge: %w", err)
	}
	r.ID, r.Time = rec.ID, rec.Time
	if node != nil {
		node.FirstSeen, node.LastReceiptID = n.FirstSeen, n.LastReceiptID
	}
	return nil
}

// indexNodeSVIDs points the serials of n's SVIDs at n in the node SVID
// index, removing those of the record n replaces.
func indexNodeSVIDs(tx *bolt.Tx, n NodeRecord) error {
	idx := tx.Bucket(bucketNodeSVIDs)
	if v := tx.Bucket(bucketNodes).Get([]byte(n.EKHash)); v != nil {
		prev, err := decodeNode(n.EKHash, v)
		if err != nil {
			return err
		}
		for _, s := range prev.SVIDs {
			if string(idx.Get([]byte(s.Serial))) == n.EKHash {
				if err := idx.Delete([]byte(s.Serial)); err != nil {
					return err
				}
			}
		}
	}
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

// NodeBySVIDSerial implements Store.
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
		if n, err = decodeNode(string(ek), v); err != nil {
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

// GetDenial implements Store.
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

// GetNode implements Store.
func (b *Bolt) GetNode(ctx context.Context, ekHash string) (NodeRecord, error) {
	if err := ctx.Err(); err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", err)
	}
	if ekHash == "" || len(ekHash) > maxEKHashLength {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", ErrNotFound)
	}
	n, err := getRecord(b.db, bucketNodes, ekHash, decodeNode)
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to get node record: %w", err)
	}
	return n, nil
}

// ListNodes implements Store: in EK hash order.
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
			n, err := decodeNode(string(k), v)
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

// PurgeExpired implements Store. Challenges that cannot be decoded are
// deleted too, since they can never be consumed.
func (b *Bolt) PurgeExpired(ctx context.Context, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("unable to purge challenges: %w", err)
	}
	var n int
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketChallenges)
		var doomed [][]byte
		c := bk.Cursor()
		i := 0
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if i++; i%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			ch, err := decodeChallenge(string(k), v)
			if err != nil || ch.Expired(now) {
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
		return 0, fmt.Errorf("unable to purge challenges: %w", err)
	}
	return n, nil
}

// PutReceipt implements Store. When it returns nil the receipt is committed
// and fsync'd. r.ID is generated when empty (r.Time too, when zero); a given
// ID must be new and use only [A-Za-z0-9._-].
func (b *Bolt) PutReceipt(ctx context.Context, r *Receipt) error {
	if r == nil {
		return errors.New("unable to store receipt: receipt cannot be nil")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to store receipt: %w", err)
	}
	var rec Receipt
	err := b.db.Update(func(tx *bolt.Tx) error {
		var err error
		rec, err = putReceipt(tx, *r)
		return err
	})
	if err != nil {
		return fmt.Errorf("unable to store receipt: %w", err)
	}
	r.ID, r.Time = rec.ID, rec.Time
	return nil
}

// putReceipt writes rec, and its EK index entry, in tx: the one place
// receipts are written. It sets rec.Time to now when zero and generates
// rec.ID when empty, and returns rec as stored.
func putReceipt(tx *bolt.Tx, rec Receipt) (Receipt, error) {
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC().Round(0)
	}
	generate := rec.ID == ""
	if !generate {
		if err := validateID(rec.ID); err != nil {
			return Receipt{}, fmt.Errorf("receipt id %w", err)
		}
	}
	if len(rec.EKHash) > maxEKHashLength {
		return Receipt{}, fmt.Errorf("ek hash is longer than %d bytes", maxEKHashLength)
	}
	bk := tx.Bucket(bucketReceipts)
	if generate {
		for range 8 {
			if id := newReceiptID(rec.Time); bk.Get([]byte(id)) == nil {
				rec.ID = id
				break
			}
		}
		if rec.ID == "" {
			return Receipt{}, errors.New("unable to generate a unique receipt id")
		}
	} else if bk.Get([]byte(rec.ID)) != nil {
		return Receipt{}, fmt.Errorf("receipt id %w", ErrExists)
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return Receipt{}, fmt.Errorf("unable to encode receipt: %w", err)
	}
	if err := bk.Put([]byte(rec.ID), val); err != nil {
		return Receipt{}, err
	}
	if rec.EKHash != "" {
		if err := tx.Bucket(bucketReceiptsByEK).Put(ekIndexKey(rec.EKHash, rec.ID), []byte{}); err != nil {
			return Receipt{}, err
		}
	}
	if err := applyDenial(tx, rec); err != nil {
		return Receipt{}, err
	}
	return rec, nil
}

// applyDenial puts rec's node on the deny list if rec says so, and takes it
// off if rec is allowed.
func applyDenial(tx *bolt.Tx, rec Receipt) error {
	switch {
	case rec.DenyListed && rec.Allowed:
		return errors.New("an allowed receipt cannot deny-list its node")
	case rec.DenyListed && rec.EKHash == "":
		return errors.New("a receipt without an ek hash cannot deny-list a node")
	case rec.EKHash == "":
		return nil
	case rec.DenyListed:
		val, err := json.Marshal(Denial{EKHash: rec.EKHash, Time: rec.Time, ReceiptID: rec.ID, Check: rec.Check})
		if err != nil {
			return fmt.Errorf("unable to encode denial: %w", err)
		}
		return tx.Bucket(bucketDenied).Put([]byte(rec.EKHash), val)
	case rec.Allowed:
		return tx.Bucket(bucketDenied).Delete([]byte(rec.EKHash))
	}
	return nil
}

// GetReceipt implements Store.
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

// ListReceipts implements Store: newest (highest ID) first.
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
	k := make([]byte, 2, 2+len(ekHash)+len(id))
	binary.BigEndian.PutUint16(k, uint16(len(ekHash)))
	k = append(k, ekHash...)
	return append(k, id...)
}

func newReceiptID(t time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	return t.UTC().Format(receiptIDLayout) + "-" + hex.EncodeToString(b[:])
}

// challengeRecord is the stored form of a Challenge (the ID is the key).
type challengeRecord struct {
	Version         int       `json:"v"`
	EKPublic        []byte    `json:"ek_public,omitempty"`
	EKCertificate   []byte    `json:"ek_certificate,omitempty"`
	EKIntermediates [][]byte  `json:"ek_intermediates,omitempty"`
	AKPublic        []byte    `json:"ak_public,omitempty"`
	SecretHash      []byte    `json:"secret_hash"`
	ExpiresAt       time.Time `json:"expires_at"`
}

const challengeRecordVersion = 1

func challengeToRecord(c Challenge) challengeRecord {
	return challengeRecord{
		Version:         challengeRecordVersion,
		EKPublic:        c.EKPublic,
		EKCertificate:   c.EKCertificate,
		EKIntermediates: c.EKIntermediates,
		AKPublic:        c.AKPublic,
		SecretHash:      c.SecretHash[:],
		ExpiresAt:       c.ExpiresAt,
	}
}

// decodeChallenge copies everything out of v, which bbolt owns.
func decodeChallenge(id string, v []byte) (Challenge, error) {
	var rec challengeRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return Challenge{}, fmt.Errorf("unable to decode challenge: %w", err)
	}
	switch {
	case rec.Version != challengeRecordVersion:
		return Challenge{}, fmt.Errorf("unable to decode challenge: unknown record version %d", rec.Version)
	case len(rec.SecretHash) != 32:
		return Challenge{}, fmt.Errorf("unable to decode challenge: secret hash has %d bytes, want 32", len(rec.SecretHash))
	}
	c := Challenge{
		ID:              id,
		EKPublic:        rec.EKPublic,
		EKCertificate:   rec.EKCertificate,
		EKIntermediates: rec.EKIntermediates,
		AKPublic:        rec.AKPublic,
		ExpiresAt:       rec.ExpiresAt,
	}
	copy(c.SecretHash[:], rec.SecretHash)
	return c, nil
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

// listLimit applies the list limits: 0 means DefaultListLimit, more than
// MaxListLimit is lowered to it, a negative limit is an error.
func listLimit(limit int) (int, error) {
	switch {
	case limit < 0:
		return 0, errors.New("limit cannot be negative")
	case limit == 0:
		return DefaultListLimit, nil
	case limit > MaxListLimit:
		return MaxListLimit, nil
	}
	return limit, nil
}
