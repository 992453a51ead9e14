package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkBoltRecord records decisions with a full node record (two
// banks of 24 PCRs, an EK certificate), from as many goroutines as
// -cpu times 16, as the broker's concurrent Attests do: allocations and
// time per decision, decisions per commit and bbolt's page writes per
// commit.
func BenchmarkBoltRecord(b *testing.B) {
	st, _ := openTemp(b)
	var commits atomic.Int64
	st.ObserveCommits(func(int, time.Duration, error) { commits.Add(1) })
	var next atomic.Int64
	exp := time.Now().Add(time.Hour)
	b.SetParallelism(16)
	b.ReportAllocs()
	before := st.db.Stats().TxStats
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			d := decide(fmt.Sprintf("ch-%d", i), fmt.Sprintf("%064x", i), exp)
			n := fullNode()
			n.EKHash, n.SVIDs[0].Serial = d.Receipt.EKHash, fmt.Sprintf("%x", i)
			d.Node = &n
			if err := st.Record(context.Background(), d); err != nil {
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
