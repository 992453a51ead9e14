package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/issue"
)

// TestBootstrapEKIntermediatesFlag checks that a bad --ek-intermediates file
// is a flag problem, found before the TPM or the broker is touched, naming
// the file.
func TestBootstrapEKIntermediatesFlag(t *testing.T) {
	dir := t.TempDir()
	ca := testCA(t)
	bad := filepath.Join(dir, "inter.pem")
	if err := os.WriteFile(bad, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"bootstrap", "--tpm", "tcp://127.0.0.1:1", "--broker", "127.0.0.1:1", "--ca", ca,
		"--out", filepath.Join(dir, "out"), "--event-log", "none", "--ek-intermediates", bad}, &stdout, &stderr)
	want := "keybroker-agent bootstrap: --ek-intermediates: EK intermediates " + bad + ": holds no PEM certificate\n" +
		"Run 'keybroker-agent bootstrap --help' for usage.\n"
	if code != 2 || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want 2, %q", code, stderr.String(), want)
	}
	if strings.Contains(stderr.String(), "failed at") {
		t.Error("bootstrap went on to a stage after a bad --ek-intermediates")
	}
}

func TestRunFlags(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("unused"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := testCA(t)
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "missing broker and CA", args: []string{"run"}, wantCode: 2,
			wantStderr: "keybroker-agent run: missing required flag --broker\nkeybroker-agent run: missing required flag --ca\n"},
		{name: "negative grace", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--grace", "-1s"}, wantCode: 2,
			wantStderr: "run: --grace must be ≥ 0, not -1s\n"},
		{name: "retry-max too short", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--retry-max", "10ms"}, wantCode: 2,
			wantStderr: "run: --retry-max must be ≥ 1s, not 10ms\n"},
		{name: "CA without PEM", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", notPEM}, wantCode: 2,
			wantStderr: "run: --ca: the broker CA bundle " + notPEM + " holds no PEM certificate\n"},
		{name: "broker without port", args: []string{"run", "--broker", "broker.example.com", "--ca", ca}, wantCode: 2,
			wantStderr: `run: --broker "broker.example.com": want HOST:PORT`},
		{name: "identity log on a resettable PCR", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--identity-log-dir", "/tmp/x", "--identity-log-pcr", "16"}, wantCode: 2,
			wantStderr: "run: --identity-log-pcr: PCR 16 cannot hold the identity record: use one of 10-15\n"},
		{name: "identity log on a PCR a dynamic launch resets", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--identity-log-dir", "/tmp/x", "--identity-log-pcr", "17"}, wantCode: 2,
			wantStderr: "run: --identity-log-pcr: PCR 17 cannot hold the identity record: use one of 10-15\n"},
		{name: "vault-login identity log on a PCR a dynamic launch resets", args: []string{"vault-login", "--vault-addr", "https://127.0.0.1:1", "--role", "r", "--identity-log-dir", "/tmp/x", "--identity-log-pcr", "20"}, wantCode: 2,
			wantStderr: "vault-login: --identity-log-pcr: PCR 20 cannot hold the identity record: use one of 10-15\n"},
		{name: "metrics address without port", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--metrics-listen", "localhost"}, wantCode: 2,
			wantStderr: `run: --metrics-listen: "localhost": want HOST:PORT, such as 127.0.0.1:9465`},
		{name: "metrics port by name", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--metrics-listen", "127.0.0.1:http"}, wantCode: 2,
			wantStderr: `run: --metrics-listen: "127.0.0.1:http": port "http" is not a number from 0 to 65535`},
		{name: "unknown flag", args: []string{"run", "--frobnicate"}, wantCode: 2,
			wantStderr: "keybroker-agent run: unknown flag: --frobnicate\nRun 'keybroker-agent run --help' for usage.\n"},
		{name: "bad duration", args: []string{"run", "--grace", "soon"}, wantCode: 2,
			wantStderr: `invalid argument "soon" for "--grace" flag`},
		{name: "policy counter outside the owner range", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--pcr-policy-counter", "0x01800000"}, wantCode: 2,
			wantStderr: `run: --pcr-policy-counter: "0x01800000": want none, default or an owner-range NV index 0x01000000..0x013fffff`},
		{name: "policy counter not hex", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--pcr-policy-counter", "16797506"}, wantCode: 2,
			wantStderr: `run: --pcr-policy-counter: "16797506": want none, default or an owner-range NV index`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.wantCode, tc.wantStderr)
			}
			if stdout.Len() > 0 {
				t.Errorf("a refused command line printed to stdout: %q", stdout.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"run", "--help"}, &stdout, &stderr); code != 0 || stderr.Len() > 0 ||
		!strings.Contains(stdout.String(), "--grace duration") || !strings.Contains(stdout.String(), "--metrics-listen string") || !strings.Contains(stdout.String(), `(default "/run/keybroker/agent.sock")`) {
		t.Errorf("run --help: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
}

// TestRunFailsAtTPM checks that a first attestation that cannot start fails
// with the stage's name, and leaves no socket behind.
func TestRunFailsAtTPM(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "run", "agent.sock")
	var stdout, stderr bytes.Buffer
	code := run([]string{"run", "--tpm", "tcp://127.0.0.1:1", "--broker", "127.0.0.1:1", "--ca", testCA(t),
		"--event-log", "none", "--workload-socket", socket}, &stdout, &stderr)
	if code != 1 || !strings.HasPrefix(stderr.String(), "run failed at tpm: unable to connect to TPM at 127.0.0.1:1") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestRunMetricsListenBusy checks that run stops, before it touches the TPM
// or the socket, when it cannot serve the metrics it was asked for.
func TestRunMetricsListenBusy(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	socket := filepath.Join(t.TempDir(), "run", "agent.sock")
	var stdout, stderr bytes.Buffer
	code := run([]string{"run", "--tpm", "tcp://127.0.0.1:1", "--broker", "127.0.0.1:1", "--ca", testCA(t),
		"--event-log", "none", "--workload-socket", socket, "--metrics-listen", busy.Addr().String()}, &stdout, &stderr)
	if want := "run: unable to listen on " + busy.Addr().String() + " for metrics: "; code != 1 || !strings.HasPrefix(stderr.String(), want) {
		t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr.String(), want)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("socket made: %v", err)
	}
}

// testCA writes a CA certificate file.
func testCA(t *testing.T) string {
	t.Helper()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, ca.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
