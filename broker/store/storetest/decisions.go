package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

var receiptIDPattern = regexp.MustCompile(`^\d{8}T\d{6}\.\d{9}Z-[0-9a-f]{16}$`)

func testReceiptIDAndTime(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	d := Decide("c1", "ek1", nil)
	d.Receipt.Allowed, d.Receipt.Policies = true, []string{"p"}
	before := time.Now()
	r := record(t, b, d)
	if !receiptIDPattern.MatchString(r.ID) {
		t.Errorf("receipt ID %q does not match %v", r.ID, receiptIDPattern)
	}
	if r.Time.Before(before.Add(-time.Second)) || r.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("receipt Time %v not set to now", r.Time)
	}
	got, err := b.GetReceipt(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, *r) {
		t.Errorf("GetReceipt = %+v, want %+v", got, *r)
	}
	for _, id := range []string{"missing", "", "a/b", strings.Repeat("x", store.MaxIDLength+1)} {
		if _, err := b.GetReceipt(ctx, id); !isNotFound(err) {
			t.Errorf("GetReceipt(%q): got %v, want ErrNotFound", id, err)
		}
	}
}

// testReceiptIDTaken records a receipt under an ID another receipt has:
// refused with ErrExists, and its challenge stays unused.
func testReceiptIDTaken(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	first := record(t, b, Decide("c1", "ek", nil))
	dup := Decide("c2", "ek", nil)
	dup.Receipt.ID = first.ID
	if err := b.Record(ctx, dup); !errors.Is(err, store.ErrExists) {
		t.Fatalf("Record with a taken receipt ID: got %v, want ErrExists", err)
	}
	if got, err := b.GetReceipt(ctx, first.ID); err != nil || got.ChallengeID != "c1" {
		t.Errorf("the first receipt was replaced: %+v, %v", got, err)
	}
	record(t, b, Decide("c2", "ek", nil)) // c2 was not used up
}

func testSingleUse(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	if used, err := b.Used(ctx, "c1"); err != nil || used {
		t.Fatalf("Used before any decision = %v, %v; want false", used, err)
	}
	n := Node("ek", 1)
	first := record(t, b, Decide("c1", "ek", &n))
	if used, err := b.Used(ctx, "c1"); err != nil || !used {
		t.Fatalf("Used after the decision = %v, %v; want true", used, err)
	}
	if used, err := b.Used(ctx, "c2"); err != nil || used {
		t.Fatalf("Used of another challenge = %v, %v; want false", used, err)
	}
	other := Node("ek-other", 2)
	second := Decide("c1", "ek-other", &other)
	second.Deny, second.Receipt.Check = store.DenyAdd, "policy"
	err := b.Record(ctx, second)
	if !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("second Record on c1: got %v, want ErrConsumed", err)
	}
	if rs, err := b.ListReceipts(ctx, store.ListOpts{}); err != nil || len(rs) != 1 || rs[0].ID != first.ID {
		t.Errorf("receipts after a refused second decision = %+v, %v; want only %s", rs, err, first.ID)
	}
	if _, err := b.GetNode(ctx, "ek-other"); !isNotFound(err) {
		t.Errorf("the refused decision wrote its node record: %v", err)
	}
	if _, err := b.GetDenial(ctx, "ek-other"); !isNotFound(err) {
		t.Errorf("the refused decision deny-listed its node: %v", err)
	}
	// Decisions on no challenge (an operator's) are never refused as used.
	record(t, b, Decide("", "ek", nil))
	record(t, b, Decide("", "ek", nil))
}

// testConcurrentSingleUse races decisions on one challenge: exactly one is
// recorded.
func testConcurrentSingleUse(t *testing.T, b store.Backend) {
	const n = 32
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := Node(fmt.Sprintf("ek-%02d", i), uint64(i))
			errs[i] = b.Record(ctx, Decide("race", node.EKHash, &node))
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("Records %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrConsumed):
			t.Errorf("Record %d: got %v, want ErrConsumed", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no Record succeeded")
	}
	rs, err := b.ListReceipts(ctx, store.ListOpts{})
	if err != nil || len(rs) != 1 || rs[0].EKHash != fmt.Sprintf("ek-%02d", winner) {
		t.Errorf("receipts = %+v, %v; want one, of the winner %d", rs, err, winner)
	}
	if ns, err := b.ListNodes(ctx, store.ListNodesOpts{}); err != nil || len(ns) != 1 {
		t.Errorf("node records = %d, %v; want one", len(ns), err)
	}
}

func testInvalidDecision(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	node := Node("ek", 1)
	tests := []struct {
		name    string
		d       func() *store.Decision
		wantErr string
	}{
		{"nil receipt", func() *store.Decision {
			return &store.Decision{ChallengeID: "c1", ChallengeExpiry: time.Now().Add(time.Hour), Node: &node}
		}, "decision receipt cannot be nil"},
		{"deny-list an allowed receipt", func() *store.Decision {
			d := Decide("c1", "ek", nil)
			d.Receipt.Allowed, d.Deny = true, store.DenyAdd
			return d
		}, "an allowed decision cannot deny-list its node"},
		{"deny-list without an ek hash", func() *store.Decision {
			d := Decide("c1", "", nil)
			d.Deny = store.DenyAdd
			return d
		}, "a decision without an ek hash cannot change the deny list"},
		{"unknown deny-list change", func() *store.Decision {
			d := Decide("c1", "ek", nil)
			d.Deny = 7
			return d
		}, "unknown deny-list change 7"},
		{"write and forget a node", func() *store.Decision {
			d := Decide("c1", "ek", &node)
			d.ForgetNode = "ek"
			return d
		}, "a decision cannot both write and forget a node record"},
		{"no challenge expiry", func() *store.Decision {
			d := Decide("c1", "ek", &node)
			d.ChallengeExpiry = time.Time{}
			return d
		}, "challenge expiry cannot be zero"},
		{"bad challenge id", func() *store.Decision { return Decide("c/1", "ek", &node) },
			"challenge id must contain only [A-Za-z0-9._-]"},
		{"bad receipt id", func() *store.Decision {
			d := Decide("c1", "ek", &node)
			d.Receipt.ID = "../x"
			return d
		}, "receipt id must contain only [A-Za-z0-9._-]"},
		{"long ek hash", func() *store.Decision {
			return Decide("c1", strings.Repeat("e", 1025), nil)
		}, "ek hash is longer than 1024 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.d()
			err := b.Record(ctx, d)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Record error = %v, want %q", err, tt.wantErr)
			}
			if d.Receipt != nil && d.Receipt.ID != "" && tt.name != "bad receipt id" {
				t.Errorf("a refused decision got receipt ID %q", d.Receipt.ID)
			}
			assertEmpty(t, b, "ek")
		})
	}
	record(t, b, Decide("c1", "ek", nil)) // no refused decision used up c1
}

// testInvalidNodeRecord checks that a node record the store refuses leaves
// the challenge unused and stores no receipt.
func testInvalidNodeRecord(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	big := Node("ek", 1)
	big.Evidence.EventLog = nil
	big.Evidence.Quotes[0].Attest = make([]byte, store.MaxNodeRecordBytes)
	tests := []struct {
		name    string
		node    store.NodeRecord
		wantErr string
	}{
		{"no ek hash", Node("", 1), "node record ek hash cannot be empty"},
		{"long ek hash", Node(strings.Repeat("e", 1025), 1), "node record ek hash is longer than 1024 bytes"},
		{"too large", big, "at most 2621440 allowed"},
		{"bad serial", WithSVIDs(Node("ek", 1), "0a"), `node record svid serial "0a" is not lowercase hex`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide("c1", "ek", &tt.node)
			err := b.Record(ctx, d)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Record error = %v, want %q", err, tt.wantErr)
			}
			if d.Receipt.ID != "" {
				t.Errorf("refused Record set receipt ID %q", d.Receipt.ID)
			}
			assertEmpty(t, b, "ek")
		})
	}
	record(t, b, Decide("c1", "ek", nil))
}

// testPurgeConsumed checks what every backend promises: purging keeps the
// markers of challenges that have not expired.
func testPurgeConsumed(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	now := time.Now()
	old := Decide("old", "ek", nil)
	old.ChallengeExpiry = now.Add(-time.Minute)
	record(t, b, old)
	record(t, b, Decide("live", "ek", nil))
	n, err := b.PurgeConsumed(ctx, now)
	if err != nil || n != 0 {
		t.Fatalf("PurgeConsumed = %d, %v; want 0: markers are kept MarkerGrace past expiry", n, err)
	}
	for _, id := range []string{"live", "old"} {
		if err := b.Record(ctx, Decide(id, "ek", nil)); !errors.Is(err, store.ErrConsumed) {
			t.Errorf("Record on used challenge %q after a purge: got %v, want ErrConsumed", id, err)
		}
	}
}
