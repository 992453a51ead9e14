package challenge_test

import (
	"bytes"
	"context"
	"encoding/base64"
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
	node, err := verify.Node(ev.EKPublic, nil, nil, ev.AKPublic, verify.Opts{Trust: verify.Trust{EKHashes: []string{hash}}})
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

func openStore(t *testing.T) *store.Bolt {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// An expired challenge comes back from Open with what it holds, so that its
// refusal can be recorded; its ID is what receipts name.
func TestOpenExpired(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	clk := &clock{now: time.Now()}
	iss := challenge.New(openStore(t), challenge.Opts{TTL: time.Minute, Now: clk.Now})
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
			c, err := iss.Open(ctx, issued.ID, ev)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open = %v, want %v", err, tt.wantErr)
			}
			if c.ID != challenge.IDOf(issued.ID) || !c.ExpiresAt.Equal(issued.ExpiresAt) || string(c.AKPublic) != string(ev.AKPublic) {
				t.Fatalf("Open returned challenge %q expiring %v; want %q expiring %v with the AK presented",
					c.ID, c.ExpiresAt, challenge.IDOf(issued.ID), issued.ExpiresAt)
			}
			if c.SecretHash == [32]byte{} {
				t.Fatal("challenge holds no secret hash")
			}
		})
	}
}

// Issuing a challenge writes nothing but the first challenge key; opening
// one writes nothing at all.
func TestIssueWritesNothing(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	st := openStore(t)
	iss := challenge.New(st, challenge.Opts{})
	var ids []string
	for range 20 {
		issued, err := iss.Issue(ctx, node, ev)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, issued.ID)
	}
	keys, err := st.ChallengeKeys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("challenge keys = %v, %v; want one", keys, err)
	}
	for _, id := range ids {
		if _, err := iss.Open(ctx, id, ev); err != nil {
			t.Fatalf("Open: %v", err)
		}
	}
	if rs, _ := st.ListReceipts(ctx, store.ListOpts{}); len(rs) != 0 {
		t.Fatalf("receipts written: %v", rs)
	}
}

// Tokens that are not the broker's are unknown; a token answered with other
// EK or AK material is a mismatch.
func TestOpenRefusals(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	st := openStore(t)
	iss := challenge.New(st, challenge.Opts{})
	issued, err := iss.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(issued.ID)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 1
		return base64.RawURLEncoding.EncodeToString(b)
	}
	// A broker with its own key (another store) cannot open it, and its
	// tokens do not open here.
	other := challenge.New(openStore(t), challenge.Opts{})
	foreign, err := other.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}
	otherAK := ev
	otherAK.AKPublic = append(bytes.Clone(ev.AKPublic), 0)
	withCert := ev
	withCert.EKCertificate = []byte("a certificate the challenge did not see")
	tests := []struct {
		name    string
		token   string
		ev      challenge.Evidence
		wantErr error
	}{
		{"empty", "", ev, challenge.ErrUnknown},
		{"garbage", "not a token", ev, challenge.ErrUnknown},
		{"truncated", issued.ID[:len(issued.ID)-1], ev, challenge.ErrUnknown},
		{"one more character", issued.ID + "A", ev, challenge.ErrUnknown},
		{"version changed", flip(0), ev, challenge.ErrUnknown},
		{"key id changed", flip(2), ev, challenge.ErrUnknown},
		{"nonce changed", flip(8), ev, challenge.ErrUnknown},
		{"sealed claims changed", flip(30), ev, challenge.ErrUnknown},
		{"tag changed", flip(len(raw) - 1), ev, challenge.ErrUnknown},
		{"padded base64", issued.ID + "=", ev, challenge.ErrUnknown},
		{"sealed by another broker's key", foreign.ID, ev, challenge.ErrUnknown},
		{"another AK presented", issued.ID, otherAK, challenge.ErrMismatch},
		{"an EK certificate added", issued.ID, withCert, challenge.ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := iss.Open(ctx, tt.token, tt.ev)
			if !errors.Is(err, tt.wantErr) || c.ID != "" {
				t.Fatalf("Open = %+v, %v; want %v", c, err, tt.wantErr)
			}
		})
	}
	if _, err := iss.Open(ctx, issued.ID, ev); err != nil {
		t.Fatalf("the genuine token after the refusals: %v", err)
	}
}

// Two issuers sharing a store (two replicas): a challenge issued by one is
// opened by the other, also one issued under a key the other has not read
// yet.
func TestReplicasShareKeys(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	st := openStore(t)
	clk := &clock{now: time.Now()}
	a := challenge.New(st, challenge.Opts{KeyRotation: time.Hour, Now: clk.Now})
	b := challenge.New(st, challenge.Opts{KeyRotation: time.Hour, Now: clk.Now})
	issued, err := a.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(ctx, issued.ID, ev); err != nil {
		t.Fatalf("replica B opening A's challenge: %v", err)
	}
	// A rotates; B learns of the new key when a token names it.
	clk.Advance(time.Hour + time.Second)
	rotated, err := a.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(ctx, rotated.ID, ev); err != nil {
		t.Fatalf("replica B opening a challenge under the new key: %v", err)
	}
	keys, _ := st.ChallengeKeys(ctx)
	if len(keys) != 2 {
		t.Fatalf("%d keys after one rotation, want 2", len(keys))
	}
}

// A challenge issued before a rotation is accepted until it expires; the key
// that sealed it is deleted once all its challenges have expired.
func TestRotationKeepsOutstandingChallenges(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	st := openStore(t)
	clk := &clock{now: time.Now()}
	iss := challenge.New(st, challenge.Opts{TTL: challenge.MaxTTL, KeyRotation: time.Hour, Now: clk.Now})
	before, err := iss.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour - time.Minute)
	late, err := iss.Issue(ctx, node, ev) // still under the first key, expires after the rotation
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute) // the first key is now past its rotation
	if _, err := iss.Issue(ctx, node, ev); err != nil {
		t.Fatal(err)
	}
	if keys, _ := st.ChallengeKeys(ctx); len(keys) != 2 {
		t.Fatalf("%d keys after the rotation, want 2", len(keys))
	}
	if _, err := iss.Open(ctx, late.ID, ev); err != nil {
		t.Fatalf("a challenge issued before the rotation, not expired: %v", err)
	}
	if _, err := iss.Open(ctx, before.ID, ev); !errors.Is(err, challenge.ErrExpired) {
		t.Fatalf("an expired challenge of the old key: %v, want ErrExpired", err)
	}
	// Two more rotations: the first key's challenges have all expired, and
	// the key is gone; its tokens are unknown.
	for range 2 {
		clk.Advance(time.Hour + time.Second)
		if _, err := iss.Issue(ctx, node, ev); err != nil {
			t.Fatal(err)
		}
	}
	keys, _ := st.ChallengeKeys(ctx)
	if len(keys) > 3 {
		t.Fatalf("%d keys kept, want at most 3", len(keys))
	}
	clk.Advance(2 * time.Second) // past the refresh interval
	if _, err := iss.Open(ctx, late.ID, ev); !errors.Is(err, challenge.ErrUnknown) {
		t.Fatalf("a token of a deleted key: %v, want ErrUnknown", err)
	}
}

// Replicas rotating at the same moment add one key between them.
func TestConcurrentRotation(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	st := openStore(t)
	clk := &clock{now: time.Now()}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := challenge.New(st, challenge.Opts{Now: clk.Now}).Issue(ctx, node, ev)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if keys, _ := st.ChallengeKeys(ctx); len(keys) != 1 {
		t.Fatalf("%d keys after concurrent first issues, want 1", len(keys))
	}
}

// A token sealed by a replica whose clock runs further ahead than
// MaxClockSkew is refused: the marker of its use could be gone while this
// replica still took it. Within the skew it is accepted.
func TestOpenRefusesTokensFromFarAhead(t *testing.T) {
	ctx := context.Background()
	node, ev := testNode(t)
	st := openStore(t)
	now := time.Now()
	for _, tt := range []struct {
		ahead   time.Duration
		wantErr error
	}{
		{challenge.MaxClockSkew - time.Minute, nil},
		{challenge.MaxClockSkew + time.Minute, challenge.ErrUnknown},
	} {
		fast := challenge.New(st, challenge.Opts{TTL: challenge.MaxTTL, Now: func() time.Time { return now.Add(tt.ahead) }})
		issued, err := fast.Issue(ctx, node, ev)
		if err != nil {
			t.Fatal(err)
		}
		local := challenge.New(st, challenge.Opts{Now: func() time.Time { return now }})
		if _, err := local.Open(ctx, issued.ID, ev); !errors.Is(err, tt.wantErr) {
			t.Errorf("token from a clock %v ahead: Open = %v, want %v", tt.ahead, err, tt.wantErr)
		}
	}
}
