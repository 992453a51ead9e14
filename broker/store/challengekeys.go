package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ChallengeKeySize is the size of a challenge key's secret.
const ChallengeKeySize = 32

// ChallengeKey is a key that seals challenge tokens, shared by every
// replica through the store. Keys are rotated: the newest seals, all stored
// ones open.
type ChallengeKey struct {
	// ID names the key in the tokens it sealed: 8 lowercase hex digits.
	ID string `json:"id"`
	// Secret is the AEAD key, ChallengeKeySize bytes.
	Secret []byte `json:"secret"`
	// Created is when the key was made; the newest key seals.
	Created time.Time `json:"created"`
}

// Validate checks that k can be stored.
func (k ChallengeKey) Validate() error {
	var errs []error
	if len(k.ID) != 8 || !isLowerHex(k.ID) {
		errs = append(errs, errors.New("challenge key id must be 8 lowercase hex digits"))
	}
	if len(k.Secret) != ChallengeKeySize {
		errs = append(errs, fmt.Errorf("challenge key has %d bytes, want %d", len(k.Secret), ChallengeKeySize))
	}
	if k.Created.IsZero() {
		errs = append(errs, errors.New("challenge key creation time cannot be zero"))
	}
	return errors.Join(errs...)
}

// ChallengeKeys keeps the challenge keys. Implementations are safe for
// concurrent use, also across processes sharing the store.
type ChallengeKeys interface {
	// ChallengeKeys returns every stored key, newest first.
	ChallengeKeys(ctx context.Context) ([]ChallengeKey, error)
	// AddChallengeKey stores k as the newest key if the newest stored key
	// is still newestID ("" when there is none), and deletes the keys
	// created before deleteBefore, in one transaction. If another process
	// added a key first it stores nothing and returns an error wrapping
	// ErrConflict: read the keys again.
	AddChallengeKey(ctx context.Context, k ChallengeKey, newestID string, deleteBefore time.Time) error
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// CheckNewest returns ErrConflict unless the newest of keys (newest first)
// is newestID, "" meaning no key: what AddChallengeKey checks, in its
// transaction, before adding a key.
func CheckNewest(keys []ChallengeKey, newestID string) error {
	newest := ""
	if len(keys) > 0 {
		newest = keys[0].ID
	}
	if newest != newestID {
		return ErrConflict
	}
	return nil
}
