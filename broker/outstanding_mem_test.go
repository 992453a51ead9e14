package broker_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/metrics"
	"github.com/keybroker/keybroker/internal/brokertest"
)

// outstandingChallenges is how many challenges TestOutstandingChallengeMemory
// leaves outstanding.
const outstandingChallenges = 20_000

// TestOutstandingChallengeMemory measures the broker's heap per challenge
// issued and not answered (HeapAlloc growth after a GC, per challenge),
// without metrics and with them (which count each challenge until it is
// answered or expires). A challenge is a sealed token that the broker does
// not keep, so the figure is what outstanding challenges cost a replica;
// the bound is generous, this is no speed test.
func TestOutstandingChallengeMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("issues 20,000 challenges per mode")
	}
	for _, tc := range []struct {
		name    string
		metrics *metrics.Broker
	}{
		{"without metrics", nil},
		{"with metrics", metrics.New()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := brokertest.New(t, brokertest.Opts{Server: func(o *broker.ServerOpts) {
				o.Metrics = tc.metrics
				o.ChallengeTTL = challenge.MaxTTL // none expires while the test runs
				o.Limits = broker.LimitsConfig{}  // no admission limit
			}})
			req, err := e.Node.ChallengeRequest()
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			// Warm up: the challenge key and lazily built state are not per
			// challenge.
			if _, err := e.Server.Challenge(ctx, req); err != nil {
				t.Fatal(err)
			}
			before := heapAlloc()
			for range outstandingChallenges {
				if _, err := e.Server.Challenge(ctx, req); err != nil {
					t.Fatal(err)
				}
			}
			after := heapAlloc()
			runtime.KeepAlive(e.Server)
			perChallenge := (float64(after) - float64(before)) / outstandingChallenges
			t.Logf("%.1f bytes of heap per outstanding challenge (%d challenges, heap %d -> %d bytes)",
				perChallenge, outstandingChallenges, before, after)
			if perChallenge > 4096 {
				t.Errorf("%.0f bytes per outstanding challenge; want under 4 KiB", perChallenge)
			}
			if tc.metrics != nil {
				if got := gauge(t, tc.metrics, "keybroker_challenges_outstanding"); got != outstandingChallenges+1 {
					t.Errorf("keybroker_challenges_outstanding = %v; want %d", got, outstandingChallenges+1)
				}
			}
		})
	}
}

// heapAlloc is the live heap after a full collection.
func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// gauge returns the value of the gauge name in m's registry.
func gauge(t *testing.T, m *metrics.Broker, name string) float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}
