package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/issue"
)

// TestBootstrapEKIntermediatesFlag checks that a bad --ek-intermediates file
// fails before the TPM or the broker is touched, naming the file.
func TestBootstrapEKIntermediatesFlag(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	bad := filepath.Join(dir, "inter.pem")
	for path, content := range map[string]string{ca: "unused", bad: "not PEM"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"bootstrap", "--tpm", "tcp://127.0.0.1:1", "--broker", "127.0.0.1:1", "--ca", ca,
		"--out", filepath.Join(dir, "out"), "--event-log", "none", "--ek-intermediates", bad}, &stdout, &stderr)
	if want := "bootstrap: EK intermediates " + bad + ": holds no PEM certificate\n"; code != 1 || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want 1, %q", code, stderr.String(), want)
	}
	if strings.Contains(stderr.String(), "failed at") {
		t.Error("bootstrap went on to a stage after a bad --ek-intermediates")
	}
}

func TestRunFlags(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("unused"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "missing broker and CA", args: []string{"run"}, wantCode: 2, wantStderr: "run: missing [--broker --ca]"},
		{name: "negative grace", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca, "--grace", "-1s"}, wantCode: 2,
			wantStderr: "--grace must be ≥ 0"},
		{name: "CA without PEM", args: []string{"run", "--broker", "127.0.0.1:1", "--ca", ca}, wantCode: 1,
			wantStderr: "run: the broker CA bundle holds no PEM certificate"},
		{name: "help lists the flags", args: []string{"run", "--help"}, wantCode: 2, wantStderr: "-workload-socket string"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.wantCode, tc.wantStderr)
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"run", "--help"}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "-grace duration") || !strings.Contains(stderr.String(), "default \"/run/keybroker/agent.sock\"") {
		t.Errorf("run --help:\n%s", stderr.String())
	}
	stdout.Reset()
	if code := run([]string{"help"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "keybroker-agent run --broker HOST:PORT --ca CA.pem") {
		t.Errorf("help:\n%s", stdout.String())
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
