package storetest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/broker/store"
)

// Seal is a store.Sealer for tests: its checkpoints carry a placeholder
// signature, which stores keep without checking (signatures are the
// broker's and the verifier's business).
func Seal(h store.ChainHead) (store.Checkpoint, error) {
	return store.Checkpoint{Seq: h.Seq, Head: h.Hash, Time: T0, KeyID: "test", Signature: []byte("test signature")}, nil
}

// AllReceipts returns every receipt of b in chain order (receipts without
// chain fields first, by ID).
func AllReceipts(t *testing.T, b store.Backend) []store.Receipt {
	t.Helper()
	var all []store.Receipt
	var before string
	for {
		page, err := b.ListReceipts(ctxT(t), store.ListOpts{Limit: store.MaxListLimit, Before: before})
		if err != nil {
			t.Fatalf("ListReceipts: %v", err)
		}
		all = append(all, page...)
		if len(page) < store.MaxListLimit {
			break
		}
		before = page[len(page)-1].ID
	}
	slices.SortStableFunc(all, func(a, b store.Receipt) int {
		if a.Seq != b.Seq {
			return int(a.Seq) - int(b.Seq)
		}
		return strings.Compare(a.ID, b.ID)
	})
	return all
}

// CheckChain fails the test unless the chained receipts of b run from
// seq first to the chain head without a gap, each linked by hash to the
// one before (the first to prev).
func CheckChain(t *testing.T, b store.Backend, first uint64, prev string) []store.Receipt {
	t.Helper()
	var chained []store.Receipt
	for _, r := range AllReceipts(t, b) {
		if r.Seq != 0 {
			chained = append(chained, r)
		}
	}
	want := first
	for _, r := range chained {
		if r.Seq != want {
			t.Fatalf("receipt %s has seq %d, want %d", r.ID, r.Seq, want)
		}
		if r.Prev != prev {
			t.Fatalf("receipt seq %d: prev %s, want %s", r.Seq, r.Prev, prev)
		}
		enc, err := store.EncodeReceipt(&r)
		if err != nil {
			t.Fatal(err)
		}
		prev = store.ReceiptHash(enc)
		want++
	}
	head, err := b.ChainHead(ctxT(t))
	if err != nil {
		t.Fatalf("ChainHead: %v", err)
	}
	if head.Seq != want-1 || head.Hash != prev {
		t.Errorf("ChainHead = %+v, want seq %d hash %s", head, want-1, prev)
	}
	return chained
}

// testChainConcurrent records decisions from many goroutines at once
// (several share a group commit, or race at the etcd head), some on one
// challenge: every stored receipt gets the next seq, linked to the one
// before, and a refused decision takes none.
func testChainConcurrent(t *testing.T, b store.Backend) {
	const n = 60
	var wg sync.WaitGroup
	errs := make([]error, n)
	got := make([]*store.Receipt, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%d", i)
			if i%10 == 0 {
				id = "shared"
			}
			node := Node(fmt.Sprintf("ek-%d", i%7), uint64(i))
			d := Decide(id, node.EKHash, nil)
			errs[i] = b.Record(ctxT(t), d)
			got[i] = d.Receipt
		}()
	}
	wg.Wait()
	stored := 0
	for i, err := range errs {
		switch {
		case err == nil:
			stored++
		case errors.Is(err, store.ErrConsumed):
			if got[i].Seq != 0 || got[i].Prev != "" {
				t.Errorf("refused decision %d kept seq %d", i, got[i].Seq)
			}
		default:
			t.Fatalf("Record %d: %v", i, err)
		}
	}
	if stored != n-5 {
		t.Errorf("%d decisions stored, want %d (one of the six on the shared challenge)", stored, n-5)
	}
	chained := CheckChain(t, b, 1, store.GenesisHash)
	if len(chained) != stored {
		t.Fatalf("%d chained receipts, want %d", len(chained), stored)
	}
	for i, r := range got {
		if errs[i] == nil && !slices.ContainsFunc(chained, func(c store.Receipt) bool { return c.ID == r.ID && c.Seq == r.Seq && c.Prev == r.Prev }) {
			t.Errorf("Record %d returned seq %d, not what the store holds", i, r.Seq)
		}
	}
}

func testCheckpoints(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	if cps, err := b.ListCheckpoints(ctx, 0, 0); err != nil || len(cps) != 0 {
		t.Fatalf("ListCheckpoints of an empty store = %v, %v", cps, err)
	}
	if h, err := b.ChainHead(ctx); err != nil || h != (store.ChainHead{Hash: store.GenesisHash}) {
		t.Fatalf("ChainHead of an empty store = %+v, %v", h, err)
	}
	for seq := uint64(1); seq <= 5; seq++ {
		cp, _ := Seal(store.ChainHead{Seq: seq * 10, Hash: strings.Repeat(fmt.Sprint(seq), 64)})
		if err := b.PutCheckpoint(ctx, cp); err != nil {
			t.Fatalf("PutCheckpoint(%d): %v", seq*10, err)
		}
	}
	cp, _ := Seal(store.ChainHead{Seq: 30, Hash: store.GenesisHash})
	if err := b.PutCheckpoint(ctx, cp); !errors.Is(err, store.ErrExists) {
		t.Errorf("second checkpoint of seq 30: %v, want ErrExists", err)
	}
	bad := cp
	bad.Seq, bad.Signature = 0, nil
	if err := b.PutCheckpoint(ctx, bad); err == nil || !strings.Contains(err.Error(), "checkpoint seq cannot be 0") ||
		!strings.Contains(err.Error(), "checkpoint signature must be") {
		t.Errorf("invalid checkpoint: %v", err)
	}
	cps, err := b.ListCheckpoints(ctx, 20, 2)
	if err != nil || len(cps) != 2 || cps[0].Seq != 30 || cps[1].Seq != 40 || cps[0].Head != strings.Repeat("3", 64) {
		t.Errorf("ListCheckpoints(after 20, limit 2) = %+v, %v; want seqs 30, 40", cps, err)
	}
	if _, err := b.ListCheckpoints(ctx, 0, -1); err == nil {
		t.Error("ListCheckpoints with a negative limit: no error")
	}
}
