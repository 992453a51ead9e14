package main

import (
	"encoding/json"
	"os"
	"path/filepath"
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
		"broker_cpu_ms_per_release", "broker_peak_rss_bytes", "store_bytes_per_release", "floor_ms", "floor_ratio"} {
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
}

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
		{"ca with serve", []string{"--serve", "--ca", "ca.pem"}, "--ca and --broker-pid go with --addr, not --serve"},
		{"bad key", []string{"--serve", "--key", "dsa"}, `--key: unknown key type "dsa": want ecc or rsa`},
		{"no nodes", []string{"--serve", "--nodes", "0"}, "--nodes must be at least 1"},
		{"no concurrency", []string{"--serve", "--concurrency", "-1"}, "--concurrency must be at least 1"},
		{"argument", []string{"--serve", "extra"}, `unexpected arguments ["extra"]`},
		{"bad number", []string{"--serve", "--nodes", "many"}, `invalid argument "many"`},
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

func TestLoadgenHelp(t *testing.T) {
	code, stdout, stderr := runCmd(t, "loadgen", "--help")
	if code != 0 || stderr != "" || strings.Count(stdout, "Usage:") != 1 {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	for _, flag := range []string{"--nodes", "--concurrency", "--key", "--serve", "--addr", "--ca", "--broker-pid", "--print-ek-hashes", "--json", "floor_ratio"} {
		if !strings.Contains(stdout, flag) {
			t.Errorf("help does not mention %s", flag)
		}
	}
}
