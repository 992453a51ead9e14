package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/version"
)

// TestHelpOnce checks that --help, -h, -help and help COMMAND print the
// help once, to stdout, and exit 0, for every command.
func TestHelpOnce(t *testing.T) {
	cmds := map[string]string{
		"":                   "keybroker [command]",
		"serve":              "keybroker serve --config broker.hcl [flags]",
		"receipts":           "keybroker receipts [command]",
		"receipts list":      "keybroker receipts list (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) [flags]",
		"policy":             "keybroker policy [command]",
		"policy check":       "keybroker policy check [--facts] [--config broker.hcl] FILE|DIR... [flags]",
		"policy eval":        "keybroker policy eval (--config broker.hcl | --vault-mount auth/tpm) --policy FILE|DIR...",
		"evidence":           "keybroker evidence [command]",
		"evidence show":      "keybroker evidence show (--config broker.hcl | --data-dir DIR) --node EKHASH [flags]",
		"ear":                "keybroker ear [command]",
		"ear jwks":           "keybroker ear jwks --config broker.hcl [flags]",
		"pcr-policy":         "keybroker pcr-policy [command]",
		"pcr-policy approve": "keybroker pcr-policy approve (--config broker.hcl | --data-dir DIR) (--node EKHASH --pcrs 0,7 | --pcr 7=HEX ...) [--release NAME ...] [flags]",
		"pcr-policy revoke":  "keybroker pcr-policy revoke (--config broker.hcl | --data-dir DIR) (ID | --node EKHASH --pcrs 0,7 | --pcr 7=HEX ...) [flags]",
		"pcr-policy list":    "keybroker pcr-policy list (--config broker.hcl | --data-dir DIR) [flags]",
		"pcr-policy keys":    "keybroker pcr-policy keys --config broker.hcl [flags]",
		"demo":               "keybroker demo [--keep DIR] [flags]",
		"version":            "keybroker version [flags]",
		"completion":         "keybroker completion [command]",
	}
	for name, usage := range cmds {
		words := strings.Fields(name)
		for _, args := range [][]string{
			append(words, "--help"), append(words, "-h"), append(words, "-help"), append([]string{"help"}, words...),
		} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				code, stdout, stderr := runCmd(t, args...)
				if code != 0 || stderr != "" {
					t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
				}
				if n := strings.Count(stdout, "Usage:"); n != 1 || !strings.Contains(stdout, usage) {
					t.Errorf("stdout has %d Usage: sections, want one with %q:\n%s", n, usage, stdout)
				}
			})
		}
	}
}

func TestVersion(t *testing.T) {
	old := version.Version
	t.Cleanup(func() { version.Version = old })
	version.Version = "v1.2.3-test"
	for _, args := range [][]string{{"--version"}, {"version"}} {
		if code, stdout, stderr := runCmd(t, args...); code != 0 || !strings.HasPrefix(stdout, "keybroker v1.2.3-test (") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want the stamped version", args, code, stdout, stderr)
		}
	}
	if code, _, stderr := runCmd(t, "version", "extra"); code != 2 || !strings.Contains(stderr, `unexpected arguments ["extra"]`) {
		t.Errorf("version extra: exit %d, stderr %q; want a usage error", code, stderr)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		t.Run(shell, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, "completion", shell)
			if code != 0 || !strings.Contains(stdout, "keybroker") {
				t.Fatalf("exit %d, stderr %q; stdout lacks the command name:\n%.300s", code, stderr, stdout)
			}
			path, err := exec.LookPath(shell)
			if err != nil {
				t.Skipf("no %s here to check the script's syntax", shell)
			}
			file := filepath.Join(t.TempDir(), "completion."+shell)
			if err := os.WriteFile(file, []byte(stdout), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(path, "-n", file).CombinedOutput(); err != nil {
				t.Errorf("%s -n on the completion script: %v\n%s", shell, err, out)
			}
		})
	}
	// What the script asks the binary: the subcommands of "policy".
	code, stdout, _ := runCmd(t, "__complete", "policy", "")
	if code != 0 || !strings.Contains(stdout, "check") || !strings.Contains(stdout, "eval") {
		t.Errorf("__complete policy: exit %d, stdout %q; want check and eval", code, stdout)
	}
}
