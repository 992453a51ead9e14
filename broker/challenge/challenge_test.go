package challenge_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// testNode is the identity of a simulated TPM's RSA EK and AK.
func testNode(t *testing.T) (*verify.NodeIdentity, challenge.Evidence) {
	t.Helper()
	rw := tpmtest.Open(t)
	var ev challenge.Evidence
	var ekKey any
	for _, k := range []struct {
		load func() (*client.Key, error)
		pub  *[]byte
	}{
		{func() (*client.Key, error) { return client.EndorsementKeyRSA(rw) }, &ev.EKPublic},
		{func() (*client.Key, error) { return client.AttestationKeyRSA(rw) }, &ev.AKPublic},
	} {
		key, err := k.load()
		if err != nil {
			t.Fatal(err)
		}
		if ekKey == nil {
			ekKey = key.PublicKey()
		}
		*k.pub, err = key.PublicArea().Encode()
		key.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	hash, err := verify.EKHash(ekKey)
	if err != nil {
		t.Fatal(err)
	}
	node, err := verify.Node(ev.EKPublic, nil, nil, ev.AKPublic, verify.Trust{EKHashes: []string{hash}})
	if err != nil {
		t.Fatal(err)
	}
	return node, ev
}

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// An expired challenge comes back from Lookup with what it holds, so that
// its refusal can be recorded with Consume; once consumed it is unknown.
func TestLookupExpired(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clk := &clock{now: time.Now()}
	iss := challenge.New(st, challenge.Opts{TTL: time.Minute, Now: clk.Now})
	issued, err := iss.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		advance time.Duration
		wantErr error
	}{
		{"fresh", 0, nil},
		{"just before expiry", time.Minute - time.Millisecond, nil},
		{"at expiry", time.Millisecond, challenge.ErrExpired},
		{"long after expiry", time.Hour, challenge.ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.Advance(tt.advance)
			c, err := iss.Lookup(ctx, issued.ID)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Lookup = %v, want %v", err, tt.wantErr)
			}
			if c.ID != issued.ID || !c.ExpiresAt.Equal(issued.ExpiresAt) || string(c.AKPublic) != string(ev.AKPublic) {
				t.Fatalf("Lookup returned challenge %q expiring %v; want %q expiring %v with the AK presented",
					c.ID, c.ExpiresAt, issued.ID, issued.ExpiresAt)
			}
			if c.SecretHash == [32]byte{} {
				t.Fatal("challenge holds no secret hash")
			}
		})
	}

	rec := &store.Receipt{ChallengeID: issued.ID, Check: "challenge"}
	if err := iss.Consume(ctx, issued.ID, rec, nil); err != nil {
		t.Fatalf("Consume of the expired challenge: %v", err)
	}
	if _, err := st.GetReceipt(ctx, rec.ID); err != nil {
		t.Fatalf("receipt of the expired challenge: %v", err)
	}
	if _, err := iss.Lookup(ctx, issued.ID); !errors.Is(err, challenge.ErrUnknown) {
		t.Fatalf("Lookup after Consume = %v, want %v", err, challenge.ErrUnknown)
	}
	if _, err := iss.Lookup(ctx, "no-such-challenge"); !errors.Is(err, challenge.ErrUnknown) {
		t.Fatalf("Lookup of an unknown ID = %v, want %v", err, challenge.ErrUnknown)
	}
}
