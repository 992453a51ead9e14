package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/version"
)

// TestHelpOnce checks that --help, -h and help COMMAND print the help once,
// to stdout, and exit 0, for every command.
func TestHelpOnce(t *testing.T) {
	cmds := map[string]string{
		"":            "keybroker-agent [command]",
		"bootstrap":   "keybroker-agent bootstrap --broker HOST:PORT --ca CA.pem --out DIR [flags]",
		"reopen":      "keybroker-agent reopen --cache DIR --out DIR [flags]",
		"run":         "keybroker-agent run --broker HOST:PORT --ca CA.pem",
		"vault-login": "keybroker-agent vault-login --vault-addr https://HOST:PORT --role ROLE [flags]",
		"ek-hash":     "keybroker-agent ek-hash [--tpm TPM] [flags]",
		"version":     "keybroker-agent version [flags]",
		"completion":  "keybroker-agent completion [command]",
	}
	for name, usage := range cmds {
		for _, args := range [][]string{{name, "--help"}, {name, "-h"}, {name, "-help"}, {"help", name}} {
			args = nonEmpty(args)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				code := run(args, &stdout, &stderr)
				if code != 0 || stderr.Len() > 0 {
					t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr.String())
				}
				if n := strings.Count(stdout.String(), "Usage:"); n != 1 || !strings.Contains(stdout.String(), usage) {
					t.Errorf("stdout has %d Usage: sections, want one with %q:\n%s", n, usage, stdout.String())
				}
			})
		}
	}
}

func nonEmpty(args []string) []string {
	var out []string
	for _, a := range args {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

func TestVersion(t *testing.T) {
	old := version.Version
	t.Cleanup(func() { version.Version = old })
	version.Version = "v1.2.3-test"
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "keybroker-agent v1.2.3-test (") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want the stamped version", args, code, stdout.String(), stderr.String())
		}
	}
}

// TestFlagProblemsAllListed checks that one run lists every problem with
// the flags, one a line, exits 2 and touches neither TPM nor broker.
func TestFlagProblemsAllListed(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.pem")
	var stdout, stderr bytes.Buffer
	code := run([]string{"bootstrap", "--tpm", "tpm0", "--ca", missing, "--ak", "dsa", "--event-log", "/nonexistent/log"}, &stdout, &stderr)
	want := []string{
		"keybroker-agent bootstrap: missing required flag --broker",
		"keybroker-agent bootstrap: --ca: unable to read the broker CA bundle: stat " + missing + ": no such file or directory",
		`keybroker-agent bootstrap: --tpm: unknown TPM "tpm0": want simulator, tcp://HOST:PORT or a device path`,
		`keybroker-agent bootstrap: --ak: unknown AK type "dsa": want rsa or ecc`,
		"keybroker-agent bootstrap: --event-log: unable to open event log: open /nonexistent/log: no such file or directory",
		"keybroker-agent bootstrap: missing required flag --out",
		"Run 'keybroker-agent bootstrap --help' for usage.",
	}
	if got := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n"); code != 2 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("exit %d, stderr:\n%s\nwant 2 and:\n%s", code, stderr.String(), strings.Join(want, "\n"))
	}
	if stdout.Len() > 0 {
		t.Errorf("stdout %q, want nothing", stdout.String())
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no command", nil, "keybroker-agent: missing command\n\nUsage:"},
		{"unknown command", []string{"enroll"}, `keybroker-agent: unknown command "enroll"`},
		{"misspelt command", []string{"bootstap"}, `unknown command "bootstap" (did you mean "bootstrap"?)`},
		{"unknown flag", []string{"ek-hash", "--frobnicate"}, "keybroker-agent ek-hash: unknown flag: --frobnicate\nRun 'keybroker-agent ek-hash --help' for usage.\n"},
		{"bad TPM", []string{"ek-hash", "--tpm", "tcp://nohost"}, `ek-hash: --tpm: "tcp://nohost": want tcp://HOST:PORT`},
		{"missing required", []string{"bootstrap", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--event-log", "none"}, "bootstrap: missing required flag --out\n"},
		{"stray argument", []string{"ek-hash", "extra"}, `ek-hash: unexpected arguments ["extra"]`},
		{"ear nonce not hex", []string{"bootstrap", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--out", "d", "--ear-out", "r.jwt", "--ear-nonce", "xyz"},
			"bootstrap: --ear-nonce: not hex: encoding/hex: invalid byte"},
		{"ear nonce too short", []string{"bootstrap", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--out", "d", "--ear-out", "r.jwt", "--ear-nonce", "00112233445566"},
			"bootstrap: --ear-nonce must be 8 to 64 bytes (16 to 128 hex digits), not 7 bytes\n"},
		{"ear nonce too long", []string{"bootstrap", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--out", "d", "--ear-out", "r.jwt", "--ear-nonce", strings.Repeat("ab", 65)},
			"bootstrap: --ear-nonce must be 8 to 64 bytes (16 to 128 hex digits), not 65 bytes\n"},
		{"ear nonce without ear out", []string{"bootstrap", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--out", "d", "--ear-nonce", "0011223344556677"},
			"bootstrap: --ear-nonce needs --ear-out: the nonce goes only into the attestation result\n"},
		{"reopen without cache or out", []string{"reopen", "--tpm", "tpm0"},
			"keybroker-agent reopen: --tpm: unknown TPM \"tpm0\": want simulator, tcp://HOST:PORT or a device path\nkeybroker-agent reopen: missing required flag --cache\nkeybroker-agent reopen: missing required flag --out\n"},
		{"reopen takes no broker", []string{"reopen", "--cache", "c", "--out", "o", "--broker", "127.0.0.1:1"}, "reopen: unknown flag: --broker"},
		{"unknown shell", []string{"completion", "tcsh"}, `unknown command "tcsh"`},
		{"tpm-resident PCRs", []string{"bootstrap", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--out", "d", "--tpm-resident", "node-svid=sha256:0,24"},
			"bootstrap: --tpm-resident node-svid=sha256:0,24: PCR selection \"sha256:0,24\": \"24\" is not a PCR from 0 to 23\n"},
		{"tpm-resident software-resettable PCR", []string{"bootstrap", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--out", "d", "--tpm-resident", "node-svid=sha256:7,16"},
			"bootstrap: --tpm-resident node-svid=sha256:7,16: PCR selection \"sha256:7,16\": PCR 16 can be reset by software at locality 0 and cannot bind a key or a secret\n"},
		{"run cache without out", []string{"run", "--broker", "127.0.0.1:1", "--ca", testCA(t), "--cache", "c", "--tpm-resident", "node-svid=sha1:7"},
			"run: --kubeconfig, --bootstrap-kubeconfig, --on-change and --cache need --out\nkeybroker-agent run: --tpm-resident node-svid=sha1:7: PCR selection \"sha1:7\": bank \"sha1\" is not sha256, sha384 or sha512\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tt.wantErr) || stdout.Len() > 0 {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and %q on stderr only", code, stdout.String(), stderr.String(), tt.wantErr)
			}
		})
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		t.Run(shell, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run([]string{"completion", shell}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "keybroker-agent") {
				t.Fatalf("exit %d, stderr %q; stdout lacks the command name:\n%.300s", code, stderr.String(), stdout.String())
			}
			path, err := exec.LookPath(shell)
			if err != nil {
				t.Skipf("no %s here to check the script's syntax", shell)
			}
			file := filepath.Join(t.TempDir(), "completion."+shell)
			if err := os.WriteFile(file, stdout.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(path, "-n", file).CombinedOutput(); err != nil {
				t.Errorf("%s -n on the completion script: %v\n%s", shell, err, out)
			}
		})
	}
}

// TestReopenWithoutCache checks that reopen fails at open, with exit 1,
// when --cache holds no cache, and writes nothing.
func TestReopenWithoutCache(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tls")
	var stdout, stderr bytes.Buffer
	code := run([]string{"reopen", "--tpm", "simulator", "--cache", t.TempDir(), "--out", out}, &stdout, &stderr)
	if code != 1 || !strings.HasPrefix(stderr.String(), "reopen failed at open: unable to read the credential cache: open ") || stdout.Len() > 0 {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1 and a failure at open", code, stdout.String(), stderr.String())
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed reopen created %s: %v", out, err)
	}
}
