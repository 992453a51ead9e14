package vaultauth

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/store"
)

// vaultStore keeps in Vault's storage what the auth method needs of
// keybroker's store interfaces:
//
//   - challengeKeysPath: the challenge keys (store.ChallengeKeys), newest
//     first, in one seal-wrapped entry. A challenge is a token sealed under
//     them, so issuing one writes nothing, and a challenge survives a
//     restart or a leader change because the keys are in storage.
//   - consumed/<challenge ID>: the marker of a challenge a login used up,
//     with the challenge's expiry; store.Decisions.Record writes it, the
//     backend's periodic function deletes it once the challenge expired
//     (PurgeConsumed).
//   - node/<EK hash>: the TPM counters of the node's last verified login,
//     which the next login's counters are compared with (GetNode).
//
// Receipts, node evidence, node SVIDs and the deny list are not kept:
// Record assigns the receipt's ID and time but stores neither, and ignores
// the decision's deny-list change. Vault's audit log records each login and
// its outcome, and the backend logs each decision with the failed check.
type vaultStore struct {
	s     logical.Storage
	locks []*locksutil.LockEntry
	now   func() time.Time
}

var (
	_ store.ChallengeKeys = (*vaultStore)(nil)
	_ store.Decisions     = (*vaultStore)(nil)
)

func (b *tpmAuthBackend) store(s logical.Storage) *vaultStore {
	return &vaultStore{s: s, locks: b.storageLocks, now: b.now}
}

// markerEntry is the stored form of a used challenge.
type markerEntry struct {
	ExpiresAt time.Time `json:"expires_at"`
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

// ChallengeKeys implements store.ChallengeKeys.
func (v *vaultStore) ChallengeKeys(ctx context.Context) ([]store.ChallengeKey, error) {
	raw, err := v.s.Get(ctx, challengeKeysPath)
	if err != nil || raw == nil {
		return nil, err
	}
	var keys []store.ChallengeKey
	if err := raw.DecodeJSON(&keys); err != nil {
		return nil, fmt.Errorf("unable to decode the challenge keys: %w", err)
	}
	for _, k := range keys {
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("stored challenge key is invalid: %w", err)
		}
	}
	return keys, nil
}

// AddChallengeKey implements store.ChallengeKeys: a check-and-put of the
// one entry holding every key, under its lock. "challenge" and "login" run
// on the active node (performance standbys forward them), so the lock
// covers the cluster.
func (v *vaultStore) AddChallengeKey(ctx context.Context, k store.ChallengeKey, newestID string, deleteBefore time.Time) error {
	if err := k.Validate(); err != nil {
		return err
	}
	lock := locksutil.LockForKey(v.locks, challengeKeysPath)
	lock.Lock()
	defer lock.Unlock()
	keys, err := v.ChallengeKeys(ctx)
	if err != nil {
		return err
	}
	if err := store.CheckNewest(keys, newestID); err != nil {
		return fmt.Errorf("unable to add a challenge key: %w", err)
	}
	out := []store.ChallengeKey{k}
	for _, old := range keys {
		if old.ID == k.ID {
			return fmt.Errorf("unable to add a challenge key: %w", store.ErrConflict)
		}
		if !old.Created.Before(deleteBefore) {
			out = append(out, old)
		}
	}
	entry, err := logical.StorageEntryJSON(challengeKeysPath, out)
	if err != nil {
		return err
	}
	return v.s.Put(ctx, entry)
}

// Record implements store.Decisions. Vault storage has no transactions:
// under the locks of the marker and of the node record, Record checks that
// the challenge has no marker, writes the marker, then the node's counters.
// "login" runs on the active node (performance standbys forward it), so
// the locks cover the cluster and of concurrent Records on one challenge
// exactly one succeeds. If the node write fails the challenge stays used
// up and the caller issues nothing. The receipt's ID and time are set but
// the receipt is not stored, and d.Deny is ignored (see vaultStore).
func (v *vaultStore) Record(ctx context.Context, d *store.Decision) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if d.ChallengeID != "" && !validKey(d.ChallengeID) {
		return fmt.Errorf("challenge id %q is not [A-Za-z0-9_-]", d.ChallengeID)
	}
	if d.Node != nil && !validKey(d.Node.EKHash) {
		return fmt.Errorf("node record ek hash %q is malformed", d.Node.EKHash)
	}
	r := d.Receipt
	if r.Time.IsZero() {
		r.Time = v.now().UTC()
	}
	if r.ID == "" {
		r.ID = store.NewReceiptID(r.Time)
	}
	var keys []string
	if d.ChallengeID != "" {
		keys = append(keys, consumedPrefix+d.ChallengeID)
	}
	if d.Node != nil {
		d.Node.LastReceiptID = r.ID
		keys = append(keys, nodePrefix+d.Node.EKHash)
	}
	// LocksForKeys orders the locks and drops duplicates: the marker's
	// and the node's keys may hash to the same lock.
	locks := locksutil.LocksForKeys(v.locks, keys)
	for _, l := range locks {
		l.Lock()
		defer l.Unlock()
	}
	if d.ChallengeID != "" {
		if err := v.consume(ctx, d.ChallengeID, d.ChallengeExpiry); err != nil {
			return err
		}
	}
	if d.Node == nil {
		return nil
	}
	return v.putNode(ctx, d.Node)
}

// consume writes the marker of challenge id, or fails with
// store.ErrConsumed if it is there already. The caller holds its lock.
// Used implements store.Decisions.
func (v *vaultStore) Used(ctx context.Context, id string) (bool, error) {
	if !validKey(id) {
		return false, nil
	}
	e, err := v.s.Get(ctx, consumedPrefix+id)
	if err != nil {
		return false, err
	}
	return e != nil, nil
}

func (v *vaultStore) consume(ctx context.Context, id string, expires time.Time) error {
	key := consumedPrefix + id
	switch old, err := v.s.Get(ctx, key); {
	case err != nil:
		return err
	case old != nil:
		return fmt.Errorf("challenge %s: %w", id, store.ErrConsumed)
	}
	entry, err := logical.StorageEntryJSON(key, markerEntry{ExpiresAt: expires.UTC()})
	if err != nil {
		return err
	}
	return v.s.Put(ctx, entry)
}

// putNode writes n's counters. The caller holds the record's lock.
func (v *vaultStore) putNode(ctx context.Context, n *store.NodeRecord) error {
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
	entry, err := logical.StorageEntryJSON(nodePrefix+n.EKHash, e)
	if err != nil {
		return err
	}
	return v.s.Put(ctx, entry)
}

// GetNode returns the record of the node with this EK hash, or
// store.ErrNotFound, as store.Nodes does. The record holds the node's
// counters and when it was first and last seen, no evidence.
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

// PurgeConsumed implements store.Decisions: it deletes the markers of
// challenges expired at now, which Issuer.Open refuses as expired before
// any marker is read.
func (v *vaultStore) PurgeConsumed(ctx context.Context, now time.Time) (int, error) {
	ids, err := v.s.List(ctx, consumedPrefix)
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

// purge deletes the marker of challenge id if its challenge expired more
// than store.MarkerGrace before now.
func (v *vaultStore) purge(ctx context.Context, id string, now time.Time) (bool, error) {
	key := consumedPrefix + id
	lock := locksutil.LockForKey(v.locks, key)
	lock.Lock()
	defer lock.Unlock()
	raw, err := v.s.Get(ctx, key)
	if err != nil || raw == nil {
		return false, err
	}
	// A marker that does not decode is kept: deleting it could let its
	// challenge be used again.
	var e markerEntry
	if err := raw.DecodeJSON(&e); err != nil || now.Before(e.ExpiresAt.Add(store.MarkerGrace)) {
		return false, nil
	}
	return true, v.s.Delete(ctx, key)
}
