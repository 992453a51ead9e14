package ratelimit_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/ratelimit"
)

var t0 = time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)

// allow fails the test unless Allow answers ok and retryAfter as wanted.
func allow(t *testing.T, l *ratelimit.Limiter, key string, now time.Time, wantOK bool, wantRetry time.Duration) {
	t.Helper()
	ok, retry := l.Allow(key, now)
	if ok != wantOK || retry != wantRetry {
		t.Fatalf("Allow(%q, t0+%s) = %v, %s; want %v, %s", key, now.Sub(t0), ok, retry, wantOK, wantRetry)
	}
}

func TestAllowSpendsBurstThenRefills(t *testing.T) {
	l := ratelimit.New(1, 3, ratelimit.Opts{})
	for range 3 {
		allow(t, l, "ek", t0, true, 0)
	}
	allow(t, l, "ek", t0, false, time.Second)
	allow(t, l, "ek", t0.Add(400*time.Millisecond), false, 600*time.Millisecond)
	allow(t, l, "ek", t0.Add(time.Second), true, 0)
	allow(t, l, "ek", t0.Add(time.Second), false, time.Second)
	// A long pause refills up to the burst, not beyond it.
	later := t0.Add(time.Hour)
	for range 3 {
		allow(t, l, "ek", later, true, 0)
	}
	allow(t, l, "ek", later, false, time.Second)
}

func TestAllowKeysAreIndependent(t *testing.T) {
	l := ratelimit.New(0.1, 2, ratelimit.Opts{})
	allow(t, l, "flood", t0, true, 0)
	allow(t, l, "flood", t0, true, 0)
	for range 100 {
		allow(t, l, "flood", t0, false, 10*time.Second)
	}
	allow(t, l, "other", t0, true, 0)
	allow(t, l, "other", t0, true, 0)
	allow(t, l, "other", t0, false, 10*time.Second)
}

func TestAllowClockGoingBackGivesNothing(t *testing.T) {
	l := ratelimit.New(1, 1, ratelimit.Opts{})
	allow(t, l, "k", t0, true, 0)
	allow(t, l, "k", t0.Add(-time.Hour), false, time.Second)
	allow(t, l, "k", t0.Add(500*time.Millisecond), false, 500*time.Millisecond)
}

// TestRefusedCallsDoNotDelayTheNext: a key asking every second while
// refused is admitted as soon as its token is back, whatever the rounding
// of ten refills of 0.1.
func TestRefusedCallsDoNotDelayTheNext(t *testing.T) {
	l := ratelimit.New(0.1, 1, ratelimit.Opts{})
	allow(t, l, "k", t0, true, 0)
	for s := 1; s < 10; s++ {
		allow(t, l, "k", t0.Add(time.Duration(s)*time.Second), false, time.Duration(10-s)*time.Second)
	}
	allow(t, l, "k", t0.Add(10*time.Second), true, 0)
}

func TestOffLimitAdmitsEverything(t *testing.T) {
	for name, l := range map[string]*ratelimit.Limiter{
		"zero rate":   ratelimit.New(0, 10, ratelimit.Opts{}),
		"zero burst":  ratelimit.New(1, 0, ratelimit.Opts{}),
		"zero budget": ratelimit.Budget(0, time.Minute, ratelimit.Opts{}),
		"off rate":    ratelimit.Rate{}.Limiter(ratelimit.Opts{}),
	} {
		if l != nil {
			t.Errorf("%s: got a limiter, want nil (off)", name)
		}
		for range 1000 {
			allow(t, l, "k", t0, true, 0)
		}
		if s := l.Stats(); s != (ratelimit.Stats{}) {
			t.Errorf("%s: Stats = %+v, want zero", name, s)
		}
	}
}

// TestBudgetBoundsOutstanding: a budget of 4 per 60s admits 4 at once,
// then one every 15s.
func TestBudgetBoundsOutstanding(t *testing.T) {
	l := ratelimit.Budget(4, time.Minute, ratelimit.Opts{})
	for range 4 {
		allow(t, l, "ek", t0, true, 0)
	}
	allow(t, l, "ek", t0, false, 15*time.Second)
	allow(t, l, "ek", t0.Add(10*time.Second), false, 5*time.Second)
	allow(t, l, "ek", t0.Add(15*time.Second), true, 0)
	allow(t, l, "ek", t0.Add(15*time.Second), false, 15*time.Second)
	// Over one window a flood gets at most 2n: n at once, n refilled.
	admitted := 0
	for s := range 60 {
		for range 10 {
			if ok, _ := l.Allow("flood", t0.Add(time.Duration(s)*time.Second)); ok {
				admitted++
			}
		}
	}
	if admitted != 4+3 {
		t.Errorf("a flood over 59s got %d admitted, want 7 (4 at once, one per 15s)", admitted)
	}
}

// TestMemoryIsBounded sprays many more keys than MaxKeys.
func TestMemoryIsBounded(t *testing.T) {
	l := ratelimit.New(1, 5, ratelimit.Opts{MaxKeys: 100})
	for i := range 10_000 {
		allow(t, l, fmt.Sprintf("spray-%d", i), t0, true, 0)
		if k := l.Stats().Keys; k > 100 {
			t.Fatalf("after %d keys the limiter holds %d buckets, want at most 100", i+1, k)
		}
	}
	if s := l.Stats(); s.Keys != 100 || s.Evicted != 10_000-100 {
		t.Errorf("Stats = %+v, want 100 keys, 9900 evicted before refilling", s)
	}
}

// TestBusyKeySurvivesASpray: a key that keeps asking stays limited while
// fewer than MaxKeys other keys come between two of its requests.
func TestBusyKeySurvivesASpray(t *testing.T) {
	l := ratelimit.New(1.0/3600, 2, ratelimit.Opts{MaxKeys: 100})
	allow(t, l, "busy", t0, true, 0)
	allow(t, l, "busy", t0, true, 0)
	spray := 0
	for round := range 200 {
		for range 90 {
			l.Allow(fmt.Sprintf("spray-%d", spray), t0)
			spray++
		}
		if ok, _ := l.Allow("busy", t0); ok {
			t.Fatalf("round %d: the drained key was admitted again: its bucket was evicted", round)
		}
	}
	if k := l.Stats().Keys; k != 100 {
		t.Errorf("limiter holds %d buckets, want 100", k)
	}
}

// TestEvictionPrefersRefilledBuckets: when full, a bucket that has
// refilled goes before an older one that is still refilling.
func TestEvictionPrefersRefilledBuckets(t *testing.T) {
	l := ratelimit.New(1, 5, ratelimit.Opts{MaxKeys: 10})
	for range 5 {
		allow(t, l, "drained", t0, true, 0)
	}
	for i := range 9 {
		allow(t, l, fmt.Sprintf("once-%d", i), t0, true, 0)
	}
	// One second on, every "once" bucket is full again, "drained" holds 1.
	now := t0.Add(time.Second)
	allow(t, l, "newcomer", now, true, 0)
	if s := l.Stats(); s.Keys != 10 || s.Evicted != 0 {
		t.Errorf("Stats = %+v, want 10 keys and nothing evicted before refilling", s)
	}
	allow(t, l, "drained", now, true, 0)
	allow(t, l, "drained", now, false, time.Second)
}

func TestIdleBucketsAreSwept(t *testing.T) {
	l := ratelimit.New(1, 5, ratelimit.Opts{})
	for i := range 50 {
		l.Allow(fmt.Sprintf("k%d", i), t0)
	}
	l.Allow("recent", t0.Add(4*time.Second))
	if k := l.Stats().Keys; k != 51 {
		t.Fatalf("after 4s (refill 5s) %d buckets are left, want 51", k)
	}
	// Allow sweeps by itself once a refill time has passed, dropping
	// only the buckets untouched for that long.
	l.Allow("late", t0.Add(5*time.Second))
	if k := l.Stats().Keys; k != 2 {
		t.Errorf("after a refill time %d buckets are left, want 2 (recent, late)", k)
	}
	l.Sweep(t0.Add(10 * time.Second))
	if k := l.Stats().Keys; k != 0 {
		t.Errorf("after Sweep %d buckets are left, want none", k)
	}
}

// TestConcurrentAllowAdmitsExactlyTheBurst runs Allow from many goroutines
// (go test -race): one key admits exactly its burst, and a concurrent
// spray stays within MaxKeys.
func TestConcurrentAllowAdmitsExactlyTheBurst(t *testing.T) {
	l := ratelimit.New(1.0/3600, 100, ratelimit.Opts{MaxKeys: 50})
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				if ok, _ := l.Allow("shared", t0); ok {
					admitted.Add(1)
				}
				l.Allow(fmt.Sprintf("g%d-%d", g, i), t0.Add(time.Duration(i)*time.Millisecond))
				_ = l.Stats()
			}
		})
	}
	wg.Wait()
	if n := admitted.Load(); n != 100 {
		t.Errorf("%d requests admitted on one key, want exactly the burst of 100", n)
	}
	if k := l.Stats().Keys; k > 50 {
		t.Errorf("limiter holds %d buckets, want at most 50", k)
	}
}
