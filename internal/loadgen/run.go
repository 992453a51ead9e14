package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/internal/softtpm"
)

// Opts configure Run. Either Serve is set or Addr and CAPEM name a running
// broker that trusts the fleet (see Opts.Ready).
type Opts struct {
	// Nodes is the number of distinct nodes; each attests once. Default 1000.
	Nodes int
	// Concurrency is the number of nodes in flight at once. Default 50.
	Concurrency int
	// Key is the nodes' EK and AK type; default ECC.
	Key softtpm.KeyType
	// EKCA, if set, is the fleet's EK CA: Run has it issue every node an
	// EK certificate, the crypto floor counts one EK certificate chain
	// verification, and a broker Serve starts trusts the fleet through it
	// (an ek_ca block, a policy selecting ek_cas) instead of by EK hash.
	// With Addr, the broker must trust its root (EKCA.RootPEM). Nil: the
	// nodes have no EK certificate and are trusted by EK hash.
	EKCA *softtpm.EKCA
	// EventLog, if set, is a TCG event log every node sends with its
	// attestation (event_log); the nodes' SHA-256 PCRs are what it replays
	// to (softtpm.EventLogPCRs), so Run refuses a log that does not parse
	// or has no SHA-256 digests. A broker Serve starts then also requires
	// eventlog.present: every release verified the log. Nil: none.
	EventLog []byte
	// Addr and CAPEM are the broker's address and its CA bundle (pinned).
	Addr  string
	CAPEM []byte
	// BrokerPID, with Addr, is the broker's process id for CPU and memory
	// figures; 0 leaves them out.
	BrokerPID int
	// BrokerMetrics, with Addr and without BrokerPID, is the URL of the
	// broker's metrics endpoint (metrics_listen's /metrics), from which
	// its CPU and memory figures are read instead: for a broker on
	// another machine, with the generator's CPU not taken from it.
	BrokerMetrics string
	// Serve starts a broker as a separate process (Executable serve) with
	// a temporary data directory trusting the fleet, and stops it after.
	Serve bool
	// Executable is the keybroker binary Serve runs; default os.Executable.
	Executable string
	// Ready, if set, is called with the fleet before the run starts: for a
	// broker at Addr to be told which EK hashes (or EK CA) to trust.
	Ready func(nodes []*softtpm.Node) error
	// Progress receives a line every second while the run goes; nil: none.
	Progress io.Writer
	// Timeout bounds one node's release; default one minute.
	Timeout time.Duration
	// FloorInterval is how often the floor is sampled during the run
	// (Summary.FloorInRun); default floorInterval.
	FloorInterval time.Duration
	// CPUProfile, if set, receives a CPU profile (pprof) of this process
	// while it drives the nodes: the generator's own cost, without the
	// fleet's key generation and the floor. Nil: none.
	CPUProfile io.Writer
}

func (o *Opts) defaults() error {
	if o.Nodes == 0 {
		o.Nodes = 1000
	}
	if o.Concurrency == 0 {
		o.Concurrency = 50
	}
	if o.Timeout == 0 {
		o.Timeout = time.Minute
	}
	if o.FloorInterval == 0 {
		o.FloorInterval = floorInterval
	}
	switch {
	case o.Nodes < 0 || o.Concurrency < 0:
		return errors.New("nodes and concurrency must be positive")
	case o.FloorInterval < 0:
		return errors.New("the floor's sampling interval must be positive")
	case o.Serve && o.Addr != "":
		return errors.New("serve and an address are exclusive")
	case !o.Serve && (o.Addr == "" || len(o.CAPEM) == 0):
		return errors.New("a broker address and CA, or serve, are required")
	case o.BrokerMetrics != "" && (o.Serve || o.BrokerPID != 0):
		return errors.New("the broker's metrics URL goes with an address, without its process id")
	}
	if o.BrokerMetrics != "" {
		if err := CheckMetricsURL(o.BrokerMetrics); err != nil {
			return fmt.Errorf("the broker's metrics URL: %w", err)
		}
	}
	if o.Serve && o.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("unable to find the keybroker executable: %w", err)
		}
		o.Executable = exe
	}
	return nil
}

// Run makes the fleet of o.Nodes nodes and drives it (Drive).
func Run(ctx context.Context, o Opts) (*Summary, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	nodeOpts, err := o.nodeOpts()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	// RSA keys take a while to generate (about a minute per thousand nodes
	// on two cores): say how far it got.
	var made atomic.Int64
	stop := ticker(o.Progress, func() string {
		return fmt.Sprintf("loadgen: generating %s node keys: %d/%d", o.Key, made.Load(), o.Nodes)
	})
	nodes, err := makeFleet(o.Nodes, nodeOpts, &made)
	stop()
	if err != nil {
		return nil, err
	}
	fleet := time.Since(start)
	sum, err := Drive(ctx, nodes, o)
	if sum != nil {
		sum.FleetSeconds = fleet.Seconds()
	}
	return sum, err
}

// nodeOpts are the options every node of the fleet is made with.
func (o *Opts) nodeOpts() (softtpm.Opts, error) {
	opts := softtpm.Opts{Key: o.Key, EKCA: o.EKCA}
	if o.EventLog == nil {
		return opts, nil
	}
	pcrs, err := softtpm.EventLogPCRs(o.EventLog)
	if err != nil {
		return softtpm.Opts{}, fmt.Errorf("unable to boot the nodes from the event log: %w", err)
	}
	opts.PCRs, opts.EventLog = pcrs, o.EventLog
	return opts, nil
}

// Drive measures the crypto floor, drives every node once through the
// broker and returns the summary; o.Nodes, o.Key and o.EventLog are taken
// from nodes, which were made with o.EKCA. Failed releases are counted in
// Summary.Errors; an error means the run itself could not be made.
func Drive(ctx context.Context, nodes []*softtpm.Node, o Opts) (*Summary, error) {
	if len(nodes) == 0 {
		return nil, errors.New("no nodes to drive")
	}
	o.Nodes, o.Key, o.EventLog = len(nodes), nodes[0].Key(), nodes[0].EventLog()
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if cert, _ := nodes[0].EKCertificate(); o.EKCA != nil && cert == nil {
		return nil, errors.New("the nodes have no EK certificate from the EK CA")
	}
	sum := &Summary{Nodes: o.Nodes, Concurrency: o.Concurrency, Key: o.Key.String(), EKCerts: o.EKCA != nil,
		EventLogBytes: len(o.EventLog), Errors: map[string]int{}}
	if o.Progress != nil {
		log := "no event log"
		if sum.EventLogBytes > 0 {
			log = fmt.Sprintf("each sending an event log of %d bytes", sum.EventLogBytes)
		}
		fmt.Fprintf(o.Progress, "loadgen: %d %s nodes at concurrency %d, trusted by %s, %s\n",
			sum.Nodes, sum.Key, sum.Concurrency, sum.trust(), log)
	}
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "loadgen: measuring the crypto floor, one operation at a time, then on all %d CPUs at once, then the nodes' side\n", runtime.GOMAXPROCS(0))
	}
	var err error
	if sum.Floor, err = MeasureFloor(nodes[0], o.EKCA); err != nil {
		return nil, err
	}
	sum.FloorThreads = runtime.GOMAXPROCS(0)
	if sum.FloorSaturated, err = MeasureFloorSaturated(nodes[0], o.EKCA, sum.FloorThreads); err != nil {
		return nil, err
	}
	if sum.GeneratorFloor, err = MeasureNodeFloor(nodes[0]); err != nil {
		return nil, err
	}
	sum.CPUs = runtime.NumCPU()
	if o.Ready != nil {
		if err := o.Ready(nodes); err != nil {
			return nil, err
		}
	}
	if !o.Serve {
		t := target{addr: o.Addr, caPEM: o.CAPEM, pid: o.BrokerPID, metrics: o.BrokerMetrics}
		err = t.measure(ctx, o, nodes, sum)
		return sum, err
	}
	b, err := StartBroker(ctx, o.Executable, nodes, o.EKCA)
	if err != nil {
		return nil, err
	}
	t := target{addr: b.Addr, caPEM: b.CAPEM, pid: b.PID(), store: b.StorePath()}
	err = t.measure(ctx, o, nodes, sum)
	if stopErr := b.Stop(); err == nil && stopErr != nil {
		err = stopErr
	}
	if err == nil {
		err = b.countReceipts(ctx, nodes, sum)
	}
	b.Cleanup()
	return sum, err
}

// drive runs every node once at o.Concurrency and returns the latencies of
// the releases that succeeded; failures are counted in sum.Errors.
func drive(ctx context.Context, o Opts, nodes []*softtpm.Node, addr string, tlsCfg *tls.Config, sum *Summary) []time.Duration {
	var (
		mu      sync.Mutex
		lat     = make([]time.Duration, 0, len(nodes))
		done    atomic.Int64
		failed  atomic.Int64
		next    atomic.Int64
		wg      sync.WaitGroup
		samples = map[string]string{}
	)
	start := time.Now()
	stop := progress(o.Progress, len(nodes), start, &done, &failed)
	for range min(o.Concurrency, len(nodes)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(nodes)) && ctx.Err() == nil; i = next.Add(1) - 1 {
				rctx, cancel := context.WithTimeout(ctx, o.Timeout)
				t0 := time.Now()
				err := release(rctx, nodes[i], addr, tlsCfg)
				d := time.Since(t0)
				cancel()
				mu.Lock()
				if err != nil {
					k := errorKey(err)
					sum.Errors[k]++
					if _, ok := samples[k]; !ok {
						samples[k] = err.Error()
					}
					failed.Add(1)
				} else {
					lat = append(lat, d)
				}
				mu.Unlock()
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	sum.WallSeconds = time.Since(start).Seconds()
	stop()
	if o.Progress != nil {
		for k, msg := range samples {
			fmt.Fprintf(o.Progress, "loadgen: first %s error: %s\n", k, msg)
		}
	}
	return lat
}

// progress prints done/total and the rate every second until stopped.
func progress(w io.Writer, total int, start time.Time, done, failed *atomic.Int64) (stop func()) {
	return ticker(w, func() string {
		d := done.Load()
		return fmt.Sprintf("loadgen: %d/%d done, %d errors, %.0f releases/s",
			d, total, failed.Load(), float64(d-failed.Load())/time.Since(start).Seconds())
	})
}

// ticker writes line() to w every second until stop is called; nil w:
// nothing.
func ticker(w io.Writer, line func() string) (stop func()) {
	if w == nil {
		return func() {}
	}
	return repeat(time.Second, false, func() bool {
		fmt.Fprintln(w, line())
		return true
	})
}

// repeat calls f every interval on a goroutine of its own until f returns
// false or stop is called; stop waits for the goroutine to end. With
// locked, the goroutine keeps one thread (for f to read its CPU time).
func repeat(interval time.Duration, locked bool, f func() bool) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		if locked {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
		}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			if !f() {
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit) }); <-done }
}

// percentile is the nearest-rank p-th percentile of sorted, in ms.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i]) / float64(time.Millisecond)
}

func sortDurations(d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
}
