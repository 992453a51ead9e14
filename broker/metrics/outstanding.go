package metrics

import (
	"hash/maphash"
	"sync"
	"time"
)

// MaxTrackedChallenges bounds the challenges an outstanding count tracks
// one by one (about 50 bytes each). Past it, a newly issued challenge is
// counted until it expires but its answer is not matched: the gauge then
// overcounts by the answered ones, never undercounts.
const MaxTrackedChallenges = 1 << 20

// outstanding counts the challenges this broker issued that were neither
// answered here nor have expired. Challenges are sealed tokens that no
// store holds, so this is the only place they are counted; an answer to a
// challenge another replica issued, or a second answer, changes nothing.
//
// It keeps, per challenge, a 64-bit digest of its ID in a set and the
// digest and expiry in a queue in the order of issue, which is the order
// of expiry as long as the challenge TTL and the clock hold still (a clock
// stepped back delays the removal of the challenges issued before the step
// by the step). Expiries leave from the queue's head; answers leave the
// set only, their queue entry waits for its expiry.
type outstanding struct {
	mu    sync.Mutex
	seed  maphash.Seed
	ids   map[uint64]struct{} // digests of the challenges not answered
	queue []pending           // from head, in order of issue
	head  int
	// untracked counts, by expiry, the challenges issued while max were
	// tracked; n sums them.
	untracked []pending
	n         int
	max       int
}

// pending is a challenge's digest and expiry (Unix nanoseconds); in
// outstanding.untracked, id is how many challenges expire then.
type pending struct {
	id      uint64
	expires int64
}

func newOutstanding(max int) *outstanding {
	return &outstanding{seed: maphash.MakeSeed(), ids: make(map[uint64]struct{}), max: max}
}

// issued counts challenge id, expiring at expires.
func (o *outstanding) issued(id string, expires, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.expire(now)
	if !expires.After(now) {
		return
	}
	exp := expires.UnixNano()
	if len(o.ids) >= o.max {
		if k := len(o.untracked) - 1; k >= 0 && o.untracked[k].expires == exp {
			o.untracked[k].id++
		} else {
			o.untracked = append(o.untracked, pending{id: 1, expires: exp})
		}
		o.n++
		return
	}
	h := maphash.String(o.seed, id)
	o.ids[h] = struct{}{}
	o.queue = append(o.queue, pending{id: h, expires: exp})
}

// answered uncounts challenge id, if it is counted.
func (o *outstanding) answered(id string, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.ids, maphash.String(o.seed, id))
	o.expire(now)
}

// count returns how many challenges are outstanding at now.
func (o *outstanding) count(now time.Time) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.expire(now)
	return len(o.ids) + o.n
}

// expire drops the challenges whose expiry is not after now.
func (o *outstanding) expire(now time.Time) {
	t := now.UnixNano()
	for o.head < len(o.queue) && o.queue[o.head].expires <= t {
		delete(o.ids, o.queue[o.head].id)
		o.head++
	}
	switch {
	case o.head == len(o.queue):
		// Drained: start afresh, returning the memory of a burst.
		if cap(o.queue) > 1024 {
			o.queue, o.ids = nil, make(map[uint64]struct{})
		}
		o.queue, o.head = o.queue[:0], 0
	case o.head > len(o.queue)/2:
		o.queue = o.queue[:copy(o.queue, o.queue[o.head:])]
		o.head = 0
	}
	for len(o.untracked) > 0 && o.untracked[0].expires <= t {
		o.n -= int(o.untracked[0].id)
		o.untracked = o.untracked[1:]
	}
}
