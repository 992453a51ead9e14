package vaultauth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/store"
)

// vaultStore is the part of store.Store that broker/challenge's Issuer
// and the TPM counter history need, kept in Vault's storage:
//
//   - challenge/<id>: a store.Challenge (EK and AK publics as sent, the
//     SHA-256 of the activation secret, never the secret, and its expiry).
//     Vault storage has no expiry of its own: GetChallenge refuses an
//     expired challenge and the backend's periodic function deletes it.
//   - node/<EK hash>: the TPM counters of the node's last verified login,
//     which the next login's counters are compared with.
//
// Receipts, node evidence, node SVIDs and the deny list belong to the
// broker; Vault's audit log records each login and its outcome, and the
// backend logs each decision with the failed check. Those methods return
// errNotKept.
type vaultStore struct {
	s     logical.Storage
	locks []*locksutil.LockEntry
	now   func() time.Time
}

var _ store.Store = (*vaultStore)(nil)

var errNotKept = errors.New("not kept by the Vault auth method")

func (b *tpmAuthBackend) store(s logical.Storage) *vaultStore {
	return &vaultStore{s: s, locks: b.challengeLocks, now: b.now}
}

// challengeEntry is the stored form of a store.Challenge.
type challengeEntry struct {
	EKPublic        []byte    `json:"ek_public"`
	EKCertificate   []byte    `json:"ek_certificate,omitempty"`
	EKIntermediates [][]byte  `json:"ek_intermediates,omitempty"`
	AKPublic        []byte    `json:"ak_public"`
	SecretHash      []byte    `json:"secret_hash"`
	ExpiresAt       time.Time `json:"expires_at"`
}

// nodeEntry is the stored form of a node's counters: the part of a
// store.NodeRecord that the next login needs.
type nodeEntry struct {
	EKHash       string    `json:"ek_hash"`
	FirstSeen    time.Time `json:"first_seen"`
	LastSeen     time.Time `json:"last_seen"`
	AKName       []byte    `json:"ak_name"`
	Clock        uint64    `json:"clock"`
	ResetCount   uint32    `json:"reset_count"`
	RestartCount uint32    `json:"restart_count"`
}

// validKey reports whether id may end a storage key: 1 to
// store.MaxIDLength characters of [A-Za-z0-9_-], as challenge IDs (base64url)
// and EK hashes (hex) are.
func validKey(id string) bool {
	if id == "" || len(id) > store.MaxIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// PutChallenge implements store.Store.
func (v *vaultStore) PutChallenge(ctx context.Context, c store.Challenge) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if !validKey(c.ID) {
		return fmt.Errorf("challenge id %q is not [A-Za-z0-9_-]", c.ID)
	}
	key := challengePrefix + c.ID
	lock := locksutil.LockForKey(v.locks, key)
	lock.Lock()
	defer lock.Unlock()
	switch old, err := v.s.Get(ctx, key); {
	case err != nil:
		return err
	case old != nil:
		return fmt.Errorf("challenge %s already exists", c.ID)
	}
	entry, err := logical.StorageEntryJSON(key, challengeEntry{
		EKPublic:        c.EKPublic,
		EKCertificate:   c.EKCertificate,
		EKIntermediates: c.EKIntermediates,
		AKPublic:        c.AKPublic,
		SecretHash:      c.SecretHash[:],
		ExpiresAt:       c.ExpiresAt,
	})
	if err != nil {
		return err
	}
	return v.s.Put(ctx, entry)
}

// GetChallenge implements store.Store.
func (v *vaultStore) GetChallenge(ctx context.Context, id string, now time.Time) (store.Challenge, error) {
	c, err := v.getChallenge(ctx, id)
	if err != nil {
		return store.Challenge{}, err
	}
	if c.Expired(now) {
		return store.Challenge{}, store.ErrExpired
	}
	return c, nil
}

func (v *vaultStore) getChallenge(ctx context.Context, id string) (store.Challenge, error) {
	if !validKey(id) {
		return store.Challenge{}, store.ErrNotFound
	}
	raw, err := v.s.Get(ctx, challengePrefix+id)
	switch {
	case err != nil:
		return store.Challenge{}, err
	case raw == nil:
		return store.Challenge{}, store.ErrNotFound
	}
	var e challengeEntry
	if err := raw.DecodeJSON(&e); err != nil {
		return store.Challenge{}, fmt.Errorf("unable to decode challenge %s: %w", id, err)
	}
	c := store.Challenge{
		ID:              id,
		EKPublic:        e.EKPublic,
		EKCertificate:   e.EKCertificate,
		EKIntermediates: e.EKIntermediates,
		AKPublic:        e.AKPublic,
		ExpiresAt:       e.ExpiresAt,
	}
	if len(e.SecretHash) != len(c.SecretHash) {
		return store.Challenge{}, fmt.Errorf("challenge %s has a %d-byte secret hash", id, len(e.SecretHash))
	}
	copy(c.SecretHash[:], e.SecretHash)
	return c, nil
}

// ConsumeChallenge implements store.Store. Vault storage has no
// transactions, so the challenge is consumed by a check-and-delete under
// a per-key lock: of concurrent calls on this node exactly one finds the
// challenge and deletes it. "challenge" and "login" run on the active node
// (performance standbys forward them), so the lock covers the cluster.
// The receipt is not stored (see vaultStore); its ID and time are set. A
// non-nil node's counters are written after the delete: if that write
// fails the challenge is used up and the caller releases nothing.
func (v *vaultStore) ConsumeChallenge(ctx context.Context, id string, r *store.Receipt, node *store.NodeRecord) error {
	if !validKey(id) {
		return store.ErrNotFound
	}
	if err := v.deleteChallenge(ctx, challengePrefix+id); err != nil {
		return err
	}
	if r != nil {
		if r.Time.IsZero() {
			r.Time = v.now().UTC()
		}
		if r.ID == "" {
			r.ID = "challenge-" + id
		}
	}
	if node == nil {
		return nil
	}
	return v.putNode(ctx, node)
}

// deleteChallenge deletes the challenge at key if it is there
// (store.ErrNotFound otherwise), under its lock. The lock is released
// before the node record is written: locks are shared by hash, and the node
// key's may be the same one.
func (v *vaultStore) deleteChallenge(ctx context.Context, key string) error {
	lock := locksutil.LockForKey(v.locks, key)
	lock.Lock()
	defer lock.Unlock()
	switch raw, err := v.s.Get(ctx, key); {
	case err != nil:
		return err
	case raw == nil:
		return store.ErrNotFound
	}
	return v.s.Delete(ctx, key)
}

func (v *vaultStore) putNode(ctx context.Context, n *store.NodeRecord) error {
	if !validKey(n.EKHash) {
		return fmt.Errorf("node record ek hash %q is malformed", n.EKHash)
	}
	key := nodePrefix + n.EKHash
	lock := locksutil.LockForKey(v.locks, key)
	lock.Lock()
	defer lock.Unlock()
	e := nodeEntry{
		EKHash:       n.EKHash,
		FirstSeen:    n.FirstSeen,
		LastSeen:     n.LastSeen,
		AKName:       n.AKName,
		Clock:        n.Clock,
		ResetCount:   n.ResetCount,
		RestartCount: n.RestartCount,
	}
	if e.FirstSeen.IsZero() {
		e.FirstSeen = e.LastSeen
	}
	entry, err := logical.StorageEntryJSON(key, e)
	if err != nil {
		return err
	}
	return v.s.Put(ctx, entry)
}

// GetNode implements store.Store. The record holds the node's counters and
// when it was first and last seen, no evidence.
func (v *vaultStore) GetNode(ctx context.Context, ekHash string) (store.NodeRecord, error) {
	if !validKey(ekHash) {
		return store.NodeRecord{}, store.ErrNotFound
	}
	raw, err := v.s.Get(ctx, nodePrefix+ekHash)
	switch {
	case err != nil:
		return store.NodeRecord{}, err
	case raw == nil:
		return store.NodeRecord{}, store.ErrNotFound
	}
	var e nodeEntry
	if err := raw.DecodeJSON(&e); err != nil {
		return store.NodeRecord{}, fmt.Errorf("unable to decode node record %s: %w", ekHash, err)
	}
	return store.NodeRecord{
		EKHash:       e.EKHash,
		FirstSeen:    e.FirstSeen,
		LastSeen:     e.LastSeen,
		AKName:       e.AKName,
		Clock:        e.Clock,
		ResetCount:   e.ResetCount,
		RestartCount: e.RestartCount,
	}, nil
}

// PurgeExpired implements store.Store.
func (v *vaultStore) PurgeExpired(ctx context.Context, now time.Time) (int, error) {
	ids, err := v.s.List(ctx, challengePrefix)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		purged, err := v.purge(ctx, id, now)
		if err != nil {
			return n, err
		}
		if purged {
			n++
		}
	}
	return n, nil
}

// purge deletes challenge id if it expired at now.
func (v *vaultStore) purge(ctx context.Context, id string, now time.Time) (bool, error) {
	key := challengePrefix + id
	lock := locksutil.LockForKey(v.locks, key)
	lock.Lock()
	defer lock.Unlock()
	c, err := v.getChallenge(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	case err != nil:
		// An entry that does not decode is of no use either.
		return true, v.s.Delete(ctx, key)
	case !c.Expired(now):
		return false, nil
	}
	return true, v.s.Delete(ctx, key)
}

// PutReceipt implements store.Store: receipts are not kept.
func (v *vaultStore) PutReceipt(context.Context, *store.Receipt) error { return errNotKept }

// ListReceipts implements store.Store: receipts are not kept.
func (v *vaultStore) ListReceipts(context.Context, store.ListOpts) ([]store.Receipt, error) {
	return nil, errNotKept
}

// GetReceipt implements store.Store: receipts are not kept.
func (v *vaultStore) GetReceipt(context.Context, string) (store.Receipt, error) {
	return store.Receipt{}, errNotKept
}

// ListNodes implements store.Store: not offered.
func (v *vaultStore) ListNodes(context.Context, store.ListNodesOpts) ([]store.NodeRecord, error) {
	return nil, errNotKept
}

// NodeBySVIDSerial implements store.Store: the auth method issues no SVIDs.
func (v *vaultStore) NodeBySVIDSerial(context.Context, string) (store.NodeRecord, error) {
	return store.NodeRecord{}, errNotKept
}

// GetDenial implements store.Store: the deny list is the broker's.
func (v *vaultStore) GetDenial(context.Context, string) (store.Denial, error) {
	return store.Denial{}, errNotKept
}

// Close implements store.Store; Vault owns the storage.
func (v *vaultStore) Close() error { return nil }
