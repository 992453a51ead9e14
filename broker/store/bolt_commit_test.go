package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// commitLog records the commits a Bolt reports.
type commitLog struct {
	mu    sync.Mutex
	sizes []int
	errs  int
}

func (l *commitLog) observe(n int, _ time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sizes = append(l.sizes, n)
	if err != nil {
		l.errs++
	}
}

func (l *commitLog) total() (decisions, commits, largest int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.sizes {
		decisions += n
		largest = max(largest, n)
	}
	return decisions, len(l.sizes), largest
}

// Concurrent decisions share commits, and each is durable when Record
// returns: the receipts are there after a reopen.
func TestGroupCommit(t *testing.T) {
	b, path := openTemp(t)
	var log commitLog
	b.ObserveCommits(log.observe)
	const n = 200
	exp := time.Now().Add(time.Minute)
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			d := decide(fmt.Sprintf("ch-%03d", i), fmt.Sprintf("%064x", i), exp)
			d.Node = &NodeRecord{EKHash: d.Receipt.EKHash, LastSeen: t0}
			if err := b.Record(context.Background(), d); err != nil {
				errs <- err
				return
			}
			ids[i] = d.Receipt.ID
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Record: %v", err)
	}
	decisions, commits, largest := log.total()
	if decisions != n || largest < 2 || commits >= n {
		t.Fatalf("%d concurrent decisions: %d commits reported %d decisions, largest %d; want them shared", n, commits, decisions, largest)
	}
	t.Logf("%d decisions in %d commits (largest %d)", n, commits, largest)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Record(context.Background(), decide("late", "", exp)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Record after Close: %v, want ErrClosed", err)
	}
	b2, err := OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	for i, id := range ids {
		if _, err := b2.GetReceipt(context.Background(), id); err != nil {
			t.Fatalf("receipt of decision %d after reopen: %v", i, err)
		}
		if used, err := b2.Used(context.Background(), fmt.Sprintf("ch-%03d", i)); err != nil || !used {
			t.Fatalf("challenge %d after reopen: used %v, %v", i, used, err)
		}
	}
}

// A decision that fails inside a shared commit fails alone: the others of
// its commit are recorded, and it writes nothing.
func TestGroupCommitFailsAlone(t *testing.T) {
	b, _ := openTemp(t)
	var log commitLog
	b.ObserveCommits(log.observe)
	exp := time.Now().Add(time.Minute)
	ctx := context.Background()
	// Node A holds SVID serial "aa"; a decision giving node B the same
	// serial must fail, after its marker and receipt are put.
	a := decide("ch-a", fmt.Sprintf("%064x", 0xa), exp)
	a.Node = &NodeRecord{EKHash: a.Receipt.EKHash, SVIDs: []NodeSVID{{Serial: "aa"}}}
	if err := b.Record(ctx, a); err != nil {
		t.Fatal(err)
	}
	// Queue the batch behind a held write transaction, so that it is
	// committed as one.
	hold := make(chan struct{})
	held := make(chan struct{})
	go func() {
		_ = b.db.Update(func(*bolt.Tx) error { close(held); <-hold; return nil })
	}()
	<-held
	var wg sync.WaitGroup
	results := map[string]error{}
	var mu sync.Mutex
	record := func(d *Decision) {
		err := b.Record(ctx, d)
		mu.Lock()
		results[d.ChallengeID] = err
		mu.Unlock()
	}
	bad := decide("ch-bad", fmt.Sprintf("%064x", 0xb), exp)
	bad.Node = &NodeRecord{EKHash: bad.Receipt.EKHash, SVIDs: []NodeSVID{{Serial: "aa"}}}
	wg.Go(func() { record(bad) })
	for i := range 5 {
		wg.Go(func() { record(decide(fmt.Sprintf("ch-ok-%d", i), fmt.Sprintf("%064x", 0x100+i), exp)) })
	}
	// The same challenge twice in one batch: one is recorded.
	wg.Go(func() { record(decide("ch-twice", "", exp)) })
	time.Sleep(50 * time.Millisecond) // let them queue
	close(hold)
	wg.Wait()
	dupe := b.Record(ctx, decide("ch-twice", "", exp))

	if err := results["ch-bad"]; err == nil || errors.Is(err, ErrConsumed) {
		t.Fatalf("decision reusing another node's SVID serial: %v, want a failure", err)
	}
	for i := range 5 {
		if err := results[fmt.Sprintf("ch-ok-%d", i)]; err != nil {
			t.Fatalf("decision %d sharing a commit with a failing one: %v", i, err)
		}
	}
	if results["ch-twice"] != nil || !errors.Is(dupe, ErrConsumed) {
		t.Fatalf("challenge answered twice: %v then %v, want nil then ErrConsumed", results["ch-twice"], dupe)
	}
	if used, _ := b.Used(ctx, "ch-bad"); used {
		t.Fatal("the failed decision left its challenge marked used")
	}
	if _, err := b.GetNode(ctx, bad.Receipt.EKHash); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the failed decision left a node record: %v", err)
	}
	if _, _, largest := log.total(); largest < 2 {
		t.Fatalf("largest commit %d: the decisions did not share one", largest)
	}
	if _, err := b.GetReceipt(ctx, bad.Receipt.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the failed decision left its receipt: %v", err)
	}
	// The batch was retried one by one with the keys its decisions made
	// before queueing: every sequence number leads to its receipt, and each
	// EK's index leads to its receipt alone.
	assertIndexes(t, b)
	for i := range 5 {
		ek := fmt.Sprintf("%064x", 0x100+i)
		rs, err := b.ListReceipts(ctx, ListOpts{EKHash: ek})
		if err != nil || len(rs) != 1 || rs[0].ChallengeID != fmt.Sprintf("ch-ok-%d", i) {
			t.Fatalf("receipts of EK %d: %+v, %v; want its one receipt", i, rs, err)
		}
	}
}

// assertIndexes fails unless the receipts' sequence index holds 1 to the
// chain head's Seq, each leading to the receipt of that Seq.
func assertIndexes(t *testing.T, b *Bolt) {
	t.Helper()
	head, err := b.ChainHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	err = b.db.View(func(tx *bolt.Tx) error {
		want := uint64(1)
		c := tx.Bucket(bucketReceiptsBySeq).Cursor()
		for k, id := c.First(); k != nil; k, id = c.Next() {
			if got := binary.BigEndian.Uint64(k); got != want {
				return fmt.Errorf("sequence index holds %d, want %d", got, want)
			}
			r, err := decodeReceipt(string(id), tx.Bucket(bucketReceipts).Get(id))
			if err != nil || r.Seq != want {
				return fmt.Errorf("seq %d leads to receipt %s of seq %d (%v)", want, id, r.Seq, err)
			}
			want++
		}
		if want-1 != head.Seq {
			return fmt.Errorf("sequence index ends at %d, the chain head at %d", want-1, head.Seq)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRecordReadOnly(t *testing.T) {
	b, path := openTemp(t)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenBolt(path, BoltOpts{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	err = ro.Record(context.Background(), decide("x", "", time.Now().Add(time.Minute)))
	if err == nil || err.Error() != "unable to record decision: the store is open read-only" {
		t.Fatalf("Record on a read-only store: %v", err)
	}
}
