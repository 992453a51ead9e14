package storetest

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
)

func testNodeWrittenWithDecision(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	if _, err := b.GetNode(ctx, "ek"); !isNotFound(err) {
		t.Fatalf("GetNode before any decision: got %v, want ErrNotFound", err)
	}
	for _, ek := range []string{"", strings.Repeat("e", 1025)} {
		if _, err := b.GetNode(ctx, ek); !isNotFound(err) {
			t.Errorf("GetNode(%d bytes): got %v, want ErrNotFound", len(ek), err)
		}
	}
	first := Node("ek", 1000)
	r1 := record(t, b, Decide("c1", "ek", &first))
	if first.LastReceiptID != r1.ID {
		t.Errorf("node LastReceiptID = %q, want the receipt's %q", first.LastReceiptID, r1.ID)
	}
	got, err := b.GetNode(ctx, "ek")
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	if want := asRead(first); !reflect.DeepEqual(got, want) {
		t.Errorf("GetNode = %+v\nwant %+v", got, want)
	}
	if h, ok := b.(store.NodeHeads); ok {
		head, err := h.GetNodeHead(ctx, "ek")
		want := asRead(first)
		want.Evidence = attestation.Evidence{}
		if err != nil || !reflect.DeepEqual(head, want) {
			t.Errorf("GetNodeHead = %+v, %v\nwant the record without its evidence %+v", head, err, want)
		}
		if _, err := h.GetNodeHead(ctx, "ek-other"); !isNotFound(err) {
			t.Errorf("GetNodeHead of an unknown node: got %v, want ErrNotFound", err)
		}
	}

	// The next decision replaces the record; one without a node leaves it.
	second := Node("ek", 2000)
	r2 := record(t, b, Decide("c2", "ek", &second))
	record(t, b, Decide("c3", "ek", nil))
	got, err = b.GetNode(ctx, "ek")
	if err != nil {
		t.Fatal(err)
	}
	if got.Clock != 2000 || got.LastReceiptID != r2.ID || !got.LastSeen.Equal(second.LastSeen) {
		t.Errorf("record after a second decision = clock %d receipt %s last %v; want 2000, %s, %v",
			got.Clock, got.LastReceiptID, got.LastSeen, r2.ID, second.LastSeen)
	}
}

func testListNodes(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	var want []string
	for i := range 5 {
		ek := fmt.Sprintf("ek-%d", 4-i) // written out of order
		n := Node(ek, uint64(i))
		record(t, b, Decide("c"+ek, ek, &n))
		want = append([]string{ek}, want...)
	}
	hashes := func(ns []store.NodeRecord) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.EKHash)
			if string(n.Evidence.EventLog) != "event log of "+n.EKHash {
				t.Errorf("ListNodes gave %s the event log %q", n.EKHash, n.Evidence.EventLog)
			}
		}
		return out
	}
	tests := []struct {
		name    string
		opts    store.ListNodesOpts
		want    []string
		wantErr string
	}{
		{name: "all", opts: store.ListNodesOpts{}, want: want},
		{name: "limit", opts: store.ListNodesOpts{Limit: 2}, want: want[:2]},
		{name: "after", opts: store.ListNodesOpts{After: "ek-1", Limit: 2}, want: want[2:4]},
		{name: "after a missing hash", opts: store.ListNodesOpts{After: "ek-2x"}, want: want[3:]},
		{name: "after the last", opts: store.ListNodesOpts{After: "ek-4"}},
		{name: "negative limit", opts: store.ListNodesOpts{Limit: -1}, wantErr: "unable to list node records: limit cannot be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.ListNodes(ctx, tt.opts)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ListNodes error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(hashes(got), tt.want) {
				t.Errorf("ListNodes = %v, want %v", hashes(got), tt.want)
			}
		})
	}
}

func testNodeBySVIDSerial(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	first := WithSVIDs(Node("ek", 1), "1a", "2b")
	record(t, b, Decide("c1", "ek", &first))
	for _, serial := range []string{"1a", "2b"} {
		n, err := b.NodeBySVIDSerial(ctx, serial)
		if err != nil {
			t.Fatalf("NodeBySVIDSerial(%s): %v", serial, err)
		}
		if want := asRead(first); !reflect.DeepEqual(n, want) {
			t.Errorf("NodeBySVIDSerial(%s) = %+v\nwant %+v", serial, n, want)
		}
	}

	// The next decision replaces the SVIDs: the old serials are gone.
	second := WithSVIDs(Node("ek", 2), "3c")
	record(t, b, Decide("c2", "ek", &second))
	for _, serial := range []string{"1a", "2b"} {
		if _, err := b.NodeBySVIDSerial(ctx, serial); !isNotFound(err) {
			t.Errorf("NodeBySVIDSerial(%s) after it was replaced = %v; want ErrNotFound", serial, err)
		}
	}
	if n, err := b.NodeBySVIDSerial(ctx, "3c"); err != nil || n.EKHash != "ek" {
		t.Errorf("NodeBySVIDSerial(3c) = %q, %v", n.EKHash, err)
	}

	// A refused attestation's record carries no SVID: none authenticates.
	refused := Node("ek", 3)
	record(t, b, Decide("c3", "ek", &refused))
	if _, err := b.NodeBySVIDSerial(ctx, "3c"); !isNotFound(err) {
		t.Errorf("NodeBySVIDSerial after a record without SVIDs = %v; want ErrNotFound", err)
	}

	// Another node cannot claim a recorded serial; nothing is stored then.
	mine := WithSVIDs(Node("ek", 4), "4d")
	record(t, b, Decide("c4", "ek", &mine))
	theirs := WithSVIDs(Node("other", 1), "4d")
	err := b.Record(ctx, Decide("c5", "other", &theirs))
	if err == nil || !strings.Contains(err.Error(), "node svid serial 4d is already recorded for another node") {
		t.Fatalf("a second node with the same serial: %v", err)
	}
	if _, err := b.GetNode(ctx, "other"); !isNotFound(err) {
		t.Errorf("the refused node record was stored: %v", err)
	}
	if rs, err := b.ListReceipts(ctx, store.ListOpts{EKHash: "other"}); err != nil || len(rs) != 0 {
		t.Errorf("the refused decision stored %d receipts, %v", len(rs), err)
	}
	record(t, b, Decide("c5", "other", nil)) // c5 was not used up
	if n, err := b.NodeBySVIDSerial(ctx, "4d"); err != nil || n.EKHash != "ek" {
		t.Errorf("NodeBySVIDSerial(4d) = %q, %v; want ek", n.EKHash, err)
	}

	for _, bad := range []string{"", "0a", "AB", "xyz", strings.Repeat("f", store.MaxSerialLength+1)} {
		if _, err := b.NodeBySVIDSerial(ctx, bad); !isNotFound(err) {
			t.Errorf("NodeBySVIDSerial(%q) = %v; want ErrNotFound", bad, err)
		}
	}
}

// testSharedEventLog records nodes that booted the same image: each gets
// its event log back, also after another one is forgotten.
func testSharedEventLog(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	log := []byte("the fleet's event log")
	var nodes []store.NodeRecord
	for i := range 3 {
		n := WithSVIDs(Node(fmt.Sprintf("ek-%d", i), uint64(i)), fmt.Sprintf("%x", 100+i))
		n.Evidence.EventLog = log
		record(t, b, Decide(fmt.Sprintf("c%d", i), n.EKHash, &n))
		nodes = append(nodes, asRead(n))
	}
	forget := Decide("", "ek-0", nil)
	forget.ForgetNode = "ek-0"
	record(t, b, forget)
	for _, want := range nodes[1:] {
		got, err := b.GetNode(ctx, want.EKHash)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("GetNode(%s) = %+v, %v\nwant %+v", want.EKHash, got, err, want)
		}
		got, err = b.NodeBySVIDSerial(ctx, want.SVIDs[0].Serial)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("NodeBySVIDSerial(%s) = %+v, %v\nwant %+v", want.SVIDs[0].Serial, got, err, want)
		}
	}
	got, err := b.ListNodes(ctx, store.ListNodesOpts{})
	if err != nil || !reflect.DeepEqual(got, nodes[1:]) {
		t.Errorf("ListNodes = %+v, %v\nwant %+v", got, err, nodes[1:])
	}
}

func testForgetNode(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	n := WithSVIDs(Node("ek", 1), "1a")
	record(t, b, Decide("c1", "ek", &n))
	forget := Decide("", "ek", nil)
	forget.Receipt.Check = "forget"
	forget.ForgetNode = "ek"
	r := record(t, b, forget)
	if _, err := b.GetNode(ctx, "ek"); !isNotFound(err) {
		t.Errorf("GetNode of a forgotten node = %v; want ErrNotFound", err)
	}
	if _, err := b.NodeBySVIDSerial(ctx, "1a"); !isNotFound(err) {
		t.Errorf("NodeBySVIDSerial of a forgotten node's SVID = %v; want ErrNotFound", err)
	}
	if got, err := b.GetReceipt(ctx, r.ID); err != nil || got.Check != "forget" {
		t.Errorf("the forgetting receipt = %+v, %v", got, err)
	}
	// Forgetting an unknown node is recorded too; its serial is free again.
	again := Decide("", "ek", nil)
	again.ForgetNode = "ek"
	record(t, b, again)
	other := WithSVIDs(Node("other", 1), "1a")
	record(t, b, Decide("c2", "other", &other))
}

func testDenyList(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	for _, ek := range []string{"ek", "", strings.Repeat("e", 1025)} {
		if _, err := b.GetDenial(ctx, ek); !isNotFound(err) {
			t.Fatalf("GetDenial(%d bytes) on an empty store = %v; want ErrNotFound", len(ek), err)
		}
	}
	denied := Decide("c1", "ek", nil)
	denied.Receipt.Check, denied.Deny = "policy", store.DenyAdd
	r := record(t, b, denied)
	d, err := b.GetDenial(ctx, "ek")
	if err != nil || d.EKHash != "ek" || d.ReceiptID != r.ID || d.Check != "policy" || !d.Time.Equal(r.Time) {
		t.Fatalf("GetDenial = %+v, %v; want the denial of receipt %s", d, err, r.ID)
	}
	if got, err := b.GetReceipt(ctx, r.ID); err != nil || !got.DenyListed {
		t.Errorf("receipt = %+v, %v; want deny_listed", got, err)
	}

	// A refusal that does not deny-list leaves the list as it is.
	unchanged := Decide("c2", "ek", nil)
	unchanged.Receipt.Check = "quote_nonce"
	if r := record(t, b, unchanged); r.DenyListed {
		t.Errorf("a DenyUnchanged receipt is marked deny_listed")
	}
	if got, err := b.GetDenial(ctx, "ek"); err != nil || got.ReceiptID != d.ReceiptID {
		t.Errorf("GetDenial after a refusal that does not deny-list = %+v, %v; want still denied", got, err)
	}

	// An allowed attestation takes the node off the list.
	allowed := Decide("c3", "ek", nil)
	allowed.Receipt.Allowed, allowed.Deny = true, store.DenyRemove
	record(t, b, allowed)
	if _, err := b.GetDenial(ctx, "ek"); !isNotFound(err) {
		t.Errorf("GetDenial after DenyRemove = %v; want ErrNotFound", err)
	}
}

// testConcurrentNodeUpdates races decisions on different challenges for
// one node, each giving it another SVID: all are recorded, and the SVID
// index holds exactly the serial of the record that won.
func testConcurrentNodeUpdates(t *testing.T, b store.Backend) {
	const n = 16
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := WithSVIDs(Node("ek", uint64(i)), fmt.Sprintf("%x", 0x100+i))
			errs[i] = b.Record(ctx, Decide(fmt.Sprintf("c%d", i), "ek", &node))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Record %d: %v", i, err)
		}
	}
	final, err := b.GetNode(ctx, "ek")
	if err != nil || len(final.SVIDs) != 1 {
		t.Fatalf("GetNode = %+v, %v; want a record with one SVID", final, err)
	}
	for i := range n {
		serial := fmt.Sprintf("%x", 0x100+i)
		got, err := b.NodeBySVIDSerial(ctx, serial)
		switch {
		case serial == final.SVIDs[0].Serial && (err != nil || got.Clock != final.Clock):
			t.Errorf("NodeBySVIDSerial(%s) of the last record = clock %d, %v", serial, got.Clock, err)
		case serial != final.SVIDs[0].Serial && !isNotFound(err):
			t.Errorf("NodeBySVIDSerial(%s) of a replaced record = %v; want ErrNotFound", serial, err)
		}
	}
	// The index holds no stale entry: another node can take every serial.
	for i := range n {
		if serial := fmt.Sprintf("%x", 0x100+i); serial != final.SVIDs[0].Serial {
			other := WithSVIDs(Node(fmt.Sprintf("other-%d", i), 1), serial)
			record(t, b, Decide("o"+serial, other.EKHash, &other))
		}
	}
}
