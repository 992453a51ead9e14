package challenge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// DefaultKeyRotation is how long a challenge key seals new challenges
// before a replica replaces it, when Opts.KeyRotation is zero.
const DefaultKeyRotation = 24 * time.Hour

// keyRefresh is how often a KeyRing reads the keys again to learn of a key
// another replica added, and the least time between two reads caused by
// tokens naming a key it does not know (so that forged tokens cannot make
// it read the store at will).
const keyRefresh = time.Second

// KeyRing holds the challenge keys that every replica shares through the
// store: the newest seals, every stored one opens. A replica that finds the
// newest key older than the rotation period adds a new one; a key is
// deleted once every challenge it sealed has expired (MaxTTL after the next
// key replaced it), so a challenge issued before a rotation is still
// accepted until it expires.
type KeyRing struct {
	store    store.ChallengeKeys
	rotation time.Duration
	now      func() time.Time

	mu     sync.Mutex
	keys   []store.ChallengeKey // newest first
	loaded time.Time            // when keys were read
}

// NewKeyRing returns a KeyRing keeping its keys in s. A zero rotation
// means DefaultKeyRotation; a nil now means time.Now.
func NewKeyRing(s store.ChallengeKeys, rotation time.Duration, now func() time.Time) *KeyRing {
	if rotation <= 0 {
		rotation = DefaultKeyRotation
	}
	if now == nil {
		now = time.Now
	}
	return &KeyRing{store: s, rotation: rotation, now: now}
}

// sealing returns the key that seals new challenges, reading the keys when
// they are stale and adding a key when none is young enough.
func (r *KeyRing) sealing(ctx context.Context) (store.ChallengeKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.loaded) >= keyRefresh || len(r.keys) == 0 {
		if err := r.loadLocked(ctx, now); err != nil {
			return store.ChallengeKey{}, err
		}
	}
	for range 3 {
		if len(r.keys) > 0 && now.Sub(r.keys[0].Created) < r.rotation {
			return r.keys[0], nil
		}
		err := r.addLocked(ctx, now)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return store.ChallengeKey{}, err
		}
		// Added, or another replica added one first: read them again.
		if err := r.loadLocked(ctx, now); err != nil {
			return store.ChallengeKey{}, err
		}
	}
	if len(r.keys) == 0 {
		return store.ChallengeKey{}, errors.New("unable to get a challenge key: none stored")
	}
	return r.keys[0], nil
}

// opening returns the key named id, reading the keys again (at most every
// keyRefresh) when it is not known.
func (r *KeyRing) opening(ctx context.Context, id string) (store.ChallengeKey, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok := r.findLocked(id); ok {
		return k, true, nil
	}
	now := r.now()
	if now.Sub(r.loaded) < keyRefresh {
		return store.ChallengeKey{}, false, nil
	}
	if err := r.loadLocked(ctx, now); err != nil {
		return store.ChallengeKey{}, false, err
	}
	k, ok := r.findLocked(id)
	return k, ok, nil
}

func (r *KeyRing) findLocked(id string) (store.ChallengeKey, bool) {
	for _, k := range r.keys {
		if k.ID == id {
			return k, true
		}
	}
	return store.ChallengeKey{}, false
}

// loadLocked reads the keys. A failed read counts as a read for the
// refresh interval too, so that tokens naming unknown keys cannot make a
// failing store be asked again and again.
func (r *KeyRing) loadLocked(ctx context.Context, now time.Time) error {
	r.loaded = now
	keys, err := r.store.ChallengeKeys(ctx)
	if err != nil {
		return fmt.Errorf("unable to read challenge keys: %w", err)
	}
	r.keys = keys
	return nil
}

// addLocked adds a fresh key, deleting the keys whose challenges have all
// expired: those older than the current newest key, once MaxTTL has passed
// since it replaced them.
func (r *KeyRing) addLocked(ctx context.Context, now time.Time) error {
	var id [4]byte
	secret := make([]byte, store.ChallengeKeySize)
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("unable to generate a challenge key: %w", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return fmt.Errorf("unable to generate a challenge key: %w", err)
	}
	newest, deleteBefore := "", time.Time{}
	if len(r.keys) > 0 {
		newest = r.keys[0].ID
		if r.keys[0].Created.Add(MaxTTL).Before(now) {
			deleteBefore = r.keys[0].Created
		}
	}
	k := store.ChallengeKey{ID: hex.EncodeToString(id[:]), Secret: secret, Created: now.UTC()}
	return r.store.AddChallengeKey(ctx, k, newest, deleteBefore)
}
