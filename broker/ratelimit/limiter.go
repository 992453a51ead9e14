package ratelimit

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// DefaultMaxKeys is the number of buckets a Limiter keeps unless
// Opts.MaxKeys says otherwise: about 10 MB at worst.
const DefaultMaxKeys = 100_000

// Opts tune a Limiter; the zero value is the default.
type Opts struct {
	// MaxKeys bounds the buckets kept in memory; default DefaultMaxKeys.
	// When full, the least recently used bucket is evicted (see the
	// package comment for what that costs).
	MaxKeys int
}

// Limiter is a set of token buckets by key, safe for concurrent use. A nil
// *Limiter admits everything: a limit that is switched off.
type Limiter struct {
	rate    float64 // tokens per second
	burst   float64
	maxKeys int
	// refill is how long an empty bucket takes to fill: a bucket untouched
	// for that long is full and can be dropped.
	refill time.Duration

	mu        sync.Mutex
	buckets   map[string]*list.Element // of *bucket
	lru       *list.List               // front: most recently used
	lastSweep time.Time
	evicted   uint64 // buckets dropped before they had refilled
}

type bucket struct {
	key    string
	tokens float64
	last   time.Time
}

// New returns a Limiter that lets each key spend burst requests at once and
// regain rate of them per second. A rate or burst that is not positive
// switches the limit off: New returns nil, which admits everything.
func New(rate float64, burst int, opts Opts) *Limiter {
	if !(rate > 0) || burst <= 0 || math.IsInf(rate, 0) {
		return nil
	}
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = DefaultMaxKeys
	}
	refill := time.Duration(math.Ceil(float64(burst) / rate * float64(time.Second)))
	return &Limiter{
		rate:    rate,
		burst:   float64(burst),
		maxKeys: opts.MaxKeys,
		refill:  refill,
		buckets: make(map[string]*list.Element),
		lru:     list.New(),
	}
}

// Budget returns a Limiter that admits n requests per key at once and n
// per window afterwards: New(n/window, n). It bounds what a key can hold
// of something valid for window without storing it. n or window not
// positive switches the limit off (nil).
func Budget(n int, window time.Duration, opts Opts) *Limiter {
	if n <= 0 || window <= 0 {
		return nil
	}
	return New(float64(n)/window.Seconds(), n, opts)
}

// Allow spends one request of key's bucket at now. When the bucket is
// empty it refuses and says how long until a request would be admitted.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maybeSweep(now)
	b := l.get(key, now)
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(l.burst, b.tokens+elapsed.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens >= 1-epsilon {
		b.tokens = max(b.tokens-1, 0)
		return true, 0
	}
	return false, waitFor(1-b.tokens, l.rate)
}

// waitFor is how long rate takes to add need tokens, rounded up to the
// millisecond (rounding errors of a nanosecond are dropped).
func waitFor(need, rate float64) time.Duration {
	ms := math.Ceil(need/rate*1e3 - 1e-6)
	return max(time.Duration(ms)*time.Millisecond, time.Millisecond)
}

// get returns key's bucket, most recently used now, creating a full one
// (evicting the least recently used when at MaxKeys).
func (l *Limiter) get(key string, now time.Time) *bucket {
	if e, ok := l.buckets[key]; ok {
		l.lru.MoveToFront(e)
		return e.Value.(*bucket)
	}
	if len(l.buckets) >= l.maxKeys {
		l.evict(now)
	}
	b := &bucket{key: key, tokens: l.burst, last: now}
	l.buckets[key] = l.lru.PushFront(b)
	return b
}

// epsilon absorbs floating-point error, so that a bucket refilled for
// exactly the time one token takes admits a request.
const epsilon = 1e-9

// evictScan is how many buckets, from the least recently used end, evict
// looks at for one that has refilled.
const evictScan = 16

// evict drops one bucket: the least recently used of the evictScan oldest
// that has refilled completely (nothing is lost), or else the least
// recently used one.
func (l *Limiter) evict(now time.Time) {
	e := l.lru.Back()
	for i := 0; e != nil && i < evictScan; i, e = i+1, e.Prev() {
		if l.full(e.Value.(*bucket), now) {
			l.remove(e)
			return
		}
	}
	l.evicted++
	l.remove(l.lru.Back())
}

// full reports whether b has refilled completely by now.
func (l *Limiter) full(b *bucket, now time.Time) bool {
	return b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst
}

func (l *Limiter) remove(e *list.Element) {
	l.lru.Remove(e)
	delete(l.buckets, e.Value.(*bucket).key)
}

// maybeSweep drops, from the least recently used end, the buckets that
// have not been touched for a whole refill time, at most once per refill
// time (and per second). Each bucket is dropped once, so the cost is
// amortized over the requests that created them.
func (l *Limiter) maybeSweep(now time.Time) {
	if now.Sub(l.lastSweep) < max(l.refill, time.Second) {
		return
	}
	l.lastSweep = now
	l.sweep(now)
}

func (l *Limiter) sweep(now time.Time) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		if now.Sub(e.Value.(*bucket).last) < l.refill {
			return
		}
		l.remove(e)
	}
}

// Sweep drops every bucket untouched for a whole refill time; Allow does
// so on its own as time passes.
func (l *Limiter) Sweep(now time.Time) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastSweep = now
	l.sweep(now)
}

// Stats is a snapshot of a Limiter's table.
type Stats struct {
	Keys int // buckets held
	// Evicted counts buckets dropped, for want of room, before they had
	// refilled; each gave its key a fresh burst. A growing count means
	// MaxKeys is too small for the traffic, or a key spray.
	Evicted uint64
}

// Stats returns the Limiter's current Stats; zero for nil.
func (l *Limiter) Stats() Stats {
	if l == nil {
		return Stats{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Keys: len(l.buckets), Evicted: l.evicted}
}
