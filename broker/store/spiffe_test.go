package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func withSVIDs(n NodeRecord, serials ...string) NodeRecord {
	n.SVIDs = nil
	for _, s := range serials {
		n.SVIDs = append(n.SVIDs, NodeSVID{Serial: s, ID: spiffeid.RequireFromString("spiffe://example.org/node/" + n.EKHash), NotAfter: t0.Add(time.Hour)})
	}
	n.WorkloadEntries = []WorkloadEntry{{
		Name:      "web",
		ID:        spiffeid.RequireFromString("spiffe://example.org/web"),
		Selectors: []Selector{{Type: "unix", Value: "uid:1000"}},
		TTL:       time.Hour,
	}}
	return n
}

func TestNodeBySVIDSerial(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)

	first := withSVIDs(testNode("ek", 1), "1a", "2b")
	if _, err := consumeWith(t, b, "c1", &first); err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{"1a", "2b"} {
		n, err := b.NodeBySVIDSerial(ctx, serial)
		if err != nil || n.EKHash != "ek" {
			t.Fatalf("NodeBySVIDSerial(%s) = %q, %v; want the node", serial, n.EKHash, err)
		}
		if len(n.WorkloadEntries) != 1 || n.WorkloadEntries[0].ID.String() != "spiffe://example.org/web" ||
			n.WorkloadEntries[0].Selectors[0] != (Selector{"unix", "uid:1000"}) || n.WorkloadEntries[0].TTL != time.Hour {
			t.Errorf("workload entries = %+v", n.WorkloadEntries)
		}
		if n.SVIDs[0].ID.String() != "spiffe://example.org/node/ek" || !n.SVIDs[0].NotAfter.Equal(t0.Add(time.Hour)) {
			t.Errorf("svids = %+v", n.SVIDs)
		}
	}

	// The next attestation replaces the SVIDs: the old serials are gone.
	second := withSVIDs(testNode("ek", 2), "3c")
	if _, err := consumeWith(t, b, "c2", &second); err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{"1a", "2b"} {
		if _, err := b.NodeBySVIDSerial(ctx, serial); !errors.Is(err, ErrNotFound) {
			t.Errorf("NodeBySVIDSerial(%s) after it was replaced = %v; want ErrNotFound", serial, err)
		}
	}
	if n, err := b.NodeBySVIDSerial(ctx, "3c"); err != nil || n.EKHash != "ek" {
		t.Errorf("NodeBySVIDSerial(3c) = %q, %v", n.EKHash, err)
	}

	// A refused attestation's record carries no SVID: none authenticates.
	refused := testNode("ek", 3)
	if _, err := consumeWith(t, b, "c3", &refused); err != nil {
		t.Fatal(err)
	}
	if _, err := b.NodeBySVIDSerial(ctx, "3c"); !errors.Is(err, ErrNotFound) {
		t.Errorf("NodeBySVIDSerial after a record without SVIDs = %v; want ErrNotFound", err)
	}

	// Another node cannot claim a recorded serial; nothing is stored then.
	mine := withSVIDs(testNode("ek", 4), "4d")
	if _, err := consumeWith(t, b, "c4", &mine); err != nil {
		t.Fatal(err)
	}
	theirs := withSVIDs(testNode("other", 1), "4d")
	if _, err := consumeWith(t, b, "c5", &theirs); err == nil || !strings.Contains(err.Error(), "already recorded for another node") {
		t.Fatalf("a second node with the same serial: %v", err)
	}
	if _, err := b.GetNode(ctx, "other"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the refused node record was stored: %v", err)
	}

	for _, bad := range []string{"", "0a", "AB", "xyz", strings.Repeat("f", MaxSerialLength+1)} {
		if _, err := b.NodeBySVIDSerial(ctx, bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("NodeBySVIDSerial(%q) = %v; want ErrNotFound", bad, err)
		}
		n := withSVIDs(testNode("ek", 9), bad)
		if _, err := consumeWith(t, b, "bad-"+strings.ToLower(bad[:min(len(bad), 3)]), &n); err == nil {
			t.Errorf("a node record with serial %q was stored", bad)
		}
	}
}

func TestDenyList(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	if _, err := b.GetDenial(ctx, "ek"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetDenial on an empty store = %v; want ErrNotFound", err)
	}

	if err := b.PutChallenge(ctx, testChallenge("c1")); err != nil {
		t.Fatal(err)
	}
	denied := &Receipt{ChallengeID: "c1", EKHash: "ek", Check: "policy", DenyListed: true}
	if err := b.ConsumeChallenge(ctx, "c1", denied, nil); err != nil {
		t.Fatal(err)
	}
	d, err := b.GetDenial(ctx, "ek")
	if err != nil || d.EKHash != "ek" || d.ReceiptID != denied.ID || d.Check != "policy" || !d.Time.Equal(denied.Time) {
		t.Fatalf("GetDenial = %+v, %v; want the denial of receipt %s", d, err, denied.ID)
	}
	if r, err := b.GetReceipt(ctx, denied.ID); err != nil || !r.DenyListed {
		t.Errorf("receipt = %+v, %v; want deny_listed", r, err)
	}

	// A refusal that does not deny-list leaves the list as it is.
	if err := b.PutReceipt(ctx, &Receipt{EKHash: "ek", Check: "quote_nonce"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetDenial(ctx, "ek"); err != nil {
		t.Errorf("GetDenial after a refusal that does not deny-list = %v; want still denied", err)
	}

	// An allowed attestation takes the node off the list.
	if err := b.PutChallenge(ctx, testChallenge("c2")); err != nil {
		t.Fatal(err)
	}
	if err := b.ConsumeChallenge(ctx, "c2", &Receipt{ChallengeID: "c2", EKHash: "ek", Allowed: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetDenial(ctx, "ek"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDenial after an allowed attestation = %v; want ErrNotFound", err)
	}

	for _, tt := range []struct {
		name    string
		r       *Receipt
		wantErr string
	}{
		{"allowed and deny-listed", &Receipt{EKHash: "ek", Allowed: true, DenyListed: true}, "an allowed receipt cannot deny-list its node"},
		{"no ek hash", &Receipt{DenyListed: true}, "a receipt without an ek hash cannot deny-list a node"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := b.ListReceipts(ctx, ListOpts{})
			if err := b.PutReceipt(ctx, tt.r); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PutReceipt = %v; want %q", err, tt.wantErr)
			}
			if after, _ := b.ListReceipts(ctx, ListOpts{}); len(after) != len(before) {
				t.Errorf("a refused receipt was stored")
			}
		})
	}
}
