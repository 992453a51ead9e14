package loadgen

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/softtpm"
)

// startBroker starts a broker in process from WriteConfig's files, trusting
// nodes, and returns it with its data directory.
func startBroker(t *testing.T, nodes []*softtpm.Node) (*broker.Running, string) {
	t.Helper()
	dir := t.TempDir()
	path, err := WriteConfig(dir, "127.0.0.1:0", nodes)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.LoadConfig(path)
	if err != nil {
		t.Fatalf("the generated configuration does not load: %v", err)
	}
	r, err := broker.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r, filepath.Join(dir, "data")
}

func newFleet(t *testing.T, n int, key softtpm.KeyType) []*softtpm.Node {
	t.Helper()
	nodes, err := NewFleet(n, key)
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

// A short run releases to every node of the fleet, for ECC and RSA nodes:
// no errors, every credential opened, latencies ordered, and one release
// receipt per node in the store.
func TestDriveReleasesToEveryNode(t *testing.T) {
	for _, key := range []softtpm.KeyType{softtpm.ECC, softtpm.RSA} {
		t.Run(key.String(), func(t *testing.T) {
			fleet := newFleet(t, 20, key)
			r, dataDir := startBroker(t, fleet)
			sum, err := Drive(context.Background(), fleet, Opts{Concurrency: 4, Addr: r.Addr(), CAPEM: r.CA.BundlePEM()})
			if err != nil {
				t.Fatal(err)
			}
			r.Stop()
			if len(sum.Errors) != 0 || sum.Released != 20 || sum.Nodes != 20 {
				t.Fatalf("released %d of %d, errors %v; want all 20, none", sum.Released, sum.Nodes, sum.Errors)
			}
			if sum.Key != key.String() || sum.P50Ms <= 0 || sum.P50Ms > sum.P95Ms || sum.P95Ms > sum.P99Ms {
				t.Errorf("summary %+v: want the key type and 0 < p50 <= p95 <= p99", sum)
			}
			if sum.BrokerCPUMsPerRelease != nil || sum.FloorRatio != nil || sum.StoreBytesPerRelease != nil {
				t.Errorf("broker figures measured without a broker process or store: %+v", sum)
			}
			n, err := CountReleaseReceipts(context.Background(), dataDir, EKHashes(fleet))
			if err != nil {
				t.Fatal(err)
			}
			if n != 20 {
				t.Errorf("%d nodes have a release receipt, want 20", n)
			}
		})
	}
}

// Nodes the broker does not trust are refused at Challenge, counted by
// gRPC code, and nothing is released to them.
func TestDriveCountsRefusals(t *testing.T) {
	trusted, strangers := newFleet(t, 2, softtpm.ECC), newFleet(t, 5, softtpm.ECC)
	r, dataDir := startBroker(t, trusted)
	sum, err := Drive(context.Background(), strangers, Opts{Concurrency: 2, Addr: r.Addr(), CAPEM: r.CA.BundlePEM()})
	if err != nil {
		t.Fatal(err)
	}
	r.Stop()
	if sum.Released != 0 || sum.Errors["PermissionDenied"] != 5 || len(sum.Errors) != 1 {
		t.Fatalf("released %d, errors %v; want none released, 5 PermissionDenied", sum.Released, sum.Errors)
	}
	if n, err := CountReleaseReceipts(context.Background(), dataDir, EKHashes(strangers)); err != nil || n != 0 {
		t.Errorf("%d release receipts for untrusted nodes (%v), want 0", n, err)
	}
}

// A broker that pins another CA is not trusted: every node fails to
// connect and nothing is released.
func TestDriveRefusesUnpinnedBroker(t *testing.T) {
	fleet := newFleet(t, 3, softtpm.ECC)
	r, _ := startBroker(t, fleet)
	other, _ := startBroker(t, fleet)
	sum, err := Drive(context.Background(), fleet, Opts{Concurrency: 3, Addr: r.Addr(), CAPEM: other.CA.BundlePEM()})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Released != 0 || sum.Errors["Unavailable"] != 3 {
		t.Fatalf("released %d, errors %v; want none released, 3 Unavailable", sum.Released, sum.Errors)
	}
}

func TestOptsRefused(t *testing.T) {
	tests := []struct {
		name string
		opts Opts
		want string
	}{
		{"no target", Opts{}, "a broker address and CA, or serve, are required"},
		{"both targets", Opts{Serve: true, Addr: "127.0.0.1:1"}, "serve and an address are exclusive"},
		{"no CA", Opts{Addr: "127.0.0.1:1"}, "a broker address and CA, or serve, are required"},
		{"negative", Opts{Nodes: -1, Addr: "127.0.0.1:1", CAPEM: []byte("x")}, "nodes and concurrency must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Run(context.Background(), tt.opts); err == nil || err.Error() != tt.want {
				t.Errorf("Run: %v, want %q", err, tt.want)
			}
		})
	}
}

// The /proc readers read this process: CPU time grows with work, and the
// peak RSS is at least the current one.
func TestProcReaders(t *testing.T) {
	pid := os.Getpid()
	cpu0, err := processCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Work until the kernel's clock tick (10 ms) counts some, at most 50
	// rounds of 1,000 node keys (about 2 s of CPU).
	cpu1 := cpu0
	for i := 0; i < 50 && err == nil && cpu1 <= cpu0; i++ {
		if _, err := NewFleet(1000, softtpm.ECC); err != nil {
			t.Fatal(err)
		}
		cpu1, err = processCPU(pid)
	}
	if err != nil || cpu1 <= cpu0 {
		t.Errorf("CPU %v then %v (%v); want it to grow", cpu0, cpu1, err)
	}
	if rss, err := peakRSS(pid); err != nil || rss < 1<<20 {
		t.Errorf("peak RSS %d (%v), want at least 1 MiB", rss, err)
	}
	if _, err := processCPU(-1); err == nil {
		t.Error("processCPU read a process that does not exist")
	}
}

// The floor is measured for both key types, every part positive and the
// total their sum; the parts are real work, not a zero-cost stub.
func TestMeasureFloor(t *testing.T) {
	for _, key := range []softtpm.KeyType{softtpm.ECC, softtpm.RSA} {
		t.Run(key.String(), func(t *testing.T) {
			f, err := MeasureFloor(newFleet(t, 1, key)[0])
			if err != nil {
				t.Fatal(err)
			}
			parts := []float64{f.AKVerifyMs, f.MakeCredentialMs, f.ImportBlobMs, f.CertificateMs, f.TLSHandshakeMs}
			sum := 0.0
			for i, p := range parts {
				if p <= 0.001 {
					t.Errorf("part %d of the floor is %v ms", i, p)
				}
				sum += p
			}
			if d := sum - f.TotalMs; d > 1e-9 || d < -1e-9 {
				t.Errorf("total %v ms, parts add to %v", f.TotalMs, sum)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	sortDurations(d)
	for p, want := range map[float64]float64{50: 50, 95: 95, 99: 99, 100: 100} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%v = %v ms, want %v", p, got, want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}
