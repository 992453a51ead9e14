package vaultauth

import (
	"sync"
	"time"
)

// rateWindow is the window of the per-EK challenge rate limit.
const rateWindow = time.Minute

// rateLimiter counts challenges per EK over a sliding one-minute window,
// in memory. Challenges are issued on the active node (performance standbys
// forward them), so the count covers the cluster; it starts again from zero
// when the active node changes or restarts. Only EKs that passed the trust
// check are counted, so its size is bounded by the trusted EKs that asked
// in the last minute.
type rateLimiter struct {
	mu   sync.Mutex
	seen map[string][]time.Time // EK hash -> issue times within the window, oldest first
}

func newRateLimiter() *rateLimiter {
	return &rateLimiter{seen: map[string][]time.Time{}}
}

// allow records one challenge for key at now and reports whether fewer than
// limit were recorded in the window before it. A refused call records
// nothing.
func (r *rateLimiter) allow(key string, now time.Time, limit int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	times := recent(r.seen[key], now)
	if len(times) >= limit {
		r.seen[key] = times
		return false
	}
	r.seen[key] = append(times, now)
	return true
}

// forgetIdle drops the keys with no challenge in the window.
func (r *rateLimiter) forgetIdle(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, times := range r.seen {
		if times = recent(times, now); len(times) == 0 {
			delete(r.seen, k)
		} else {
			r.seen[k] = times
		}
	}
}

// recent returns the times within the window ending at now.
func recent(times []time.Time, now time.Time) []time.Time {
	cut := now.Add(-rateWindow)
	i := 0
	for i < len(times) && !times[i].After(cut) {
		i++
	}
	return times[i:]
}
