package loadgen

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/internal/softtpm"
)

// FloorSampler times the floor's operations while a run goes on: every
// interval, each operation sampleBurst+1 times in a row on a thread of its
// own, the first run to warm the caches and the others timed as the
// thread's CPU time (as MeasureFloor times them). Taken at the same
// moments as the broker's CPU is counted, its mean is not moved by the
// host's speed drifting between a floor measured before the run and the
// run itself. The warm-up matters: an operation run once after a quarter
// second of other work costs up to twice what it costs run back to back,
// cold caches a floor must not count. The work it adds is about 3 ms of
// CPU per interval.
type FloorSampler struct {
	ops  []func() (time.Duration, error)
	sum  []time.Duration
	n    atomic.Int64 // timed runs of each operation
	err  error
	stop func()
}

// sampleBurst is how many runs of each operation a FloorSampler times per
// interval, after one untimed run.
const sampleBurst = 3

// SampleFloor starts a FloorSampler for node (and ekCA, nil: none) that
// samples every interval; Stop ends it.
func SampleFloor(node *softtpm.Node, ekCA *softtpm.EKCA, interval time.Duration) (*FloorSampler, error) {
	if interval <= 0 {
		return nil, errors.New("the floor's sampling interval must be positive")
	}
	ops, err := floorSteps(node, ekCA)
	if err != nil {
		return nil, err
	}
	return startSampler(ops, interval), nil
}

func startSampler(ops []func() (time.Duration, error), interval time.Duration) *FloorSampler {
	s := &FloorSampler{ops: ops, sum: make([]time.Duration, len(ops))}
	s.stop = repeat(interval, true, func() bool {
		if err := s.sample(); err != nil {
			s.err = fmt.Errorf("unable to measure the crypto floor during the run: %w", err)
			return false
		}
		return true
	})
	return s
}

// sample runs each operation once untimed, then sampleBurst times timed.
func (s *FloorSampler) sample() error {
	for i, op := range s.ops {
		for run := range sampleBurst + 1 {
			d, err := op()
			if err != nil {
				return err
			}
			if run > 0 {
				s.sum[i] += d
			}
		}
	}
	s.n.Add(sampleBurst)
	return nil
}

// Stop ends the sampling and returns the mean of each operation over its
// timed runs and their number (0: the run was shorter than one interval;
// the Floor is then zero). After an error the samples taken are dropped.
func (s *FloorSampler) Stop() (Floor, int, error) {
	s.stop()
	var f Floor
	n := int(s.n.Load())
	if s.err != nil {
		return f, 0, s.err
	}
	if n == 0 {
		return f, 0, nil
	}
	ms := make([]float64, len(s.sum))
	for i, d := range s.sum {
		ms[i] = float64(d) / float64(n) / float64(time.Millisecond)
	}
	f.set(ms)
	return f, n, nil
}
