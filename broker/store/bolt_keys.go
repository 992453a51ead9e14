package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ChallengeKeys implements ChallengeKeys.
func (b *Bolt) ChallengeKeys(ctx context.Context) ([]ChallengeKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("unable to read challenge keys: %w", err)
	}
	var keys []ChallengeKey
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		keys, err = readChallengeKeys(tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("unable to read challenge keys: %w", err)
	}
	return keys, nil
}

// readChallengeKeys returns the keys in tx, newest first.
func readChallengeKeys(tx *bolt.Tx) ([]ChallengeKey, error) {
	bk := tx.Bucket(bucketChallengeKeys)
	if bk == nil {
		return nil, nil // a store opened read-only before keys existed
	}
	var keys []ChallengeKey
	err := bk.ForEach(func(k, v []byte) error {
		var key ChallengeKey
		if err := json.Unmarshal(v, &key); err != nil {
			return fmt.Errorf("unable to decode challenge key %s: %w", k, err)
		}
		keys = append(keys, key)
		return nil
	})
	sortNewestFirst(keys)
	return keys, err
}

// sortNewestFirst orders keys by creation time, newest first (then by ID).
func sortNewestFirst(keys []ChallengeKey) {
	slices.SortFunc(keys, func(a, b ChallengeKey) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return -compareStrings(a.ID, b.ID)
	})
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// AddChallengeKey implements ChallengeKeys.
func (b *Bolt) AddChallengeKey(ctx context.Context, k ChallengeKey, newestID string, deleteBefore time.Time) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unable to add challenge key: %w", err)
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("unable to add challenge key: %w", err)
	}
	val, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("unable to encode challenge key: %w", err)
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		keys, err := readChallengeKeys(tx)
		if err != nil {
			return err
		}
		if err := CheckNewest(keys, newestID); err != nil {
			return err
		}
		bk := tx.Bucket(bucketChallengeKeys)
		if bk.Get([]byte(k.ID)) != nil {
			return fmt.Errorf("challenge key id %w", ErrExists)
		}
		for _, old := range keys {
			if old.Created.Before(deleteBefore) {
				if err := bk.Delete([]byte(old.ID)); err != nil {
					return err
				}
			}
		}
		return bk.Put([]byte(k.ID), val)
	})
	if err != nil {
		return fmt.Errorf("unable to add challenge key: %w", err)
	}
	return nil
}
