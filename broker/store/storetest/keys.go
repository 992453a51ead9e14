package storetest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

func challengeKey(id string, created time.Time) store.ChallengeKey {
	return store.ChallengeKey{ID: id, Secret: bytes.Repeat([]byte(id[:1]), store.ChallengeKeySize), Created: created}
}

func keyIDs(t *testing.T, b store.Backend) string {
	t.Helper()
	keys, err := b.ChallengeKeys(ctxT(t))
	if err != nil {
		t.Fatalf("ChallengeKeys: %v", err)
	}
	var ids []string
	for _, k := range keys {
		if want := challengeKey(k.ID, k.Created); !bytes.Equal(k.Secret, want.Secret) {
			t.Errorf("key %s has secret %x, want %x", k.ID, k.Secret, want.Secret)
		}
		ids = append(ids, k.ID)
	}
	return strings.Join(ids, ",")
}

func testChallengeKeys(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	if got := keyIDs(t, b); got != "" {
		t.Fatalf("keys in an empty store: %s", got)
	}
	k1 := challengeKey("1111aaaa", T0)
	k2 := challengeKey("2222bbbb", T0.Add(time.Hour))
	k3 := challengeKey("3333cccc", T0.Add(2*time.Hour))
	if err := b.AddChallengeKey(ctx, k1, "", time.Time{}); err != nil {
		t.Fatalf("AddChallengeKey(k1): %v", err)
	}
	// A process that has not seen k1 yet adds nothing.
	if err := b.AddChallengeKey(ctx, k2, "", time.Time{}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AddChallengeKey with a stale newest ID: got %v, want ErrConflict", err)
	}
	if err := b.AddChallengeKey(ctx, k2, "0000ffff", time.Time{}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AddChallengeKey with an unknown newest ID: got %v, want ErrConflict", err)
	}
	if got := keyIDs(t, b); got != "1111aaaa" {
		t.Fatalf("keys after conflicts = %s, want 1111aaaa", got)
	}
	if err := b.AddChallengeKey(ctx, k2, k1.ID, time.Time{}); err != nil {
		t.Fatalf("AddChallengeKey(k2): %v", err)
	}
	if got := keyIDs(t, b); got != "2222bbbb,1111aaaa" {
		t.Fatalf("keys = %s, want newest first 2222bbbb,1111aaaa", got)
	}
	// Adding k3 deletes the keys created before k2.
	if err := b.AddChallengeKey(ctx, k3, k2.ID, k2.Created); err != nil {
		t.Fatalf("AddChallengeKey(k3): %v", err)
	}
	if got := keyIDs(t, b); got != "3333cccc,2222bbbb" {
		t.Fatalf("keys = %s, want 3333cccc,2222bbbb", got)
	}
	keys, err := b.ChallengeKeys(ctx)
	if err != nil || !keys[0].Created.Equal(k3.Created) {
		t.Errorf("newest key = %+v, %v; want created %v", keys, err, k3.Created)
	}

	for _, tt := range []struct {
		name    string
		k       store.ChallengeKey
		wantErr string
	}{
		{"taken id", challengeKey("2222bbbb", T0.Add(3*time.Hour)), "challenge key id already exists"},
		{"bad id", challengeKey("XYZ", T0.Add(3*time.Hour)), "challenge key id must be 8 lowercase hex digits"},
		{"short secret", store.ChallengeKey{ID: "4444dddd", Secret: []byte("short"), Created: T0}, "challenge key has 5 bytes, want 32"},
		{"no creation time", challengeKey("4444dddd", time.Time{}), "challenge key creation time cannot be zero"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := b.AddChallengeKey(ctx, tt.k, k3.ID, time.Time{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("AddChallengeKey = %v; want %q", err, tt.wantErr)
			}
			if got := keyIDs(t, b); got != "3333cccc,2222bbbb" {
				t.Errorf("keys after a refused add = %s", got)
			}
		})
	}
}

// testCanceledContext checks that every method gives up on a canceled
// context with an error wrapping context.Canceled, writing nothing.
func testCanceledContext(t *testing.T, b store.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	check := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: got %v, want context.Canceled", name, err)
		}
	}
	n := Node("ek", 1)
	check("Record", b.Record(ctx, Decide("c1", "ek", &n)))
	_, err := b.PurgeConsumed(ctx, time.Now())
	check("PurgeConsumed", err)
	_, err = b.ListReceipts(ctx, store.ListOpts{})
	check("ListReceipts", err)
	_, err = b.GetReceipt(ctx, "r1")
	check("GetReceipt", err)
	_, err = b.DeleteReceiptsBefore(ctx, time.Now(), 10, Seal)
	check("DeleteReceiptsBefore", err)
	_, err = b.GetNode(ctx, "ek")
	check("GetNode", err)
	_, err = b.ListNodes(ctx, store.ListNodesOpts{})
	check("ListNodes", err)
	_, err = b.NodeBySVIDSerial(ctx, "1a")
	check("NodeBySVIDSerial", err)
	_, err = b.GetDenial(ctx, "ek")
	check("GetDenial", err)
	_, err = b.ChallengeKeys(ctx)
	check("ChallengeKeys", err)
	_, err = b.ChainHead(ctx)
	check("ChainHead", err)
	check("PutCheckpoint", b.PutCheckpoint(ctx, store.Checkpoint{}))
	_, err = b.ListCheckpoints(ctx, 0, 0)
	check("ListCheckpoints", err)
	check("AddChallengeKey", b.AddChallengeKey(ctx, challengeKey("1111aaaa", T0), "", time.Time{}))
	assertEmpty(t, b, "ek")
	if got := keyIDs(t, b); got != "" {
		t.Errorf("keys after a canceled add: %s", got)
	}
}
