package loadgen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Summary is what one run measured. Per-release figures divide by the
// releases that succeeded; pointer fields are null when not measured
// (the broker's process or store unknown, or nothing released).
type Summary struct {
	Nodes       int    `json:"nodes"`
	Concurrency int    `json:"concurrency"`
	Key         string `json:"key"`
	// EKCerts: the nodes presented EK certificates of the fleet's EK CA
	// (Opts.EKCA) and were trusted through it; false: by EK hash.
	EKCerts bool `json:"ek_certs"`
	// EventLogBytes is the size of the event log every node sent with its
	// attestation (Opts.EventLog); 0: none.
	EventLogBytes int `json:"event_log_bytes"`
	// Released counts the nodes that opened their credential.
	Released int `json:"released"`
	// Errors counts failed releases by gRPC code name (Unavailable,
	// PermissionDenied, …) or, for failures on the node's side, by stage
	// (dial, activate, quote, open, no_credential, key_mismatch).
	Errors            map[string]int `json:"errors"`
	WallSeconds       float64        `json:"wall_seconds"`
	ReleasesPerSecond float64        `json:"releases_per_second"`
	// Latencies per node, from dialling the broker to the credential opened.
	P50Ms                 float64  `json:"p50_ms"`
	P95Ms                 float64  `json:"p95_ms"`
	P99Ms                 float64  `json:"p99_ms"`
	BrokerCPUMsPerRelease *float64 `json:"broker_cpu_ms_per_release"`
	// BrokerFigures is where the broker's CPU and memory were read:
	// /proc/<pid> of its process (on this machine), or the URL of its
	// metrics endpoint (its process collector's CPU seconds, and its
	// resident memory sampled every half second, the highest kept;
	// without a password). Empty (omitted) when neither was known, or
	// when its metrics could not be read after the run or showed another
	// process (BrokerFiguresError says why; the run's other figures
	// stand). BrokerFiguresError also counts failed memory readings.
	BrokerFigures      string `json:"broker_figures,omitempty"`
	BrokerFiguresError string `json:"broker_figures_error,omitempty"`
	// brokerHere: the broker's figures are from its process, on this
	// machine.
	brokerHere bool
	// GeneratorCPUMsPerRelease is the load generator's own CPU per release
	// (its nodes' TPM work and the client half of every TLS handshake): on
	// the broker's machine it competes with the broker.
	GeneratorCPUMsPerRelease *float64 `json:"generator_cpu_ms_per_release"`
	BrokerPeakRSSBytes       *int64   `json:"broker_peak_rss_bytes"`
	StoreBytesPerRelease     *float64 `json:"store_bytes_per_release"`
	// Receipts counts the allowed decisions with a release recorded in the
	// store for the fleet's nodes (Serve only).
	Receipts   *int     `json:"receipts,omitempty"`
	FloorMs    float64  `json:"floor_ms"`
	FloorRatio *float64 `json:"floor_ratio"`
	// Floor is the crypto floor part by part, one operation at a time.
	Floor Floor `json:"floor"`
	// FloorSaturated is the same floor measured with FloorThreads
	// operations at once (one per CPU the generator may use), so that
	// every CPU is busy as during the run; FloorSaturatedRatio is the
	// broker's CPU per release over it.
	FloorThreads        int      `json:"floor_threads"`
	FloorSaturatedMs    float64  `json:"floor_saturated_ms"`
	FloorSaturatedRatio *float64 `json:"floor_saturated_ratio"`
	FloorSaturated      Floor    `json:"floor_saturated"`
	// FloorInRun is the same floor sampled while the run went on
	// (FloorSampler: every half second each operation warmed up and then
	// timed a few times, on a thread of its own), FloorInRunSamples timed
	// runs of each: the host's speed, which a shared machine changes from
	// one minute to the next, is the same for it as for the broker's CPU.
	// FloorInRunRatio is the broker's CPU per release over it. Null when
	// the run took fewer than minInRunSamples samples, or when sampling
	// failed (FloorInRunError says why; the run's other figures stand).
	FloorInRunSamples int      `json:"floor_in_run_samples"`
	FloorInRunMs      *float64 `json:"floor_in_run_ms"`
	FloorInRunRatio   *float64 `json:"floor_in_run_ratio"`
	FloorInRun        *Floor   `json:"floor_in_run"`
	FloorInRunError   string   `json:"floor_in_run_error,omitempty"`
	// GeneratorFloor is the nodes' side of one release (NodeFloor), one
	// operation at a time; GeneratorFloorRatio is the generator's CPU per
	// release over it.
	GeneratorFloorMs    float64   `json:"generator_floor_ms"`
	GeneratorFloorRatio *float64  `json:"generator_floor_ratio"`
	GeneratorFloor      NodeFloor `json:"generator_floor"`
	// CPUs is how many CPUs the generator may run on and, with the
	// broker's process known, the broker too (the union of their
	// affinity masks).
	CPUs int `json:"cpus"`
	// BrokerCPUShare, for a broker on this machine, is its part of the
	// CPU the broker and the generator used together, 0 to 1.
	BrokerCPUShare *float64 `json:"broker_cpu_share"`
	// WallSecondsFloor, for a broker on this machine (its process known),
	// is the least wall time of the releases made, here: every one at the
	// broker's floor and the generator's, on CPUs that do nothing else. A
	// target below it cannot be met on this machine by this broker's and
	// this generator's steps (Go's TLS defaults among them) with the two
	// side by side, however little either does beyond them.
	WallSecondsFloor *float64 `json:"wall_seconds_floor"`
	// FleetSeconds is how long making the nodes' keys (and EK
	// certificates) took.
	FleetSeconds float64 `json:"fleet_seconds"`
}

// setShares sets the figures that compare the broker's CPU with the
// generator's, from those measured, for a broker on this machine.
func (s *Summary) setShares() {
	s.GeneratorFloorRatio = ratio(s.GeneratorCPUMsPerRelease, s.GeneratorFloorMs)
	if !s.brokerHere {
		return
	}
	if b, g := s.BrokerCPUMsPerRelease, s.GeneratorCPUMsPerRelease; b != nil && g != nil && *b+*g > 0 {
		share := *b / (*b + *g)
		s.BrokerCPUShare = &share
	}
	if s.Released > 0 && s.CPUs > 0 && s.FloorMs > 0 && s.GeneratorFloorMs > 0 {
		wall := float64(s.Released) * (s.FloorMs + s.GeneratorFloorMs) / float64(s.CPUs) / 1000
		s.WallSecondsFloor = &wall
	}
}

// fill sets the counts, rate and percentiles from the successful latencies.
func (s *Summary) fill(lat []time.Duration) {
	sortDurations(lat)
	s.Released = len(lat)
	if s.WallSeconds > 0 {
		s.ReleasesPerSecond = float64(s.Released) / s.WallSeconds
	}
	s.P50Ms, s.P95Ms, s.P99Ms = percentile(lat, 50), percentile(lat, 95), percentile(lat, 99)
	s.FloorMs = s.Floor.TotalMs
	s.FloorSaturatedMs = s.FloorSaturated.TotalMs
	s.GeneratorFloorMs = s.GeneratorFloor.TotalMs
}

// setFloorInRun records what a FloorSampler's Stop returned.
func (s *Summary) setFloorInRun(f Floor, samples int, err error) {
	s.FloorInRunSamples = samples
	switch {
	case err != nil:
		s.FloorInRunError = err.Error()
	case samples >= minInRunSamples:
		s.FloorInRun, s.FloorInRunMs = &f, &f.TotalMs
	}
}

// perRelease is total/released, or nil when nothing was released.
func perRelease(total float64, released int) *float64 {
	if released == 0 {
		return nil
	}
	v := total / float64(released)
	return &v
}

// WriteJSON writes the summary as one JSON object.
func (s *Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// WriteText writes the summary for people.
func (s *Summary) WriteText(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "nodes            %d %s, concurrency %d\n", s.Nodes, s.Key, s.Concurrency)
	fmt.Fprintf(&b, "trust            %s\n", s.trust())
	fmt.Fprintf(&b, "event log        %s\n", s.eventLog())
	fmt.Fprintf(&b, "released         %d in %.2f s: %.1f releases/s\n", s.Released, s.WallSeconds, s.ReleasesPerSecond)
	fmt.Fprintf(&b, "errors           %s\n", errorsText(s.Errors))
	fmt.Fprintf(&b, "latency          p50 %.1f ms, p95 %.1f ms, p99 %.1f ms\n", s.P50Ms, s.P95Ms, s.P99Ms)
	fmt.Fprintf(&b, "broker CPU       %s ms per release\n", optional(s.BrokerCPUMsPerRelease, 3))
	fmt.Fprintf(&b, "broker figures   %s\n", s.brokerFigures())
	fmt.Fprintf(&b, "generator CPU    %s ms per release\n", optional(s.GeneratorCPUMsPerRelease, 3))
	if s.BrokerPeakRSSBytes != nil {
		fmt.Fprintf(&b, "broker peak RSS  %.1f MiB\n", float64(*s.BrokerPeakRSSBytes)/(1<<20))
	} else {
		fmt.Fprintf(&b, "broker peak RSS  unknown\n")
	}
	fmt.Fprintf(&b, "store growth     %s bytes per release\n", optional(s.StoreBytesPerRelease, 0))
	if s.Receipts != nil {
		fmt.Fprintf(&b, "receipts         %d\n", *s.Receipts)
	}
	fmt.Fprintf(&b, "crypto floor     %s\n", s.Floor.text(s.EKCerts))
	fmt.Fprintf(&b, "floor ratio      %s x\n", optional(s.FloorRatio, 2))
	fmt.Fprintf(&b, "floor, %d busy   %s\n", s.FloorThreads, s.FloorSaturated.text(s.EKCerts))
	fmt.Fprintf(&b, "ratio, %d busy   %s x\n", s.FloorThreads, optional(s.FloorSaturatedRatio, 2))
	switch {
	case s.FloorInRun != nil:
		fmt.Fprintf(&b, "floor in run     %s, %d samples\n", s.FloorInRun.text(s.EKCerts), s.FloorInRunSamples)
	case s.FloorInRunError != "":
		fmt.Fprintf(&b, "floor in run     unknown: %s\n", s.FloorInRunError)
	default:
		fmt.Fprintf(&b, "floor in run     unknown (%d samples: run too short)\n", s.FloorInRunSamples)
	}
	fmt.Fprintf(&b, "ratio, in run    %s x\n", optional(s.FloorInRunRatio, 2))
	fmt.Fprintf(&b, "generator floor  %s\n", s.GeneratorFloor.text())
	fmt.Fprintf(&b, "generator ratio  %s x\n", optional(s.GeneratorFloorRatio, 2))
	if s.BrokerCPUShare != nil {
		fmt.Fprintf(&b, "CPU share        broker %.0f%%, generator %.0f%%\n", 100**s.BrokerCPUShare, 100-100**s.BrokerCPUShare)
	} else {
		fmt.Fprintf(&b, "CPU share        unknown\n")
	}
	if s.WallSecondsFloor != nil {
		fmt.Fprintf(&b, "wall-time floor  %.2f s: %d releases at the broker's and the generator's floors on %d CPUs\n",
			*s.WallSecondsFloor, s.Released, s.CPUs)
	} else {
		fmt.Fprintf(&b, "wall-time floor  unknown (no release, or the broker's process not known here)\n")
	}
	_, err := w.Write(b.Bytes())
	return err
}

// text is f for people.
func (f Floor) text(ekCerts bool) string {
	chain := ""
	if ekCerts {
		chain = fmt.Sprintf(", EK chain %.3f", f.EKChainMs)
	}
	return fmt.Sprintf("%.3f ms (AK verify %.3f, MakeCredential %.3f, import blob %.3f, P-256 cert %.3f, TLS 1.3 handshake %.3f%s)",
		f.TotalMs, f.AKVerifyMs, f.MakeCredentialMs, f.ImportBlobMs, f.CertificateMs, f.TLSHandshakeMs, chain)
}

// brokerFigures says where the broker's CPU and memory were read.
func (s *Summary) brokerFigures() string {
	var b strings.Builder
	switch {
	case s.BrokerFigures == "":
		b.WriteString("unknown")
		if s.BrokerFiguresError == "" {
			b.WriteString(" (neither the broker's process nor its metrics endpoint known)")
		}
	case s.brokerHere:
		b.WriteString("from " + s.BrokerFigures)
	default:
		b.WriteString("from its metrics at " + s.BrokerFigures + " (the floors are this machine's)")
	}
	if s.BrokerFiguresError != "" {
		b.WriteString(": " + s.BrokerFiguresError)
	}
	return b.String()
}

// trust says how the broker trusts the nodes.
func (s *Summary) trust() string {
	if s.EKCerts {
		return "EK certificate (the fleet's EK CA: root trusted, intermediate presented by each node)"
	}
	return "EK hash"
}

// eventLog says what event log the nodes sent.
func (s *Summary) eventLog() string {
	if s.EventLogBytes == 0 {
		return "none"
	}
	return fmt.Sprintf("%d bytes per attestation", s.EventLogBytes)
}

func optional(v *float64, prec int) string {
	if v == nil {
		return "unknown"
	}
	return strconv.FormatFloat(*v, 'f', prec, 64)
}

func errorsText(errs map[string]int) string {
	if len(errs) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, errs[k])
	}
	return strings.Join(parts, ", ")
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// cpusOf is how many CPUs any of processes pids may run on (the union of
// their affinity masks); this process's CPUs (runtime.NumCPU) when a mask
// cannot be read or no process is named.
func cpusOf(pids ...int) int {
	if len(pids) == 0 {
		return runtime.NumCPU()
	}
	var union unix.CPUSet
	for _, pid := range pids {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(pid, &set); err != nil {
			return runtime.NumCPU()
		}
		for i := range union {
			union[i] |= set[i]
		}
	}
	return union.Count()
}

// processCPU is the user plus system CPU time of process pid so far.
func processCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("unable to read the broker's CPU time: %w", err)
	}
	// The command name may hold spaces and parentheses: fields start
	// after the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(raw, ')')
	fields := strings.Fields(string(raw[i+1:]))
	if i < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("unable to parse /proc/%d/stat", pid)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unable to parse /proc/%d/stat: %w", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, nil
}

// peakRSS is VmHWM of process pid, in bytes.
func peakRSS(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("unable to read the broker's memory: %w", err)
	}
	for line := range strings.Lines(string(raw)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				break
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("unable to read the store's size: %w", err)
	}
	return fi.Size(), nil
}
