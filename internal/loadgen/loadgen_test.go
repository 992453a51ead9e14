package loadgen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/softtpm"
	"github.com/keybroker/keybroker/internal/tpmcred"
)

// startBroker starts a broker in process from WriteConfig's files, trusting
// nodes by EK hash, and returns it with its data directory.
func startBroker(t *testing.T, nodes []*softtpm.Node) (*broker.Running, string) {
	t.Helper()
	r, cfg := startBrokerWith(t, nodes, nil)
	return r, cfg.DataDir
}

// startBrokerWith starts a broker in process from WriteConfig's files for
// nodes and ekCA, each of change applied to its configuration first, and
// returns it with its configuration.
func startBrokerWith(t *testing.T, nodes []*softtpm.Node, ekCA *softtpm.EKCA, change ...func(*broker.Config)) (*broker.Running, *broker.Config) {
	t.Helper()
	dir := t.TempDir()
	path, err := WriteConfig(dir, "127.0.0.1:0", nodes, ekCA)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.LoadConfig(path)
	if err != nil {
		t.Fatalf("the generated configuration does not load: %v", err)
	}
	for _, c := range change {
		c(cfg)
	}
	r, err := broker.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r, cfg
}

func newFleet(t *testing.T, n int, key softtpm.KeyType) []*softtpm.Node {
	t.Helper()
	return newCertFleet(t, n, key, nil)
}

// newCertFleet makes n nodes with EK certificates issued by ekCA.
func newCertFleet(t *testing.T, n int, key softtpm.KeyType, ekCA *softtpm.EKCA) []*softtpm.Node {
	t.Helper()
	nodes, err := NewFleet(n, softtpm.Opts{Key: key, EKCA: ekCA})
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

func newEKCA(t *testing.T) *softtpm.EKCA {
	t.Helper()
	ca, err := softtpm.NewEKCA("test")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// A short run releases to every node of the fleet, for ECC and RSA nodes:
// no errors, every credential opened, latencies ordered, and one release
// receipt per node in the store.
func TestDriveReleasesToEveryNode(t *testing.T) {
	for _, key := range []softtpm.KeyType{softtpm.ECC, softtpm.RSA} {
		t.Run(key.String(), func(t *testing.T) {
			fleet := newFleet(t, 20, key)
			r, dataDir := startBroker(t, fleet)
			sum, err := Drive(context.Background(), fleet, Opts{Concurrency: 4, Addr: r.Addr(), CAPEM: r.CA.BundlePEM(), FloorInterval: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			r.Stop()
			switch {
			case sum.FloorInRunSamples >= minInRunSamples && sum.FloorInRun != nil:
				checkFloorParts(t, *sum.FloorInRun, []float64{sum.FloorInRun.AKVerifyMs, sum.FloorInRun.MakeCredentialMs,
					sum.FloorInRun.ImportBlobMs, sum.FloorInRun.CertificateMs, sum.FloorInRun.TLSHandshakeMs})
			case sum.FloorInRunSamples >= minInRunSamples || sum.FloorInRun != nil:
				t.Errorf("%d in-run floor samples, floor %+v: want a floor from %d samples on", sum.FloorInRunSamples, sum.FloorInRun, minInRunSamples)
			}
			if sum.FloorInRunRatio != nil {
				t.Errorf("in-run floor ratio %v without a broker process", *sum.FloorInRunRatio)
			}
			if len(sum.Errors) != 0 || sum.Released != 20 || sum.Nodes != 20 {
				t.Fatalf("released %d of %d, errors %v; want all 20, none", sum.Released, sum.Nodes, sum.Errors)
			}
			if sum.Key != key.String() || sum.P50Ms <= 0 || sum.P50Ms > sum.P95Ms || sum.P95Ms > sum.P99Ms {
				t.Errorf("summary %+v: want the key type and 0 < p50 <= p95 <= p99", sum)
			}
			if sum.BrokerCPUMsPerRelease != nil || sum.FloorRatio != nil || sum.FloorSaturatedRatio != nil || sum.StoreBytesPerRelease != nil ||
				sum.BrokerCPUShare != nil || sum.WallSecondsFloor != nil {
				t.Errorf("broker figures measured without a broker process or store: %+v", sum)
			}
			g := sum.GeneratorFloor
			checkFloorParts(t, Floor{TotalMs: g.TotalMs}, []float64{g.ActivateMs, g.QuoteMs, g.OpenMs, g.TLSHandshakeMs})
			if sum.GeneratorFloorMs != g.TotalMs || sum.GeneratorCPUMsPerRelease == nil || sum.GeneratorFloorRatio == nil ||
				*sum.GeneratorFloorRatio != *sum.GeneratorCPUMsPerRelease/g.TotalMs || sum.CPUs < 1 {
				t.Errorf("generator floor %v ms, ratio %v, CPU %v, %d CPUs: want the floor, the generator's CPU over it, the CPUs",
					sum.GeneratorFloorMs, sum.GeneratorFloorRatio, sum.GeneratorCPUMsPerRelease, sum.CPUs)
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

// With EK certificates, a broker that trusts only the fleet's EK CA (an
// ek_ca block, no ek_allow) and whose policy selects the nodes only by
// that CA releases to every node: no errors, every credential opened, one
// release receipt per node, and each node's record holds the EK
// certificate it presented, which the broker's evidence verification
// chains to the CA by name.
func TestDriveEKCerts(t *testing.T) {
	for _, tc := range []struct {
		key softtpm.KeyType
		n   int
	}{{softtpm.ECC, 36}, {softtpm.RSA, 6}} {
		t.Run(tc.key.String(), func(t *testing.T) {
			ca := newEKCA(t)
			fleet := newCertFleet(t, tc.n, tc.key, ca)
			r, cfg := startBrokerWith(t, fleet, ca)
			if len(cfg.Verify.Trust.EKHashes) != 0 || len(cfg.Verify.Trust.CAs) != 1 || cfg.Verify.Trust.CAs[0].Name != EKCAName {
				t.Fatalf("trust %d EK hashes, CAs %+v; want only the EK CA %q", len(cfg.Verify.Trust.EKHashes), cfg.Verify.Trust.CAs, EKCAName)
			}
			sum, err := Drive(context.Background(), fleet, Opts{Concurrency: 6, Addr: r.Addr(), CAPEM: r.CA.BundlePEM(), EKCA: ca})
			if err != nil {
				t.Fatal(err)
			}
			r.Stop()
			if len(sum.Errors) != 0 || sum.Released != tc.n || !sum.EKCerts {
				t.Fatalf("released %d of %d, errors %v, ek_certs %v; want all, none, true", sum.Released, tc.n, sum.Errors, sum.EKCerts)
			}
			if sum.Floor.EKChainMs <= 0 || sum.FloorMs != sum.Floor.TotalMs || sum.FloorMs <= sum.Floor.EKChainMs {
				t.Errorf("floor %+v, floor_ms %v: want an EK chain part within the total", sum.Floor, sum.FloorMs)
			}
			n, err := CountReleaseReceipts(context.Background(), cfg.DataDir, EKHashes(fleet))
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.n {
				t.Errorf("%d nodes have a release receipt, want %d", n, tc.n)
			}
			recs, err := broker.ListNodes(context.Background(), cfg, store.ListNodesOpts{Limit: store.MaxListLimit})
			if err != nil {
				t.Fatal(err)
			}
			certs := map[string][]byte{}
			for _, node := range fleet {
				certs[node.EKHash()], _ = node.EKCertificate()
			}
			if len(recs) != tc.n {
				t.Fatalf("%d node records, want %d", len(recs), tc.n)
			}
			for _, rec := range recs {
				if !bytes.Equal(rec.Evidence.EKCertificate, certs[rec.EKHash]) || len(rec.Evidence.EKIntermediates) != 1 {
					t.Fatalf("node %s: the record does not hold its EK certificate and intermediate", rec.EKHash)
				}
				v, err := evidence.Reverify(rec.Evidence, cfg.Verify)
				if err != nil {
					t.Fatalf("node %s: the evidence does not verify again: %v", rec.EKHash, err)
				}
				if v.EKCA() != EKCAName {
					t.Errorf("node %s: EK CA %q, want %q", rec.EKHash, v.EKCA(), EKCAName)
				}
			}
		})
	}
}

// corpusLog is a real machine's event log from the broker's corpus
// (broker/verify/testdata/eventlogs, origins in its README): Ubuntu 24.04
// booted by GRUB on a GCE AMD SEV-SNP VM, SHA-256 and SHA-384 digests.
const corpusLog = "../../broker/verify/testdata/eventlogs/ubuntu-2404-amd-sevsnp.bin"

// With an event log, every node sends a real machine's log and quotes the
// PCRs it replays to: a broker whose policy requires the nodes' PCRs 0 and
// 7 and eventlog.present (WriteConfig) releases to every node, stores one
// receipt each, and each node's record holds the log (kept once, by its
// SHA-256), which verifies again to the facts of a GRUB boot.
func TestDriveEventLog(t *testing.T) {
	raw, err := os.ReadFile(corpusLog)
	if err != nil {
		t.Fatal(err)
	}
	o := Opts{EventLog: raw}
	nodeOpts, err := o.nodeOpts()
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := NewFleet(20, nodeOpts)
	if err != nil {
		t.Fatal(err)
	}
	r, cfg := startBrokerWith(t, fleet, nil)
	policy, err := os.ReadFile(filepath.Join(filepath.Dir(cfg.DataDir), "nodes.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(policy), `"eventlog.present",`) {
		t.Errorf("the policy does not require eventlog.present:\n%s", policy)
	}
	sum, err := Drive(context.Background(), fleet, Opts{Concurrency: 5, Addr: r.Addr(), CAPEM: r.CA.BundlePEM()})
	if err != nil {
		t.Fatal(err)
	}
	r.Stop()
	if len(sum.Errors) != 0 || sum.Released != 20 || sum.EventLogBytes != len(raw) {
		t.Fatalf("released %d of 20, errors %v, event_log_bytes %d; want all, none, %d", sum.Released, sum.Errors, sum.EventLogBytes, len(raw))
	}
	if n, err := CountReleaseReceipts(context.Background(), cfg.DataDir, EKHashes(fleet)); err != nil || n != 20 {
		t.Errorf("%d nodes have a release receipt (%v), want 20", n, err)
	}
	recs, err := broker.ListNodes(context.Background(), cfg, store.ListNodesOpts{Limit: store.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 20 {
		t.Fatalf("%d node records, want 20", len(recs))
	}
	sha := sha256.Sum256(raw)
	for _, rec := range recs {
		ev := rec.Evidence
		// The store keeps the log apart, under its SHA-256, and puts it
		// back when it reads the record.
		if !bytes.Equal(ev.EventLog, raw) || (ev.EventLogSHA256 != "" && ev.EventLogSHA256 != hex.EncodeToString(sha[:])) {
			t.Fatalf("node %s: the record holds %d bytes of event log under %q, want the %d-byte log, SHA-256 %x",
				rec.EKHash, len(ev.EventLog), ev.EventLogSHA256, len(raw), sha)
		}
		v, err := evidence.Reverify(ev, cfg.Verify)
		if err != nil {
			t.Fatalf("node %s: the evidence does not verify again: %v", rec.EKHash, err)
		}
		if f := v.EventLog(); f == nil || f.BootLoader != verify.BootLoaderGRUB || !strings.HasPrefix(f.KernelCmdline, "/vmlinuz-6.8.0-1010-gcp ") {
			t.Errorf("node %s: event log facts %+v, want a GRUB boot of /vmlinuz-6.8.0-1010-gcp", rec.EKHash, f)
		}
	}
}

// The eventlog.present requirement is what makes a broken log path fail
// the run: nodes with the log's PCRs that send no log are trusted (the
// same EK CA) and pass the PCR requirements, yet nothing is released.
func TestDriveEventLogRequired(t *testing.T) {
	raw, err := os.ReadFile(corpusLog)
	if err != nil {
		t.Fatal(err)
	}
	ca := newEKCA(t)
	o := Opts{EventLog: raw, EKCA: ca}
	nodeOpts, err := o.nodeOpts()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := startBrokerWith(t, newCertFleet(t, 1, softtpm.ECC, ca), ca)
	nodeOpts.EventLog = nil
	silent, err := NewFleet(3, nodeOpts)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := Drive(context.Background(), silent, Opts{Concurrency: 3, Addr: r.Addr(), CAPEM: r.CA.BundlePEM(), EKCA: ca})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Released != 0 || sum.Errors["PermissionDenied"] != 3 || sum.EventLogBytes != 0 {
		t.Fatalf("released %d, errors %v, event_log_bytes %d; want none released, 3 PermissionDenied, 0", sum.Released, sum.Errors, sum.EventLogBytes)
	}
}

// A broker trusting one fleet's EK CA refuses nodes certified by another
// CA and nodes with no EK certificate, at Challenge: nothing is released.
func TestDriveEKCertsRefusesOtherCAs(t *testing.T) {
	ca := newEKCA(t)
	r, cfg := startBrokerWith(t, newCertFleet(t, 2, softtpm.ECC, ca), ca)
	other := newEKCA(t)
	for name, strangers := range map[string][]*softtpm.Node{
		"another CA":     newCertFleet(t, 4, softtpm.ECC, other),
		"no certificate": newFleet(t, 3, softtpm.ECC),
	} {
		t.Run(name, func(t *testing.T) {
			o := Opts{Concurrency: 2, Addr: r.Addr(), CAPEM: r.CA.BundlePEM()}
			if name == "another CA" {
				o.EKCA = other
			}
			sum, err := Drive(context.Background(), strangers, o)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Released != 0 || sum.Errors["PermissionDenied"] != len(strangers) || len(sum.Errors) != 1 {
				t.Fatalf("released %d, errors %v; want none released, %d PermissionDenied", sum.Released, sum.Errors, len(strangers))
			}
		})
	}
	r.Stop()
	if recs, err := broker.ListNodes(context.Background(), cfg, store.ListNodesOpts{}); err != nil || len(recs) != 0 {
		t.Errorf("%d node records (%v), want none", len(recs), err)
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
		{"not an event log", Opts{Addr: "127.0.0.1:1", CAPEM: []byte("x"), EventLog: []byte("not a log")},
			"unable to boot the nodes from the event log: not a TCG event log: event 0: record is truncated"},
		{"metrics with serve", Opts{Serve: true, BrokerMetrics: "http://127.0.0.1:1/metrics"},
			"the broker's metrics URL goes with an address, without its process id"},
		{"metrics with pid", Opts{Addr: "127.0.0.1:1", CAPEM: []byte("x"), BrokerPID: 1, BrokerMetrics: "http://127.0.0.1:1/metrics"},
			"the broker's metrics URL goes with an address, without its process id"},
		{"metrics not a URL", Opts{Addr: "127.0.0.1:1", CAPEM: []byte("x"), BrokerMetrics: "127.0.0.1:9464"},
			`the broker's metrics URL: "127.0.0.1:9464" is not an http or https URL with a host: want http://HOST:PORT/metrics (the broker's metrics_listen)`},
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
		if _, err := NewFleet(1000, softtpm.Opts{}); err != nil {
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

// The floor is measured for both key types, with and without an EK
// certificate chain, every part positive and the total their sum; the
// parts are real work, not a zero-cost stub.
func TestMeasureFloor(t *testing.T) {
	ca := newEKCA(t)
	for _, key := range []softtpm.KeyType{softtpm.ECC, softtpm.RSA} {
		for _, ekCA := range []*softtpm.EKCA{nil, ca} {
			t.Run(fmt.Sprintf("%s ek_certs=%v", key, ekCA != nil), func(t *testing.T) {
				node := newCertFleet(t, 1, key, ekCA)[0]
				single, err := MeasureFloor(node, ekCA)
				if err != nil {
					t.Fatal(err)
				}
				saturated, err := MeasureFloorSaturated(node, ekCA, 2)
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range []Floor{single, saturated} {
					parts := []float64{f.AKVerifyMs, f.MakeCredentialMs, f.ImportBlobMs, f.CertificateMs, f.TLSHandshakeMs}
					if ekCA != nil {
						parts = append(parts, f.EKChainMs)
					} else if f.EKChainMs != 0 {
						t.Errorf("EK chain %v ms measured without EK certificates", f.EKChainMs)
					}
					checkFloorParts(t, f, parts)
				}
			})
		}
	}
}

// The floor sampled during a run: every step timed, for both key types and
// with an EK chain; a sampler stopped before its first interval has no
// floor; one whose step fails says so and keeps no floor.
func TestSampleFloor(t *testing.T) {
	ca := newEKCA(t)
	for _, key := range []softtpm.KeyType{softtpm.ECC, softtpm.RSA} {
		t.Run(key.String(), func(t *testing.T) {
			node := newCertFleet(t, 1, key, ca)[0]
			s, err := SampleFloor(node, ca, time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(30 * time.Second); s.n.Load() < minInRunSamples && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			f, n, err := s.Stop()
			if err != nil || n < minInRunSamples {
				t.Fatalf("%d samples, %v; want %d at least", n, err, minInRunSamples)
			}
			checkFloorParts(t, f, []float64{f.AKVerifyMs, f.MakeCredentialMs, f.ImportBlobMs, f.CertificateMs, f.TLSHandshakeMs, f.EKChainMs})
		})
	}
	t.Run("stopped at once", func(t *testing.T) {
		s, err := SampleFloor(newFleet(t, 1, softtpm.ECC)[0], nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if f, n, err := s.Stop(); err != nil || n != 0 || f != (Floor{}) {
			t.Errorf("Stop before the first interval: %+v, %d samples, %v; want a zero floor, 0, nil", f, n, err)
		}
	})
	t.Run("failing step", func(t *testing.T) {
		// The second run of the first step fails: the samples taken
		// are dropped and the error says what failed.
		var runs atomic.Int64
		failing := func() (time.Duration, error) {
			if runs.Add(1) == 2 {
				return 0, errors.New("no listener")
			}
			return time.Millisecond, nil
		}
		s := startSampler([]func() (time.Duration, error){failing}, time.Millisecond)
		for deadline := time.Now().Add(30 * time.Second); runs.Load() < 2 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		f, n, err := s.Stop()
		if err == nil || err.Error() != "unable to measure the crypto floor during the run: no listener" || n != 0 || f != (Floor{}) {
			t.Errorf("Stop after a failed step: %+v, %d samples, %v; want a zero floor, 0 and the step's error", f, n, err)
		}
		var sum Summary
		sum.setFloorInRun(f, n, err)
		if sum.FloorInRun != nil || sum.FloorInRunError == "" {
			t.Errorf("summary after a failed step: %+v", sum)
		}
	})
	t.Run("refused", func(t *testing.T) {
		if _, err := SampleFloor(newFleet(t, 1, softtpm.ECC)[0], ca, time.Second); err == nil || err.Error() != "the node has no EK certificate" {
			t.Errorf("sampling the EK chain of a node without a certificate: %v", err)
		}
		if _, err := SampleFloor(newFleet(t, 1, softtpm.ECC)[0], nil, 0); err == nil {
			t.Error("sampling every 0 s: no error")
		}
	})
}

// Measuring the EK chain of a node that has no EK certificate, or one from
// another CA, is an error, not a zero.
func TestMeasureFloorEKChainRefused(t *testing.T) {
	ca := newEKCA(t)
	if _, err := MeasureFloor(newFleet(t, 1, softtpm.ECC)[0], ca); err == nil || err.Error() != "the node has no EK certificate" {
		t.Errorf("MeasureFloor of a node without a certificate: %v", err)
	}
	other := newCertFleet(t, 1, softtpm.ECC, newEKCA(t))[0]
	if _, err := MeasureFloor(other, ca); err == nil || !strings.Contains(err.Error(), "the node's EK certificate does not chain to the EK CA") {
		t.Errorf("MeasureFloor of a node of another CA: %v", err)
	}
}

func checkFloorParts(t *testing.T, f Floor, parts []float64) {
	t.Helper()
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

// The summary says how the nodes were trusted: ek_certs in JSON, the EK
// chain in the floor only with EK certificates, a trust line in text.
func TestSummaryTrust(t *testing.T) {
	for _, ekCerts := range []bool{false, true} {
		t.Run(fmt.Sprintf("ek_certs=%v", ekCerts), func(t *testing.T) {
			s := &Summary{Nodes: 1, Key: "ecc", EKCerts: ekCerts, Errors: map[string]int{}}
			if ekCerts {
				s.Floor.EKChainMs = 0.25
			}
			var js, text bytes.Buffer
			if err := s.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			if err := s.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			var got struct {
				EKCerts *bool          `json:"ek_certs"`
				Floor   map[string]any `json:"floor"`
			}
			if err := json.Unmarshal(js.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if _, chain := got.Floor["ek_chain_ms"]; got.EKCerts == nil || *got.EKCerts != ekCerts || chain != ekCerts {
				t.Errorf("JSON %s: want ek_certs %v, floor.ek_chain_ms present %v", js.String(), ekCerts, ekCerts)
			}
			wantTrust, wantChain := "trust            EK hash\n", false
			if ekCerts {
				wantTrust, wantChain = "trust            EK certificate (", true
			}
			if !strings.Contains(text.String(), wantTrust) || strings.Contains(text.String(), "EK chain 0.250") != wantChain {
				t.Errorf("text:\n%s\nwant %q, EK chain shown %v", text.String(), wantTrust, wantChain)
			}
		})
	}
}

// The summary gives the event log's size: event_log_bytes in JSON (0
// without one) and an event log line in text.
func TestSummaryEventLog(t *testing.T) {
	for _, tc := range []struct {
		bytes    int
		wantText string
	}{{0, "event log        none\n"}, {45300, "event log        45300 bytes per attestation\n"}} {
		s := &Summary{Nodes: 1, Key: "ecc", EventLogBytes: tc.bytes, Errors: map[string]int{}}
		var js, text bytes.Buffer
		if err := s.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := json.Unmarshal(js.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if got["event_log_bytes"] != float64(tc.bytes) {
			t.Errorf("JSON %s: want event_log_bytes %d", js.String(), tc.bytes)
		}
		if !strings.Contains(text.String(), tc.wantText) {
			t.Errorf("text:\n%s\nwant %q", text.String(), tc.wantText)
		}
	}
}

// The floor sampled during the run is in both forms when measured, and
// said to be unknown (null in JSON) when the run was too short.
func TestSummaryFloorInRun(t *testing.T) {
	f := Floor{AKVerifyMs: 0.1, MakeCredentialMs: 0.1, ImportBlobMs: 0.1, CertificateMs: 0.2, TLSHandshakeMs: 0.4, TotalMs: 0.9}
	cpu, r := 1.8, 2.0
	for _, tc := range []struct {
		sum      Summary
		wantJSON string
		wantText []string
	}{
		{Summary{FloorInRunSamples: 40, FloorInRun: &f, FloorInRunMs: &f.TotalMs, FloorInRunRatio: &r, BrokerCPUMsPerRelease: &cpu},
			`"floor_in_run_samples":40,"floor_in_run_ms":0.9,"floor_in_run_ratio":2,"floor_in_run":{`,
			[]string{"floor in run     0.900 ms (AK verify 0.100,", ", 40 samples\n", "ratio, in run    2.00 x\n"}},
		{Summary{FloorInRunSamples: 3},
			`"floor_in_run_samples":3,"floor_in_run_ms":null,"floor_in_run_ratio":null,"floor_in_run":null`,
			[]string{"floor in run     unknown (3 samples: run too short)\n", "ratio, in run    unknown x\n"}},
		{Summary{FloorInRunError: "unable to measure the crypto floor during the run: no listener"},
			`"floor_in_run":null,"floor_in_run_error":"unable to measure the crypto floor during the run: no listener"`,
			[]string{"floor in run     unknown: unable to measure the crypto floor during the run: no listener\n"}},
	} {
		js, text := renderSummary(t, tc.sum)
		if !strings.Contains(js, tc.wantJSON) {
			t.Errorf("JSON %s\nwant %s", js, tc.wantJSON)
		}
		for _, w := range tc.wantText {
			if !strings.Contains(text, w) {
				t.Errorf("text:\n%s\nwant %q", text, w)
			}
		}
	}
}

// The nodes' side of the floor is measured for both key types with the
// generator's own steps, every part positive and the total their sum; a
// challenge and credential made for another node's EK are refused by the
// node's activation, and the floor says so instead of timing a failure.
func TestMeasureNodeFloor(t *testing.T) {
	for _, key := range []softtpm.KeyType{softtpm.ECC, softtpm.RSA} {
		t.Run(key.String(), func(t *testing.T) {
			nodes := newFleet(t, 2, key)
			f, err := MeasureNodeFloor(nodes[0])
			if err != nil {
				t.Fatal(err)
			}
			checkFloorParts(t, Floor{TotalMs: f.TotalMs}, []float64{f.ActivateMs, f.QuoteMs, f.OpenMs, f.TLSHandshakeMs})
			other, err := tpmcred.NewKey(nodes[1].EKPublic())
			if err != nil {
				t.Fatal(err)
			}
			_, err = measureNodeFloor(nodes[0], other)
			if err == nil || !strings.HasPrefix(err.Error(), "unable to measure the generator's floor: activate: ") || !errors.Is(err, softtpm.ErrIntegrity) {
				t.Errorf("floor with another node's EK: %v; want the activation's integrity failure", err)
			}
		})
	}
}

// A client whose pinned verification refuses the server's certificate
// (another CA) fails the floor's handshake with the verification's error;
// the server's own CA passes.
func TestLoopbackHandshakeRefusesOtherCA(t *testing.T) {
	_, serverCfg, err := floorCA()
	if err != nil {
		t.Fatal(err)
	}
	_, otherCfg, err := floorCA()
	if err != nil {
		t.Fatal(err)
	}
	for _, timeClient := range []bool{true, false} {
		cfg := pinVerified(&tls.Config{RootCAs: otherCfg.RootCAs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
		if _, err := loopbackHandshake(serverCfg, cfg, timeClient); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Errorf("client timed %v: handshake with a server of another CA: %v", timeClient, err)
		}
		cfg = pinVerified(&tls.Config{RootCAs: serverCfg.RootCAs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
		if cpu, err := loopbackHandshake(serverCfg, cfg, timeClient); err != nil || cpu <= 0 {
			t.Errorf("client timed %v: handshake with the server's CA: %v CPU, %v", timeClient, cpu, err)
		}
	}
}

// The floor's handshake counts the CPU of the side timed, not the other
// side's: a server or a client that spins 200 ms of CPU on the other side
// adds nothing to it, and the same spin on the timed side is counted.
func TestLoopbackHandshakeTimesOneSide(t *testing.T) {
	_, serverCfg, err := floorCA()
	if err != nil {
		t.Fatal(err)
	}
	const spin = 200 * time.Millisecond
	busy := func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for start, _ := threadCPU(); ; {
			if now, _ := threadCPU(); now-start >= spin {
				return
			}
		}
	}
	slowServer := serverCfg.Clone()
	slowServer.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { busy(); return nil, nil }
	client := &tls.Config{RootCAs: serverCfg.RootCAs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	slowClient := client.Clone()
	slowClient.VerifyConnection = func(tls.ConnectionState) error { busy(); return nil }
	for _, tc := range []struct {
		name           string
		server, client *tls.Config
		timeClient     bool
		counted        bool
	}{
		{"client timed, server spins", slowServer, client, true, false},
		{"server timed, client spins", serverCfg, slowClient, false, false},
		{"client timed and spins", serverCfg, slowClient, true, true},
		{"server timed and spins", slowServer, client, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cpu, err := loopbackHandshake(tc.server, tc.client, tc.timeClient)
			if err != nil {
				t.Fatal(err)
			}
			if counted := cpu >= spin; counted != tc.counted || cpu <= 0 {
				t.Errorf("handshake CPU %v; want the spin of %v counted: %v", cpu, spin, tc.counted)
			}
		})
	}
}

// renderSummary is s as JSON (compact) and as text.
func renderSummary(t *testing.T, s Summary) (string, string) {
	t.Helper()
	s.Errors = map[string]int{}
	var js, text, compact bytes.Buffer
	if err := s.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := json.Compact(&compact, js.Bytes()); err != nil {
		t.Fatal(err)
	}
	return compact.String(), text.String()
}

// The generator's floor, its ratio, the CPU shares and the wall-time
// floor are in both forms; the wall-time floor counts the releases made,
// and is unknown (null), not zero, without the broker's process or
// without a release.
func TestSummaryGeneratorFloor(t *testing.T) {
	nf := NodeFloor{ActivateMs: 0.05, QuoteMs: 0.05, OpenMs: 0.1, TLSHandshakeMs: 0.3, TotalMs: 0.5}
	broker, gen := 1.5, 1.0
	summary := func(released int, sameMachine bool) Summary {
		s := Summary{Nodes: 10000, Released: released, CPUs: 2, Floor: Floor{TotalMs: 0.7}, GeneratorFloor: nf,
			BrokerCPUMsPerRelease: &broker, GeneratorCPUMsPerRelease: &gen, brokerHere: sameMachine}
		s.fill(make([]time.Duration, released))
		s.setShares()
		return s
	}
	for _, tc := range []struct {
		name     string
		sum      Summary
		wantJSON []string
		wantText []string
	}{
		{"broker on this machine", summary(8000, true),
			[]string{`"generator_floor_ms":0.5,"generator_floor_ratio":2,"generator_floor":{"activate_ms":0.05,"quote_ms":0.05,"open_ms":0.1,"tls_handshake_ms":0.3,"total_ms":0.5},"cpus":2,"broker_cpu_share":0.6,"wall_seconds_floor":4.8`},
			[]string{"generator floor  0.500 ms (activate 0.050, quote 0.050, open 0.100, TLS 1.3 client handshake 0.300)\n",
				"generator ratio  2.00 x\n", "CPU share        broker 60%, generator 40%\n",
				"wall-time floor  4.80 s: 8000 releases at the broker's and the generator's floors on 2 CPUs\n"}},
		{"broker process unknown", summary(8000, false),
			[]string{`"generator_floor_ratio":2,`, `"broker_cpu_share":null,"wall_seconds_floor":null`},
			[]string{"wall-time floor  unknown (no release, or the broker's process not known here)\n", "CPU share        unknown\n"}},
		{"nothing released", summary(0, true),
			[]string{`"wall_seconds_floor":null`},
			[]string{"wall-time floor  unknown (no release, or the broker's process not known here)\n"}},
		{"no CPU figures", Summary{GeneratorFloor: nf},
			[]string{`"generator_floor_ratio":null,`, `"broker_cpu_share":null,"wall_seconds_floor":null`},
			[]string{"generator ratio  unknown x\n", "CPU share        unknown\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, text := renderSummary(t, tc.sum)
			for _, w := range tc.wantJSON {
				if !strings.Contains(js, w) {
					t.Errorf("JSON %s\nwant %s", js, w)
				}
			}
			for _, w := range tc.wantText {
				if !strings.Contains(text, w) {
					t.Errorf("text:\n%s\nwant %q", text, w)
				}
			}
		})
	}
}

// cpusOf counts the CPUs of the union of processes' affinity masks:
// two processes each held to one CPU of their own make two, one makes
// one; without a process, or for one that is gone, this process's CPUs.
func TestCPUsOf(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs")
	}
	var pids []int
	for cpu := range 2 {
		cmd := exec.Command("sleep", "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(cmd.Process.Pid, &set); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, cmd.Process.Pid)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pids []int
		want int
	}{
		{pids[:1], 1}, {pids[1:], 1}, {pids, 2}, {[]int{pids[0], pids[0]}, 1},
		{nil, runtime.NumCPU()}, {[]int{dead.Process.Pid}, runtime.NumCPU()},
	} {
		if got := cpusOf(tc.pids...); got != tc.want {
			t.Errorf("cpusOf(%v) = %d, want %d", tc.pids, got, tc.want)
		}
	}
}

// A broker on another machine is measured through its metrics endpoint:
// its CPU per release and highest resident memory come from its process
// collector, the summary says so, and the wall-time floor (this machine's
// CPUs) is not given.
func TestDriveBrokerMetrics(t *testing.T) {
	fleet := newFleet(t, 20, softtpm.ECC)
	r, _ := startBrokerWith(t, fleet, nil, func(c *broker.Config) { c.MetricsListen = "127.0.0.1:0" })
	url := "http://" + r.MetricsAddr() + "/metrics"
	sum, err := Drive(context.Background(), fleet, Opts{Concurrency: 4, Addr: r.Addr(), CAPEM: r.CA.BundlePEM(), BrokerMetrics: url})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Released != 20 || len(sum.Errors) != 0 {
		t.Fatalf("released %d, errors %v; want 20, none", sum.Released, sum.Errors)
	}
	if sum.BrokerFigures != url || sum.BrokerCPUMsPerRelease == nil || *sum.BrokerCPUMsPerRelease <= 0 ||
		sum.BrokerPeakRSSBytes == nil || *sum.BrokerPeakRSSBytes <= 0 || sum.FloorRatio == nil {
		t.Errorf("broker figures %q, CPU %v, peak RSS %v, floor ratio %v; want all from %s", sum.BrokerFigures,
			sum.BrokerCPUMsPerRelease, sum.BrokerPeakRSSBytes, sum.FloorRatio, url)
	}
	if sum.WallSecondsFloor != nil || sum.StoreBytesPerRelease != nil || sum.BrokerCPUShare != nil || sum.FloorInRunRatio != nil {
		t.Errorf("wall-time floor %v, store growth %v, CPU share %v, in-run ratio %v for a broker known only by its metrics; want none",
			sum.WallSecondsFloor, sum.StoreBytesPerRelease, sum.BrokerCPUShare, sum.FloorInRunRatio)
	}
	_, text := renderSummary(t, *sum)
	if !strings.Contains(text, "broker figures   from its metrics at "+url+" (the floors are this machine's)\n") {
		t.Errorf("text:\n%s\nwant where the broker's figures come from", text)
	}
}

// A broker known only by its metrics that restarts during the run, or
// whose metrics cannot be read after it, loses its figures, which the
// summary says, and the run's other figures stand.
func TestDriveBrokerMetricsLost(t *testing.T) {
	fleet := newFleet(t, 6, softtpm.ECC)
	r, _ := startBroker(t, fleet)
	for _, tc := range []struct {
		name string
		page func(n int64) (int, string)
		want string
	}{
		{"restarted", func(n int64) (int, string) {
			return http.StatusOK, processMetrics(float64(n), 1e6, float64(1700000000+n))
		},
			"the broker restarted during the run (its process start time changed)"},
		{"gone", func(n int64) (int, string) {
			if n > 1 {
				return http.StatusServiceUnavailable, ""
			}
			return http.StatusOK, processMetrics(1, 1e6, 1700000000)
		}, "unable to read the broker's metrics at "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				code, body := tc.page(n.Add(1))
				w.WriteHeader(code)
				io.WriteString(w, body)
			}))
			defer srv.Close()
			sum, err := Drive(context.Background(), fleet, Opts{Concurrency: 2, Addr: r.Addr(), CAPEM: r.CA.BundlePEM(), BrokerMetrics: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			if sum.Released != 6 || sum.BrokerFigures != "" || sum.BrokerCPUMsPerRelease != nil || sum.BrokerPeakRSSBytes != nil ||
				!strings.Contains(sum.BrokerFiguresError, tc.want) {
				t.Errorf("released %d, broker figures %q (%q), CPU %v, RSS %v; want 6 released, no broker figures and %q",
					sum.Released, sum.BrokerFigures, sum.BrokerFiguresError, sum.BrokerCPUMsPerRelease, sum.BrokerPeakRSSBytes, tc.want)
			}
			if _, text := renderSummary(t, *sum); !strings.Contains(text, "broker figures   unknown: "+sum.BrokerFiguresError+"\n") {
				t.Errorf("text:\n%s\nwant why the broker's figures are unknown", text)
			}
		})
	}
}

// A metrics endpoint that is not the broker's, or whose figures cannot be
// read, fails the scrape with what is wrong; no figure is made up.
func TestScrapeBrokerRefused(t *testing.T) {
	good := processMetrics(12.5, 4.2e7, 1700000000)
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"not found", http.StatusNotFound, "", "HTTP 404 Not Found"},
		{"a redirect", http.StatusFound, good, "HTTP 302 Found"},
		{"no process figures", http.StatusOK, "# TYPE up gauge\nup 1\n", "no process_cpu_seconds_total, process_resident_memory_bytes or process_start_time_seconds"},
		{"no start time", http.StatusOK, strings.Replace(good, "process_start_time_seconds", "other_start_time_seconds", 2), "no process_cpu_seconds_total"},
		{"not the text format", http.StatusOK, "<html>metrics</html>\n", "text format parsing error"},
		{"two series", http.StatusOK, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total{a=\"1\"} 1\n" +
			"process_cpu_seconds_total{a=\"2\"} 2\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1\n",
			"process_cpu_seconds_total has 2 series, want 1"},
		{"a histogram", http.StatusOK, "# TYPE process_cpu_seconds_total histogram\nprocess_cpu_seconds_total_bucket{le=\"+Inf\"} 1\n" +
			"process_cpu_seconds_total_sum 1\nprocess_cpu_seconds_total_count 1\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1\n",
			"process_cpu_seconds_total is a histogram, want a counter"},
		{"CPU a gauge", http.StatusOK, strings.Replace(good, "process_cpu_seconds_total counter", "process_cpu_seconds_total gauge", 1),
			"process_cpu_seconds_total is a gauge, want a counter"},
		{"negative", http.StatusOK, strings.Replace(good, " 12.5\n", " -1\n", 1), "process_cpu_seconds_total is -1"},
		{"not a number", http.StatusOK, strings.Replace(good, " 12.5\n", " NaN\n", 1), "process_cpu_seconds_total is NaN"},
		{"infinite", http.StatusOK, strings.Replace(good, " 12.5\n", " +Inf\n", 1), "process_cpu_seconds_total is +Inf"},
		{"past a duration", http.StatusOK, strings.Replace(good, " 12.5\n", " 1e10\n", 1), "process_cpu_seconds_total is 1e+10"},
		{"too large", http.StatusOK, good + "# " + strings.Repeat("x", maxMetricsBytes) + "\n", "over 8388608 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if tc.status == http.StatusFound {
					w.Header().Set("Location", "http://127.0.0.1:1/metrics")
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			got, err := scrapeBroker(context.Background(), srv.URL)
			if err == nil || !strings.HasPrefix(err.Error(), "unable to read the broker's metrics at "+srv.URL+": ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("scrape: %+v, %v; want %q", got, err, tc.want)
			}
		})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, good) }))
	defer srv.Close()
	if got, err := scrapeBroker(context.Background(), srv.URL); err != nil || got != (processFigures{12500 * time.Millisecond, 42e6, 1700000000}) {
		t.Errorf("scrape of good figures: %+v, %v; want 12.5s, 42000000, its start", got, err)
	}
	// A password in the URL is not repeated in errors.
	u := strings.Replace(srv.URL, "http://", "http://loadgen:secret@", 1) + "/none"
	srv.Config.Handler = http.NotFoundHandler()
	if _, err := scrapeBroker(context.Background(), u); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("scrape with a password: %v; want an error without it", err)
	}
}

// processMetrics is a metrics page with the broker's process figures.
func processMetrics(cpu, rss, start float64) string {
	return fmt.Sprintf("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %v\n"+
		"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %v\n"+
		"# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %v\n", cpu, rss, start)
}

// The broker's memory sampled on its metrics endpoint keeps the highest
// reading; failed readings, and readings of another process (a restart),
// are counted and the first reported, not read as figures.
func TestPollRSS(t *testing.T) {
	var n atomic.Int64
	start := atomic.Int64{}
	start.Store(1700000000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		rss := []float64{10, 50, 20}[n.Add(1)%3]
		io.WriteString(w, processMetrics(1, rss, float64(start.Load())))
	}))
	defer srv.Close()
	first := processFigures{time.Second, 1, 1700000000}
	waitFor := func(min int64) {
		for n.Load() < min {
			time.Sleep(time.Millisecond)
		}
	}
	p := pollRSS(srv.URL, time.Millisecond, first)
	waitFor(6)
	if peak, failed, err := p.Stop(); peak != 50 || failed != 0 || err != nil {
		t.Errorf("peak %d, %d failed, %v; want 50, none", peak, failed, err)
	}
	start.Store(1700000100)
	p = pollRSS(srv.URL, time.Millisecond, first)
	waitFor(n.Load() + 3)
	if peak, failed, err := p.Stop(); peak != 1 || failed == 0 || !errors.Is(err, errRestarted) {
		t.Errorf("after a restart: peak %d, %d failed, %v; want the first reading, failures, the restart", peak, failed, err)
	}
	srv.Close()
	p = pollRSS(srv.URL, time.Millisecond, first)
	for {
		p.mu.Lock()
		failed := p.failed
		p.mu.Unlock()
		if failed > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if _, _, err := p.Stop(); err == nil || !strings.Contains(err.Error(), "unable to read the broker's metrics at "+srv.URL) {
		t.Errorf("polling a closed endpoint: %v; want the scrape's error", err)
	}
}
