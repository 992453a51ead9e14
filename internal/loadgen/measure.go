package loadgen

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/keybroker/keybroker/internal/softtpm"
)

// ratio is cpu/floor, nil when either is unknown.
func ratio(cpu *float64, floor float64) *float64 {
	if cpu == nil || floor <= 0 {
		return nil
	}
	r := *cpu / floor
	return &r
}

// target is the broker under load and where its figures are read.
type target struct {
	addr    string
	caPEM   []byte
	pid     int    // 0: unknown
	metrics string // the broker's metrics URL, read when pid is unknown; "": none
	store   string // "": unknown
}

// rssInterval is how often the broker's resident memory is sampled on its
// metrics endpoint during a run (its peak is not there).
const rssInterval = 500 * time.Millisecond

// measure drives the fleet against t and fills sum with the broker's
// figures read before and after.
func (t target) measure(ctx context.Context, o Opts, nodes []*softtpm.Node, sum *Summary) error {
	before, err := t.read()
	if err != nil {
		return err
	}
	tlsCfg, err := generatorTLS(t.addr, t.caPEM)
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(generatorGCPercent))
	}
	sampler, err := SampleFloor(nodes[0], o.EKCA, o.FloorInterval)
	if err != nil {
		return err
	}
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
			sampler.Stop()
			return fmt.Errorf("unable to profile the load generator: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var rss *rssPoller
	if t.remote() {
		rss = pollRSS(t.metrics, rssInterval, before.process)
	}
	self0, selfErr := processCPU(os.Getpid())
	lat := drive(ctx, o, nodes, t.addr, tlsCfg, sum)
	self1, selfErr1 := processCPU(os.Getpid())
	sum.fill(lat)
	if selfErr == nil && selfErr1 == nil {
		sum.GeneratorCPUMsPerRelease = perRelease(float64(self1-self0)/float64(time.Millisecond), sum.Released)
	}
	sum.setFloorInRun(sampler.Stop())
	after, err := t.read()
	if !t.remote() {
		if err != nil {
			return err
		}
		t.fill(sum, before, after)
		return nil
	}
	// A broker known by its metrics alone: a reading that failed, or
	// that shows another process, loses its figures, not the run's.
	peak, failed, pollErr := rss.Stop()
	switch {
	case err != nil:
		sum.BrokerFiguresError = err.Error()
	case after.process.start != before.process.start || after.process.cpu < before.process.cpu:
		sum.BrokerFiguresError = errRestarted.Error()
	default:
		after.process.rss = max(after.process.rss, peak)
		if failed > 0 {
			sum.BrokerFiguresError = fmt.Sprintf("%d memory readings failed (the peak is of the others); the first: %v", failed, pollErr)
		}
		t.fill(sum, before, after)
		return nil
	}
	t.metrics = "" // the broker's figures unknown; the rest filled
	t.fill(sum, before, after)
	return nil
}

// remote: the broker is known by its metrics endpoint, not its process.
func (t target) remote() bool { return t.pid == 0 && t.metrics != "" }

// brokerReading is what measure reads of the broker before and after the
// run; fields of what t does not know stay zero.
type brokerReading struct {
	process processFigures // rss: the peak so far, with a pid
	store   int64
}

// read reads the broker's CPU and peak RSS (with its pid), or its CPU and
// resident memory now (with its metrics URL), and the store's size (with
// its path).
func (t target) read() (brokerReading, error) {
	var r brokerReading
	var err error
	switch {
	case t.pid != 0:
		if r.process.cpu, err = processCPU(t.pid); err != nil {
			return r, err
		}
		if r.process.rss, err = peakRSS(t.pid); err != nil {
			return r, err
		}
	case t.metrics != "":
		if r.process, err = scrapeBroker(context.Background(), t.metrics); err != nil {
			return r, err
		}
	}
	if t.store != "" {
		if r.store, err = fileSize(t.store); err != nil {
			return r, err
		}
	}
	return r, nil
}

// fill sets sum's broker figures from the readings before and after the
// run.
func (t target) fill(sum *Summary, before, after brokerReading) {
	switch {
	case t.pid != 0:
		sum.CPUs = cpusOf(os.Getpid(), t.pid)
		sum.BrokerFigures, sum.brokerHere = fmt.Sprintf("/proc/%d", t.pid), true
	case t.metrics != "":
		sum.BrokerFigures = redacted(t.metrics)
	}
	if sum.BrokerFigures != "" {
		sum.BrokerPeakRSSBytes = &after.process.rss
		sum.BrokerCPUMsPerRelease = perRelease(float64(after.process.cpu-before.process.cpu)/float64(time.Millisecond), sum.Released)
		sum.FloorRatio = ratio(sum.BrokerCPUMsPerRelease, sum.Floor.TotalMs)
		sum.FloorSaturatedRatio = ratio(sum.BrokerCPUMsPerRelease, sum.FloorSaturated.TotalMs)
		if sum.FloorInRun != nil && sum.brokerHere {
			// Sampled beside this generator: a floor for this machine's
			// broker only.
			sum.FloorInRunRatio = ratio(sum.BrokerCPUMsPerRelease, sum.FloorInRun.TotalMs)
		}
	}
	if t.store != "" {
		sum.StoreBytesPerRelease = perRelease(float64(after.store-before.store), sum.Released)
	}
	sum.setShares()
}

// floorInterval is how often the floor is sampled during a run, and
// minInRunSamples how many timed runs of each step make a floor: a run
// shorter than three intervals has no floor of its own.
const (
	floorInterval   = 500 * time.Millisecond
	minInRunSamples = 3 * sampleBurst
)

// generatorGCPercent is the generator's GOGC while it drives the nodes
// (unless GOGC is set): its heap is mostly the fleet's keys, live for the
// whole run, which the default of 100 would have the collector mark again
// every few hundred releases, CPU taken from the broker on the same
// machine. The heap grows to at most five times the fleet's.
const generatorGCPercent = 400
