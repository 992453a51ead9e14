package vaultauth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
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
//   - node/<EK hash>: the node's record (store.NodeRecord, JSON): the TPM
//     counters of its last verified login, which the next login's counters
//     are compared with (GetNode), and the evidence it presented, so that
//     a policy can be tried on it later (read at nodes/, with the event
//     log put back); its event log apart, once per content:
//   - eventlog/<SHA-256 of the log>: an event log, as presented (logs
//     larger than maxStoredEventLog are not kept: the record names them by
//     digest only);
//   - receipt/<receipt ID>: the receipt of each decision, chained (Seq,
//     Prev) and stored as its canonical encoding (store.EncodeReceipt),
//     written before the login answers: no token without its receipt;
//     listed and read at receipts/. chain/head and chain/seq/<seq> order
//     the chain (chain.go), checkpoint/<seq> and checkpoint_key sign it
//     (checkpoints.go);
//   - denied/<EK hash>: the node's deny-list entry (store.Denial, JSON),
//     added and removed as the broker's are.
//
// Vault's audit log records each login and its outcome as before.
type vaultStore struct {
	s     logical.Storage
	locks []*locksutil.LockEntry
	chain *chain
	now   func() time.Time
	// chained is told the head after each receipt chained (nil: nothing).
	chained func(ctx context.Context, head store.ChainHead)
}

var (
	_ store.ChallengeKeys = (*vaultStore)(nil)
	_ store.Decisions     = (*vaultStore)(nil)
)

func (b *tpmAuthBackend) store(s logical.Storage) *vaultStore {
	return &vaultStore{s: s, locks: b.storageLocks, chain: &b.chain, now: b.now,
		chained: func(ctx context.Context, head store.ChainHead) { b.receiptChained(ctx, s, head) }}
}

// receiptChained signs the chain head when it is a multiple of the
// configured checkpoint_every; a failure is logged (the periodic function
// tries again), the login goes on.
func (b *tpmAuthBackend) receiptChained(ctx context.Context, s logical.Storage, head store.ChainHead) {
	every, _, err := b.checkpointSchedule(ctx, s)
	if err == nil && head.Seq%every != 0 {
		return
	}
	if err == nil {
		_, err = b.signCheckpoint(ctx, s, true)
	}
	if err != nil {
		b.Logger().Error("unable to sign a receipt checkpoint", "seq", head.Seq, "error", err)
	}
}

// markerEntry is the stored form of a used challenge.
type markerEntry struct {
	ExpiresAt time.Time `json:"expires_at"`
}

// maxStoredEventLog bounds the event logs kept in Vault storage, whose
// entries are at most 1 MiB on integrated storage.
const maxStoredEventLog = 512 << 10

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
// the challenge has no marker and writes the marker. "login" runs on the
// active node (performance standbys forward it), so the locks cover the
// cluster and of concurrent Records on one challenge exactly one succeeds.
// Then the receipt is chained (appendReceipt: seq index entry, receipt,
// head, under the chain lock), and the node record and the deny-list
// change are written, each its own storage write: if one fails the
// challenge stays used up and the caller issues nothing, so no token
// exists without its receipt.
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
	r.DenyListed = d.Deny == store.DenyAdd
	var keys []string
	if d.ChallengeID != "" {
		keys = append(keys, consumedPrefix+d.ChallengeID)
	}
	if d.Node != nil {
		d.Node.LastReceiptID = r.ID
		keys = append(keys, nodePrefix+d.Node.EKHash)
	}
	if r.EKHash != "" && d.Deny != store.DenyUnchanged {
		keys = append(keys, deniedPrefix+r.EKHash)
	}
	// LocksForKeys orders the locks and drops duplicates: the keys may
	// hash to the same lock.
	locks := locksutil.LocksForKeys(v.locks, keys)
	for _, l := range locks {
		l.Lock()
		defer l.Unlock()
	}
	// The marker first (single use), then the receipt: a login whose
	// receipt is not written issues nothing.
	if d.ChallengeID != "" {
		if err := v.consume(ctx, d.ChallengeID, d.ChallengeExpiry); err != nil {
			return err
		}
	}
	head, err := v.appendReceipt(ctx, r)
	if err != nil {
		return err
	}
	if d.Node != nil {
		if err := v.putNode(ctx, d.Node); err != nil {
			return err
		}
	}
	switch d.Deny {
	case store.DenyAdd:
		err = v.putJSON(ctx, deniedPrefix+r.EKHash, store.Denial{EKHash: r.EKHash, Time: r.Time, ReceiptID: r.ID, Check: r.Check})
	case store.DenyRemove:
		err = v.s.Delete(ctx, deniedPrefix+r.EKHash)
	}
	if err == nil && v.chained != nil {
		v.chained(ctx, head)
	}
	return err
}

func (v *vaultStore) putJSON(ctx context.Context, key string, val any) error {
	entry, err := logical.StorageEntryJSON(key, val)
	if err != nil {
		return err
	}
	return v.s.Put(ctx, entry)
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

// putNode writes n, its event log apart (once per content). The caller
// holds the record's lock.
func (v *vaultStore) putNode(ctx context.Context, n *store.NodeRecord) error {
	rec := *n
	if rec.FirstSeen.IsZero() {
		rec.FirstSeen = rec.LastSeen
	}
	if log := rec.Evidence.EventLog; len(log) > 0 {
		sum := sha256.Sum256(log)
		rec.Evidence.EventLog, rec.Evidence.EventLogSHA256 = nil, hex.EncodeToString(sum[:])
		key := eventLogPrefix + rec.Evidence.EventLogSHA256
		switch old, err := v.s.Get(ctx, key); {
		case err != nil:
			return err
		case old == nil && len(log) <= maxStoredEventLog:
			if err := v.s.Put(ctx, &logical.StorageEntry{Key: key, Value: log}); err != nil {
				return err
			}
		}
	}
	return v.putJSON(ctx, nodePrefix+rec.EKHash, rec)
}

// GetNode returns the record of the node with this EK hash, or
// store.ErrNotFound, as store.Nodes does, with its event log put back when
// it is kept. Records written before the auth method kept evidence hold
// the counters and times only.
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
	var n store.NodeRecord
	if err := raw.DecodeJSON(&n); err != nil {
		return store.NodeRecord{}, fmt.Errorf("unable to decode node record %s: %w", ekHash, err)
	}
	if sum := n.Evidence.EventLogSHA256; sum != "" {
		log, err := v.s.Get(ctx, eventLogPrefix+sum)
		if err != nil {
			return store.NodeRecord{}, err
		}
		if log != nil {
			n.Evidence.EventLog, n.Evidence.EventLogSHA256 = log.Value, ""
		}
	}
	return n, nil
}

// GetReceipt returns a receipt, or store.ErrNotFound.
func (v *vaultStore) GetReceipt(ctx context.Context, id string) (store.Receipt, error) {
	_, r, err := v.receipt(ctx, id)
	return r, err
}

// receipt returns a receipt and its stored bytes (a chained receipt's
// canonical encoding), or store.ErrNotFound.
func (v *vaultStore) receipt(ctx context.Context, id string) ([]byte, store.Receipt, error) {
	if !validKey(strings.ReplaceAll(id, ".", "-")) { // receipt IDs hold their time's fraction
		return nil, store.Receipt{}, store.ErrNotFound
	}
	raw, err := v.s.Get(ctx, receiptPrefix+id)
	switch {
	case err != nil:
		return nil, store.Receipt{}, err
	case raw == nil:
		return nil, store.Receipt{}, store.ErrNotFound
	}
	var r store.Receipt
	if err := json.Unmarshal(raw.Value, &r); err != nil {
		return nil, store.Receipt{}, fmt.Errorf("unable to decode receipt %s: %w", id, err)
	}
	return raw.Value, r, nil
}

// GetDenial returns a node's deny-list entry, or store.ErrNotFound.
func (v *vaultStore) GetDenial(ctx context.Context, ekHash string) (store.Denial, error) {
	if !validKey(ekHash) {
		return store.Denial{}, store.ErrNotFound
	}
	raw, err := v.s.Get(ctx, deniedPrefix+ekHash)
	switch {
	case err != nil:
		return store.Denial{}, err
	case raw == nil:
		return store.Denial{}, store.ErrNotFound
	}
	var d store.Denial
	if err := raw.DecodeJSON(&d); err != nil {
		return store.Denial{}, fmt.Errorf("unable to decode deny-list entry %s: %w", ekHash, err)
	}
	return d, nil
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
