package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkBoltRecord records decisions with a full node record (two
// banks of 24 PCRs, an EK certificate), from as many goroutines as -cpu
// times 16, as the broker's concurrent Attests do: allocations and time
// per decision, decisions per commit and bbolt's page writes per commit.
// "new" nodes attest for the first time; "known" ones replace the record
// of one of 1,000 nodes, as a fleet re-attesting does.
func BenchmarkBoltRecord(b *testing.B) {
	b.Run("new", func(b *testing.B) { benchmarkRecord(b, 0) })
	b.Run("known", func(b *testing.B) { benchmarkRecord(b, 1000) })
}

// benchmarkRecord records b.N decisions, on new nodes when fleet is 0,
// else on the fleet's nodes, recorded once before the timer starts.
func benchmarkRecord(b *testing.B, fleet int64) {
	st, _ := openTemp(b)
	var next atomic.Int64
	exp := time.Now().Add(time.Hour)
	record := func() error {
		i := next.Add(1)
		node := i
		if fleet > 0 {
			node = i % fleet
		}
		d := decide(fmt.Sprintf("ch-%d", i), fmt.Sprintf("%064x", node), exp)
		n := fullNode()
		n.EKHash, n.SVIDs[0].Serial = d.Receipt.EKHash, fmt.Sprintf("%x", node+1)
		d.Node = &n
		return st.Record(context.Background(), d)
	}
	for range fleet {
		if err := record(); err != nil {
			b.Fatal(err)
		}
	}
	var commits atomic.Int64
	st.ObserveCommits(func(int, time.Duration, error) { commits.Add(1) })
	b.SetParallelism(16)
	b.ReportAllocs()
	before := st.db.Stats().TxStats
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := record(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if c := commits.Load(); c > 0 {
		after := st.db.Stats().TxStats
		b.ReportMetric(float64(b.N)/float64(c), "decisions/commit")
		b.ReportMetric(float64(after.GetWrite()-before.GetWrite())/float64(c), "writes/commit")
		b.ReportMetric(float64(after.GetSpill()-before.GetSpill())/float64(b.N), "spills/decision")
	}
}
