package storetest

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// recordReceipts records six receipts at T0+i seconds for i = 3, 0, 4, 1,
// 5, 2 (out of time order), alternately for ek-a and ek-b, each releasing
// an item whose serial is i; it returns them by i.
func recordReceipts(t *testing.T, b store.Backend) []store.Receipt {
	all := make([]store.Receipt, 6)
	for _, i := range []int{3, 0, 4, 1, 5, 2} {
		r := &store.Receipt{
			Time:    T0.Add(time.Duration(i) * time.Second),
			EKHash:  []string{"ek-a", "ek-b"}[i%2],
			Allowed: i%3 != 0,
			Released: []store.ReleasedItem{{
				Name: "tls", Type: "x509", Mode: "TPM_BOUND", Serial: fmt.Sprint(i),
				NotAfter: T0.Add(time.Hour), PCRBank: "sha256", PCRs: []uint32{0, 7},
			}},
		}
		if !r.Allowed {
			r.Check, r.Failures = "policy", []string{"pcr 7 mismatch"}
		}
		all[i] = *record(t, b, &store.Decision{ChallengeID: fmt.Sprintf("c%d", i), ChallengeExpiry: time.Now().Add(time.Hour), Receipt: r})
	}
	return all
}

func serials(rs []store.Receipt) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.Released[0].Serial)
	}
	return strings.Join(s, ",")
}

func testListReceipts(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	all := recordReceipts(t, b)
	tests := []struct {
		name    string
		opts    store.ListOpts
		want    string
		wantErr string
	}{
		{name: "all", opts: store.ListOpts{}, want: "5,4,3,2,1,0"},
		{name: "limit", opts: store.ListOpts{Limit: 2}, want: "5,4"},
		{name: "filter", opts: store.ListOpts{EKHash: "ek-a"}, want: "4,2,0"},
		{name: "filter and limit", opts: store.ListOpts{EKHash: "ek-b", Limit: 2}, want: "5,3"},
		{name: "before", opts: store.ListOpts{Before: all[3].ID}, want: "2,1,0"},
		{name: "filter and before", opts: store.ListOpts{EKHash: "ek-b", Before: all[3].ID}, want: "1"},
		{name: "unknown ek", opts: store.ListOpts{EKHash: "ek-c"}, want: ""},
		{name: "prefix of an ek is not a match", opts: store.ListOpts{EKHash: "ek-"}, want: ""},
		{name: "negative limit", opts: store.ListOpts{Limit: -1}, wantErr: "limit cannot be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.ListReceipts(ctx, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ListReceipts error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := serials(got); s != tt.want {
				t.Errorf("ListReceipts(%+v) = %s, want %s", tt.opts, s, tt.want)
			}
		})
	}

	// Paging with Before walks every receipt exactly once.
	for _, ek := range []string{"", "ek-a"} {
		var pages []string
		var before string
		for {
			page, err := b.ListReceipts(ctx, store.ListOpts{Limit: 2, EKHash: ek, Before: before})
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			pages = append(pages, serials(page))
			before = page[len(page)-1].ID
		}
		want := map[string]string{"": "5,4|3,2|1,0", "ek-a": "4,2|0"}[ek]
		if got := strings.Join(pages, "|"); got != want {
			t.Errorf("pages for %q = %s, want %s", ek, got, want)
		}
	}

	got, err := b.ListReceipts(ctx, store.ListOpts{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if want := all[5]; len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Errorf("newest receipt = %+v, want %+v", got, want)
	}
}

// testDeleteReceiptsBefore deletes receipts in chain order: recordReceipts
// chains them as times 3, 0, 4, 1, 5, 2 (seq 1 to 6), so that a cut at
// T0+3s deletes none (seq 1 is at T0+3s) and one at T0+5s deletes seq 1
// to 4, leaving a checkpoint of seq 4.
func testDeleteReceiptsBefore(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	all := recordReceipts(t, b)
	if _, err := b.DeleteReceiptsBefore(ctx, T0.Add(time.Hour), 0, Seal); err == nil ||
		!strings.Contains(err.Error(), "limit must be positive") {
		t.Errorf("DeleteReceiptsBefore with limit 0: got %v, want an error", err)
	}
	if n, err := b.DeleteReceiptsBefore(ctx, T0.Add(time.Hour), 10, nil); err != nil || n != 0 {
		t.Errorf("DeleteReceiptsBefore without a sealer = %d, %v; want no chained receipt deleted", n, err)
	}
	if n, err := b.DeleteReceiptsBefore(ctx, T0.Add(3*time.Second), 10, Seal); err != nil || n != 0 {
		t.Errorf("DeleteReceiptsBefore(T0+3s) = %d, %v; want 0: seq 1 is not past it", n, err)
	}
	cut := T0.Add(5 * time.Second)
	for i, want := range []struct {
		n          int
		left       string
		checkpoint uint64
	}{{2, "5,4,2,1", 2}, {2, "5,2", 4}, {0, "5,2", 4}} {
		n, err := b.DeleteReceiptsBefore(ctx, cut, 2, Seal)
		if err != nil || n != want.n {
			t.Fatalf("DeleteReceiptsBefore #%d = %d, %v; want %d", i+1, n, err, want.n)
		}
		rs, err := b.ListReceipts(ctx, store.ListOpts{})
		if err != nil || serials(rs) != want.left {
			t.Errorf("after delete #%d ListReceipts = %s, %v; want %s", i+1, serials(rs), err, want.left)
		}
		cps, err := b.ListCheckpoints(ctx, 0, 0)
		if err != nil || len(cps) != 1 || cps[0].Seq != want.checkpoint {
			t.Errorf("after delete #%d checkpoints = %+v, %v; want one of seq %d", i+1, cps, err, want.checkpoint)
		}
	}
	// The chain left starts right after the checkpoint, which names the
	// hash receipt seq 5 links to.
	if cps, _ := b.ListCheckpoints(ctx, 0, 0); len(cps) != 1 || cps[0].Head != all[5].Prev {
		t.Errorf("checkpoint = %+v, want head %s (prev of seq 5)", cps, all[5].Prev)
	}
	CheckChain(t, b, 5, all[5].Prev)
	for _, i := range []int{0, 1, 3, 4} {
		if _, err := b.GetReceipt(ctx, all[i].ID); !isNotFound(err) {
			t.Errorf("GetReceipt of deleted receipt %d = %v; want ErrNotFound", i, err)
		}
	}
	for ek, want := range map[string]string{"ek-a": "2", "ek-b": "5"} {
		rs, err := b.ListReceipts(ctx, store.ListOpts{EKHash: ek, Limit: 1000})
		if err != nil || serials(rs) != want {
			t.Errorf("ListReceipts(%s) after deleting = %s, %v; want %s", ek, serials(rs), err, want)
		}
	}
}
