package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func testNode(ekHash string, clock uint64) NodeRecord {
	return NodeRecord{
		EKHash:       ekHash,
		LastSeen:     t0.Add(time.Duration(clock) * time.Millisecond),
		AKName:       []byte("ak-name"),
		Clock:        clock,
		ResetCount:   7,
		RestartCount: 3,
		Evidence: Evidence{
			Time:            t0,
			ChallengeID:     "challenge",
			EKPublic:        []byte("ek-public"),
			EKCertificate:   []byte("ek-cert"),
			EKIntermediates: [][]byte{[]byte("int-1")},
			AKPublic:        []byte("ak-public"),
			SecretHash:      [32]byte{1, 2, 3, 31: 0xff},
			Quotes: []EvidenceQuote{{
				Attest:    []byte("attest"),
				Signature: []byte("signature"),
				Bank:      0x000b,
				PCRs:      map[uint32][]byte{0: bytes.Repeat([]byte{0}, 32), 7: bytes.Repeat([]byte{7}, 32)},
			}},
			EventLog: []byte("event log"),
			Previous: &Counters{AKName: []byte("ak-name"), Clock: 1, ResetCount: 7, RestartCount: 3},
		},
	}
}

// consumeWith stores a fresh challenge and consumes it with node.
func consumeWith(t *testing.T, b *Bolt, id string, node *NodeRecord) (*Receipt, error) {
	t.Helper()
	if err := b.PutChallenge(context.Background(), testChallenge(id)); err != nil {
		t.Fatal(err)
	}
	r := &Receipt{ChallengeID: id, EKHash: "ek"}
	return r, b.ConsumeChallenge(context.Background(), id, r, node)
}

func TestConsumeChallengeWritesNode(t *testing.T) {
	ctx := context.Background()
	b, path := openTemp(t)
	if _, err := b.GetNode(ctx, "ek"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetNode before any attestation: got %v, want ErrNotFound", err)
	}

	first := testNode("ek", 1000)
	r1, err := consumeWith(t, b, "c1", &first)
	if err != nil {
		t.Fatalf("ConsumeChallenge: %v", err)
	}
	if first.LastReceiptID != r1.ID || !first.FirstSeen.Equal(first.LastSeen) {
		t.Errorf("node after ConsumeChallenge: receipt %q (want %q), first seen %v (want %v)",
			first.LastReceiptID, r1.ID, first.FirstSeen, first.LastSeen)
	}
	got, err := b.GetNode(ctx, "ek")
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	if !reflect.DeepEqual(got, first) {
		t.Errorf("GetNode = %+v\nwant %+v", got, first)
	}

	// The next attestation replaces the record; a nil node leaves it.
	second := testNode("ek", 2000)
	second.FirstSeen = first.FirstSeen
	r2, err := consumeWith(t, b, "c2", &second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := consumeWith(t, b, "c3", nil); err != nil {
		t.Fatal(err)
	}
	got, err = b.GetNode(ctx, "ek")
	if err != nil {
		t.Fatal(err)
	}
	if got.Clock != 2000 || got.LastReceiptID != r2.ID || !got.FirstSeen.Equal(first.FirstSeen) || !got.LastSeen.Equal(second.LastSeen) {
		t.Errorf("record after a second attestation = clock %d receipt %s first %v last %v; want 2000, %s, %v, %v",
			got.Clock, got.LastReceiptID, got.FirstSeen, got.LastSeen, r2.ID, first.FirstSeen, second.LastSeen)
	}

	// A challenge that is gone writes no node record.
	gone := testNode("ek-gone", 1)
	if err := b.ConsumeChallenge(ctx, "c1", &Receipt{}, &gone); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ConsumeChallenge of a used challenge: got %v, want ErrNotFound", err)
	}
	if _, err := b.GetNode(ctx, "ek-gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused ConsumeChallenge wrote a node record: %v", err)
	}

	// Records survive a reopen, read-only too.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenBolt(path, BoltOpts{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got, err := ro.GetNode(ctx, "ek"); err != nil || got.LastReceiptID != r2.ID {
		t.Errorf("GetNode after reopening = %+v, %v", got, err)
	}
}

// TestConsumeChallengeNodeAtomic checks that a node record the store refuses
// leaves the challenge in place and stores no receipt.
func TestConsumeChallengeNodeAtomic(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	c := testChallenge("atomic")
	if err := b.PutChallenge(ctx, c); err != nil {
		t.Fatal(err)
	}
	big := testNode("ek", 1)
	big.Evidence.EventLog = make([]byte, MaxNodeRecordBytes)
	tests := []struct {
		name    string
		node    NodeRecord
		wantErr string
	}{
		{name: "no ek hash", node: testNode("", 1), wantErr: "unable to consume challenge: node record ek hash cannot be empty"},
		{name: "long ek hash", node: testNode(strings.Repeat("e", maxEKHashLength+1), 1), wantErr: "unable to consume challenge: node record ek hash is longer than 1024 bytes"},
		{name: "too large", node: big, wantErr: "at most 2621440 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Receipt{EKHash: "ek"}
			err := b.ConsumeChallenge(ctx, c.ID, r, &tt.node)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ConsumeChallenge error = %v, want %q", err, tt.wantErr)
			}
			if r.ID != "" {
				t.Errorf("refused ConsumeChallenge set receipt ID %q", r.ID)
			}
			if _, err := b.GetChallenge(ctx, c.ID, t0); err != nil {
				t.Fatalf("a refused node record consumed the challenge: %v", err)
			}
		})
	}
	if rs, err := b.ListReceipts(ctx, ListOpts{}); err != nil || len(rs) != 0 {
		t.Errorf("ListReceipts = %d, %v; want no receipt", len(rs), err)
	}
	if ns, err := b.ListNodes(ctx, ListNodesOpts{}); err != nil || len(ns) != 0 {
		t.Errorf("ListNodes = %d, %v; want no record", len(ns), err)
	}
}

func TestListNodes(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	var want []string
	for i := range 5 {
		ek := fmt.Sprintf("ek-%d", 4-i) // written out of order
		n := testNode(ek, uint64(i))
		if _, err := consumeWith(t, b, "c"+ek, &n); err != nil {
			t.Fatal(err)
		}
		want = append([]string{ek}, want...)
	}
	hashes := func(ns []NodeRecord) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.EKHash)
		}
		return out
	}
	tests := []struct {
		name    string
		opts    ListNodesOpts
		want    []string
		wantErr string
	}{
		{name: "all", opts: ListNodesOpts{}, want: want},
		{name: "limit", opts: ListNodesOpts{Limit: 2}, want: want[:2]},
		{name: "after", opts: ListNodesOpts{After: "ek-1", Limit: 2}, want: want[2:4]},
		{name: "after a missing hash", opts: ListNodesOpts{After: "ek-2x"}, want: want[3:]},
		{name: "after the last", opts: ListNodesOpts{After: "ek-4"}},
		{name: "negative limit", opts: ListNodesOpts{Limit: -1}, wantErr: "unable to list node records: limit cannot be negative"},
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

// TestNodesInOldStore reads a store written before node records existed.
func TestNodesInOldStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketChallenges, bucketReceipts, bucketReceiptsByEK} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	ro, err := OpenBolt(path, BoltOpts{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	ctx := context.Background()
	if _, err := ro.GetNode(ctx, "ek"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetNode in an old store: got %v, want ErrNotFound", err)
	}
	if ns, err := ro.ListNodes(ctx, ListNodesOpts{}); err != nil || len(ns) != 0 {
		t.Errorf("ListNodes in an old store = %v, %v; want none", ns, err)
	}
}

func TestEvidenceJSON(t *testing.T) {
	ev := testNode("ek", 1).Evidence
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"secret_hash":"AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAP8="`) {
		t.Errorf("secret_hash is not base64 in %s", b)
	}
	var got Evidence
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ev) {
		t.Errorf("round trip = %+v\nwant %+v", got, ev)
	}
	bad := strings.Replace(string(b), `"secret_hash":"AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAP8="`, `"secret_hash":"AQID"`, 1)
	if err := json.Unmarshal([]byte(bad), &got); err == nil || err.Error() != "evidence secret_hash has 3 bytes, want 32" {
		t.Errorf("short secret_hash: got %v", err)
	}
}

func TestNodesCanceledContext(t *testing.T) {
	b, _ := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.GetNode(ctx, "ek"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetNode: got %v, want context.Canceled", err)
	}
	if _, err := b.ListNodes(ctx, ListNodesOpts{}); !errors.Is(err, context.Canceled) {
		t.Errorf("ListNodes: got %v, want context.Canceled", err)
	}
}
