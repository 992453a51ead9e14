package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/issue"
)

// asKeybroker makes the test binary run as keybroker when set: loadgen
// --serve starts os.Executable() serve, which is this binary in tests.
const asKeybroker = "KEYBROKER_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asKeybroker) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// loadgen --serve starts a broker process, releases to every node and
// prints the JSON summary with every promised key: no errors, one receipt
// per node, the broker's CPU, memory and store growth and the floor.
func TestLoadgenServeJSON(t *testing.T) {
	t.Setenv(asKeybroker, "1")
	code, stdout, stderr := runCmd(t, "loadgen", "--serve", "--nodes", "20", "--concurrency", "4", "--json")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	var sum map[string]any
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, stdout)
	}
	for _, k := range []string{"nodes", "concurrency", "errors", "wall_seconds", "releases_per_second", "p50_ms", "p95_ms", "p99_ms",
		"broker_cpu_ms_per_release", "generator_cpu_ms_per_release", "broker_peak_rss_bytes", "store_bytes_per_release", "floor_ms", "floor_ratio",
		"floor_threads", "floor_saturated_ms", "floor_saturated_ratio", "floor_saturated", "floor_in_run_samples",
		"generator_floor_ms", "generator_floor_ratio", "generator_floor", "cpus", "broker_cpu_share", "wall_seconds_floor"} {
		v, ok := sum[k]
		if !ok || v == nil {
			t.Errorf("summary has no %s: %s", k, stdout)
		}
	}
	if errs, ok := sum["errors"].(map[string]any); !ok || len(errs) != 0 {
		t.Errorf("errors %v, want an empty object", sum["errors"])
	}
	if sum["nodes"] != 20.0 || sum["released"] != 20.0 || sum["receipts"] != 20.0 {
		t.Errorf("nodes %v, released %v, receipts %v; want 20 each", sum["nodes"], sum["released"], sum["receipts"])
	}
	if cpu, _ := sum["broker_cpu_ms_per_release"].(float64); cpu <= 0 {
		t.Errorf("broker CPU per release %v, want > 0", cpu)
	}
	if cpu, _ := sum["generator_cpu_ms_per_release"].(float64); cpu <= 0 {
		t.Errorf("generator CPU per release %v, want > 0", cpu)
	}
	floor, _ := sum["floor"].(map[string]any)
	if _, chain := floor["ek_chain_ms"]; sum["ek_certs"] != false || chain {
		t.Errorf("ek_certs %v, floor %v; want false and no ek_chain_ms", sum["ek_certs"], floor)
	}
	cpu, _ := sum["broker_cpu_ms_per_release"].(float64)
	for _, k := range []string{"floor", "floor_saturated"} {
		total, _ := sum[k+"_ms"].(float64)
		f, _ := sum[k].(map[string]any)
		r, _ := sum[k+"_ratio"].(float64)
		if total <= 0 || f["total_ms"] != total || r <= 0 || math.Abs(r-cpu/total) > 1e-9 {
			t.Errorf("%s_ms %v, %s %v, %s_ratio %v: want a positive total and the ratio broker CPU / total", k, total, k, f, k, r)
		}
	}
	if threads, _ := sum["floor_threads"].(float64); threads < 1 {
		t.Errorf("floor_threads %v; want the generator's CPUs", sum["floor_threads"])
	}
	// The broker's share of the CPU both used, and the least wall time
	// of the run with both at their floors on this machine's CPUs.
	gen, _ := sum["generator_cpu_ms_per_release"].(float64)
	if share, _ := sum["broker_cpu_share"].(float64); math.Abs(share-cpu/(cpu+gen)) > 1e-9 {
		t.Errorf("broker_cpu_share %v, want broker / (broker + generator) CPU = %v", share, cpu/(cpu+gen))
	}
	floorMs, _ := sum["floor_ms"].(float64)
	genFloor, _ := sum["generator_floor_ms"].(float64)
	cpus, _ := sum["cpus"].(float64)
	if wall, _ := sum["wall_seconds_floor"].(float64); genFloor <= 0 || cpus < 1 || math.Abs(wall-20*(floorMs+genFloor)/cpus/1000) > 1e-9 {
		t.Errorf("wall_seconds_floor %v, generator_floor_ms %v, cpus %v: want nodes × (floor + generator floor) / CPUs", wall, genFloor, cpus)
	}
}

// loadgen --serve --ek-certs gives the nodes EK certificates from a fresh
// EK CA and starts a broker trusting only that CA: every node released,
// one receipt each, ek_certs true and the EK chain in the floor; progress
// and the text summary name the trust.
func TestLoadgenServeEKCerts(t *testing.T) {
	t.Setenv(asKeybroker, "1")
	prof := filepath.Join(t.TempDir(), "loadgen.pprof")
	code, stdout, stderr := runCmd(t, "loadgen", "--serve", "--nodes", "24", "--concurrency", "4", "--ek-certs", "--json", "--cpuprofile", prof)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	var sum map[string]any
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, stdout)
	}
	if errs, ok := sum["errors"].(map[string]any); !ok || len(errs) != 0 {
		t.Errorf("errors %v, want an empty object", sum["errors"])
	}
	if sum["ek_certs"] != true || sum["released"] != 24.0 || sum["receipts"] != 24.0 {
		t.Errorf("ek_certs %v, released %v, receipts %v; want true, 24, 24", sum["ek_certs"], sum["released"], sum["receipts"])
	}
	floor, _ := sum["floor"].(map[string]any)
	if chain, _ := floor["ek_chain_ms"].(float64); chain <= 0 || sum["floor_ms"] != floor["total_ms"] {
		t.Errorf("floor %v, floor_ms %v: want ek_chain_ms > 0 in the total", floor, sum["floor_ms"])
	}
	if !strings.Contains(stderr, "trusted by EK certificate") {
		t.Errorf("progress does not name the trust:\n%s", stderr)
	}
	checkProfile(t, prof)
}

// checkProfile checks that path holds a CPU profile: pprof's gzipped
// protocol buffer, whose samples are CPU time (a short run may have
// none).
func checkProfile(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("no CPU profile: %v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("the CPU profile is not gzipped: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("the CPU profile does not decompress: %v", err)
	}
	if !bytes.Contains(raw, []byte("cpu")) || !bytes.Contains(raw, []byte("nanoseconds")) {
		t.Errorf("the profile (%d bytes) is not of CPU time", len(raw))
	}
}

// With --addr, --ek-certs and --ek-ca-out, the EK CA's root is written to
// the file and loadgen waits for a line on stdin, telling the operator the
// ek_ca block to add, before it drives the nodes.
func TestLoadgenAddrEKCAOut(t *testing.T) {
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caPath, ekCAPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ek-ca.pem")
	if err := os.WriteFile(caPath, ca.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	o := loadgenOpts{nodes: 2, concurrency: 2, key: "ecc", addr: "127.0.0.1:1", caPath: caPath, ekCerts: true, ekCAOut: ekCAPath}
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	waited := false
	stdin := readerFunc(func(p []byte) (int, error) {
		waited = true
		raw, err := os.ReadFile(ekCAPath)
		if err != nil {
			t.Errorf("waiting for the operator before the EK CA is written: %v", err)
		}
		if block, _ := pem.Decode(raw); block == nil {
			t.Errorf("the EK CA file holds no PEM: %q", raw)
		} else if c, err := x509.ParseCertificate(block.Bytes); err != nil || !c.IsCA {
			t.Errorf("the EK CA file holds no CA certificate (%v)", err)
		}
		if want := `ek_ca "loadgen" { roots = [` + strconv.Quote(ekCAPath) + `] }`; !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr does not tell the operator %s:\n%s", want, stderr.String())
		}
		return copy(p, "\n"), io.EOF
	})
	code := runLoadgen(context.Background(), o, stdin, &stdout, &stderr)
	if !waited {
		t.Error("loadgen did not wait for the operator")
	}
	if code != 1 || !strings.Contains(stdout.String(), "errors           Unavailable 2") ||
		!strings.Contains(stdout.String(), "trust            EK certificate") {
		t.Errorf("exit %d, stdout:\n%s\nwant exit 1, 2 Unavailable, the EK certificate trust", code, stdout.String())
	}
}

type readerFunc func(p []byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// Against a broker that is not there, every node fails with Unavailable,
// the summary says so and loadgen exits 1.
func TestLoadgenAddrUnreachable(t *testing.T) {
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caPath, ca.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ := runCmd(t, "loadgen", "--addr", "127.0.0.1:1", "--ca", caPath, "--nodes", "3", "--concurrency", "3")
	if code != 1 || !strings.Contains(stdout, "errors           Unavailable 3") || !strings.Contains(stdout, "released         0 in") {
		t.Errorf("exit %d, stdout:\n%s\nwant exit 1, 0 released, 3 Unavailable", code, stdout)
	}
	// Its metrics endpoint, named by --broker-metrics, is read before the
	// run: not there, nothing is driven.
	code, stdout, stderr := runCmd(t, "loadgen", "--addr", "127.0.0.1:1", "--ca", caPath, "--nodes", "3", "--broker-metrics", "http://127.0.0.1:1/metrics")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "unable to read the broker's metrics at http://127.0.0.1:1/metrics: ") {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant exit 1, no summary, the metrics' error", code, stdout, stderr)
	}
}

func TestLoadgenUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no target", nil, "--serve or --addr is required"},
		{"both targets", []string{"--serve", "--addr", "127.0.0.1:1"}, "--serve and --addr are exclusive"},
		{"addr without ca", []string{"--addr", "127.0.0.1:1"}, "--ca is required with --addr"},
		{"ca with serve", []string{"--serve", "--ca", "ca.pem"}, "--ca, --broker-pid and --broker-metrics go with --addr, not --serve"},
		{"metrics with serve", []string{"--serve", "--broker-metrics", "http://127.0.0.1:9464/metrics"}, "--ca, --broker-pid and --broker-metrics go with --addr, not --serve"},
		{"metrics and pid", []string{"--addr", "127.0.0.1:1", "--ca", "ca.pem", "--broker-pid", "1", "--broker-metrics", "http://127.0.0.1:9464/metrics"},
			"--broker-pid and --broker-metrics are exclusive: the process id is for a broker on this machine"},
		{"metrics not a URL", []string{"--addr", "127.0.0.1:1", "--ca", "ca.pem", "--broker-metrics", "127.0.0.1:9464"},
			`--broker-metrics: "127.0.0.1:9464" is not an http or https URL with a host`},
		{"bad key", []string{"--serve", "--key", "dsa"}, `--key: unknown key type "dsa": want ecc or rsa`},
		{"no nodes", []string{"--serve", "--nodes", "0"}, "--nodes must be at least 1"},
		{"no concurrency", []string{"--serve", "--concurrency", "-1"}, "--concurrency must be at least 1"},
		{"argument", []string{"--serve", "extra"}, `unexpected arguments ["extra"]`},
		{"bad number", []string{"--serve", "--nodes", "many"}, `invalid argument "many"`},
		{"ek-ca-out without ek-certs", []string{"--serve", "--ek-ca-out", "ek.pem"}, "--ek-ca-out goes with --ek-certs"},
		{"addr ek-certs without ek-ca-out", []string{"--addr", "127.0.0.1:1", "--ca", "ca.pem", "--ek-certs"}, "--ek-ca-out is required with --addr and --ek-certs"},
		{"ek-certs and hashes", []string{"--serve", "--ek-certs", "--print-ek-hashes"}, "--print-ek-hashes and --ek-certs are exclusive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, append([]string{"loadgen"}, tt.args...)...)
			if code != 2 || stdout != "" || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and %q", code, stdout, stderr, tt.want)
			}
		})
	}
}

// corpusLogDir holds the broker's corpus of real event logs (origins in
// its README).
const corpusLogDir = "../../broker/verify/testdata/eventlogs"

// loadgen --serve --event-log: every node sends a real machine's event log
// and quotes what it replays to; the broker, whose policy then requires
// eventlog.present, releases to every node; the summary gives the log's
// size.
func TestLoadgenServeEventLog(t *testing.T) {
	t.Setenv(asKeybroker, "1")
	path := filepath.Join(corpusLogDir, "ubuntu-2104-no-secure-boot.bin")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd(t, "loadgen", "--serve", "--nodes", "6", "--concurrency", "3", "--event-log", path, "--json")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	var sum map[string]any
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, stdout)
	}
	if sum["event_log_bytes"] != float64(fi.Size()) || sum["released"] != 6.0 || sum["receipts"] != 6.0 {
		t.Errorf("event_log_bytes %v, released %v, receipts %v; want %d, 6, 6", sum["event_log_bytes"], sum["released"], sum["receipts"], fi.Size())
	}
	if want := fmt.Sprintf("event log of %d bytes", fi.Size()); !strings.Contains(stderr, want) {
		t.Errorf("progress does not say %q:\n%s", want, stderr)
	}
}

// A file that is not an event log the nodes can boot from is refused as a
// usage error (exit 2) naming the file and what is wrong, before any node
// is made.
func TestLoadgenEventLogRefused(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("this is not an event log\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.bin")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sha1Log := filepath.Join(corpusLogDir, "debian-10.bin")
	tests := []struct {
		name, path, want string
	}{
		{"text", text, "--event-log: " + text + ": not a TCG event log: event 0: record is truncated"},
		{"empty", empty, "--event-log: " + empty + ": not a TCG event log: the event log is empty"},
		{"SHA-1 log", sha1Log, "--event-log: " + sha1Log + ": the event log has no sha256 digests (it has sha1)"},
		{"missing", filepath.Join(dir, "nope.bin"), "--event-log: open " + filepath.Join(dir, "nope.bin") + ": no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, "loadgen", "--serve", "--event-log", tt.path)
			if code != 2 || stdout != "" || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and %q", code, stdout, stderr, tt.want)
			}
		})
	}
}

func TestLoadgenHelp(t *testing.T) {
	code, stdout, stderr := runCmd(t, "loadgen", "--help")
	if code != 0 || stderr != "" || strings.Count(stdout, "Usage:") != 1 {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	for _, flag := range []string{"--nodes", "--concurrency", "--key", "--serve", "--addr", "--ca", "--broker-pid", "--broker-metrics", "broker_figures", "--print-ek-hashes", "--ek-certs", "--ek-ca-out", "--event-log", "--json", "floor_ratio", "ek_chain_ms", "event_log_bytes"} {
		if !strings.Contains(stdout, flag) {
			t.Errorf("help does not mention %s", flag)
		}
	}
}
