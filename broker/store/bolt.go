package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrLocked is returned by OpenBolt when another process holds the store.
var ErrLocked = errors.New("locked by another process")

// DefaultLockTimeout is how long OpenBolt waits for the file lock when
// BoltOpts.Timeout is zero.
const DefaultLockTimeout = time.Second

var (
	bucketConsumed      = []byte("consumed") // challenge ID -> expiry (unix nanoseconds, big-endian)
	bucketReceipts      = []byte("receipts")
	bucketReceiptsByEK  = []byte("receipts_by_ek")
	bucketNodes         = []byte("nodes")
	bucketNodeSVIDs     = []byte("node_svids")      // node SVID serial -> EK hash
	bucketDenied        = []byte("denied")          // EK hash -> Denial
	bucketEventLogs     = []byte("event_logs")      // SHA-256 of an event log -> the log
	bucketChallengeKeys = []byte("challenge_keys")  // key ID -> ChallengeKey
	bucketChain         = []byte("chain")           // keyChainHead -> ChainHead
	bucketReceiptsBySeq = []byte("receipts_by_seq") // Seq (big-endian) -> receipt ID
	bucketCheckpoints   = []byte("checkpoints")     // Seq (big-endian) -> Checkpoint
	bucketPCRApprovals  = []byte("pcr_approvals")   // approval ID -> PCRApproval
	bucketPCRPolicy     = []byte("pcr_policy")      // keyPCREpoch -> revocation epoch (big-endian)
	keyPCREpoch         = []byte("epoch")
	keyChainHead        = []byte("head")
)

// buckets are every bucket a writable open creates.
var buckets = [][]byte{bucketConsumed, bucketReceipts, bucketReceiptsByEK, bucketNodes,
	bucketNodeSVIDs, bucketDenied, bucketEventLogs, bucketChallengeKeys, bucketChain, bucketReceiptsBySeq,
	bucketCheckpoints, bucketPCRApprovals, bucketPCRPolicy}

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

// Bolt is the embedded Backend: one bbolt file, locked by one process at a
// time. Every write is an fsync'd bbolt commit. It is safe for concurrent
// use.
type Bolt struct {
	db      *bolt.DB
	path    string
	commits *committer // nil when read-only
}

var _ Backend = (*Bolt)(nil)

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
	b.commits = newCommitter(db)
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
		for _, name := range buckets {
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
	if b.commits != nil {
		b.commits.close()
	}
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("unable to close store %s: %w", b.path, err)
	}
	return nil
}
