package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
)

// TestExportReceipts exports more receipts than one page holds, through a
// running broker's admin socket and from its store file once it stopped:
// each exactly once, newest first, selected by time and EK.
func TestExportReceipts(t *testing.T) {
	ekA, ekB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	r := brokertest.Start(t, brokertest.StartOpts{EKHashes: []string{ekA}, Policy: `policy "p" {
  select { ek_hashes = ["` + ekA + `"] }
  release "r" {
    type = "tls_certificate"
    common_name = "x"
  }
}`})
	ctx := context.Background()
	const n = 2*store.MaxListLimit + 345
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	written := make(map[string]bool, n)
	for i := range n {
		ek := ekB
		if i%10 == 0 {
			ek = ekA
		}
		rec := &store.Receipt{Time: t0.Add(time.Duration(i) * time.Second), EKHash: ek, Check: "policy"}
		if err := r.Store().Record(ctx, &store.Decision{Receipt: rec}); err != nil {
			t.Fatal(err)
		}
		written[rec.ID] = true
	}
	cfg := &broker.Config{DataDir: r.DataDir()}
	export := func(t *testing.T, opts broker.ExportOpts) []store.Receipt {
		t.Helper()
		var out []store.Receipt
		got, err := broker.ExportReceipts(ctx, cfg, opts, func(r store.Receipt) error {
			out = append(out, r)
			return nil
		})
		if err != nil || got != len(out) {
			t.Fatalf("ExportReceipts = %d, %v; emitted %d", got, err, len(out))
		}
		for i := 1; i < len(out); i++ {
			if out[i].ID >= out[i-1].ID {
				t.Fatalf("receipt %d (%s) does not sort before receipt %d (%s)", i, out[i].ID, i-1, out[i-1].ID)
			}
		}
		return out
	}
	check := func(t *testing.T) {
		all := export(t, broker.ExportOpts{})
		seen := map[string]bool{}
		for _, r := range all {
			if !written[r.ID] || seen[r.ID] {
				t.Fatalf("receipt %s exported but not written, or twice", r.ID)
			}
			seen[r.ID] = true
		}
		if len(all) != n {
			t.Fatalf("exported %d receipts, want %d", len(all), n)
		}
		after, before := t0.Add(1000*time.Second), t0.Add(2100*time.Second)
		window := export(t, broker.ExportOpts{After: after, Before: before})
		if len(window) != 1100 || !window[0].Time.Equal(before.Add(-time.Second)) || !window[len(window)-1].Time.Equal(after) {
			t.Fatalf("exported %d receipts in [%s, %s), want 1100 from the first to the last second", len(window), after, before)
		}
		onA := export(t, broker.ExportOpts{EKHash: ekA, Before: before})
		if len(onA) != 210 || onA[0].EKHash != ekA || onA[len(onA)-1].EKHash != ekA {
			t.Fatalf("exported %d receipts of EK a before %s, want 210", len(onA), before)
		}
		if _, err := broker.ExportReceipts(ctx, cfg, broker.ExportOpts{After: before, Before: after}, func(store.Receipt) error { return nil }); err == nil {
			t.Error("an export whose after is later than its before was accepted")
		}
	}
	t.Run("through the admin socket", check)
	r.Stop()
	t.Run("from the store file", check)
}
