package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/fakevault"
)

func TestVaultLoginFlags(t *testing.T) {
	t.Setenv("VAULT_ADDR", "")
	t.Setenv("VAULT_CACERT", "")
	noPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(noPEM, []byte("nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "missing address and role", args: nil, wantCode: 2,
			wantStderr: "keybroker-agent vault-login: missing required flag --vault-addr\nkeybroker-agent vault-login: missing required flag --role\n"},
		{name: "missing role", args: []string{"--vault-addr", "https://127.0.0.1:1"}, wantCode: 2, wantStderr: "vault-login: missing required flag --role\n"},
		{name: "bad format, single dash", args: []string{"--vault-addr", "https://127.0.0.1:1", "--role", "web", "-format", "yaml"}, wantCode: 2,
			wantStderr: `vault-login: --format: unknown format "yaml": want text or json`},
		{name: "stray argument", args: []string{"--role", "web", "extra"}, wantCode: 2, wantStderr: `vault-login: unexpected arguments ["extra"]`},
		{name: "CA file missing", args: []string{"--vault-addr", "https://127.0.0.1:1", "--role", "web", "--ca-cert", "/nonexistent/ca.pem"}, wantCode: 2,
			wantStderr: "vault-login: --ca-cert: unable to read the Vault CA bundle: stat /nonexistent/ca.pem: no such file or directory"},
		{name: "CA file without PEM", args: []string{"--vault-addr", "https://127.0.0.1:1", "--role", "web", "--ca-cert", noPEM}, wantCode: 2,
			wantStderr: "vault-login: --ca-cert: the Vault CA bundle " + noPEM + " holds no PEM certificate"},
		{name: "every problem at once", args: []string{"--format", "xml", "--ca-cert", noPEM, "--tpm", "tpm0", "--timeout", "-1s"}, wantCode: 2,
			wantStderr: "keybroker-agent vault-login: missing required flag --vault-addr\n" +
				"keybroker-agent vault-login: missing required flag --role\n" +
				"keybroker-agent vault-login: --format: unknown format \"xml\": want text or json\n" +
				"keybroker-agent vault-login: --ca-cert: the Vault CA bundle " + noPEM + " holds no PEM certificate\n" +
				"keybroker-agent vault-login: --tpm: unknown TPM \"tpm0\": want simulator, tcp://HOST:PORT or a device path\n" +
				"keybroker-agent vault-login: --timeout must be > 0, not -1s\n" +
				"Run 'keybroker-agent vault-login --help' for usage.\n"},
		{name: "unreachable TPM", args: []string{"--vault-addr", "https://127.0.0.1:1", "--role", "web", "--event-log", "none", "--tpm", "tcp://127.0.0.1:1"}, wantCode: 1,
			wantStderr: "vault-login failed at tpm: unable to connect to TPM at 127.0.0.1:1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"vault-login"}, tc.args...), &stdout, &stderr)
			if code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.wantCode, tc.wantStderr)
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"help", "vault-login"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "keybroker-agent vault-login --vault-addr") ||
		!strings.Contains(stdout.String(), "--token-file string") {
		t.Errorf("help vault-login:\n%s", stdout.String())
	}
}

// TestVaultLogin runs the command on the embedded simulator against a fake
// Vault that trusts any EK: the token file, the JSON output, the default
// ~/.vault-token, and a refusal that writes nothing. The real plugin in a
// real Vault is e2e/vault's.
func TestVaultLogin(t *testing.T) {
	fv := fakevault.Start(t, fakevault.Opts{Backend: fakevault.AnyEKInsecure()})
	dir := t.TempDir()
	ca := filepath.Join(dir, "vault-ca.pem")
	if err := os.WriteFile(ca, fv.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)
	t.Setenv("VAULT_ADDR", fv.URL) // the default of --vault-addr
	t.Setenv("VAULT_CACERT", ca)   // the default of --ca-cert
	base := []string{"vault-login", "--tpm", "simulator", "--event-log", "none", "--role", "web"}
	login := func(args ...string) (int, string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(append(append([]string{}, base...), args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	t.Run("json", func(t *testing.T) {
		tokenFile := filepath.Join(dir, "token")
		code, stdout, stderr := login("-format", "json", "--token-file", tokenFile)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var out struct {
			Auth struct {
				ClientToken   string   `json:"client_token"`
				Policies      []string `json:"policies"`
				LeaseDuration int      `json:"lease_duration"`
			} `json:"auth"`
			TokenFile string `json:"token_file"`
		}
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("stdout %q: %v", stdout, err)
		}
		if out.Auth.ClientToken != "hvs.fake-token-1" || out.TokenFile != tokenFile || out.Auth.LeaseDuration != 3600 {
			t.Errorf("output = %+v", out)
		}
		b, err := os.ReadFile(tokenFile)
		if err != nil || string(b) != "hvs.fake-token-1" {
			t.Errorf("token file = %q, %v", b, err)
		}
		if fi, _ := os.Stat(tokenFile); fi.Mode().Perm() != 0o600 {
			t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
		}
	})
	t.Run("json without --token-file writes no file", func(t *testing.T) {
		code, stdout, stderr := login("-format", "json")
		if code != 0 || !strings.Contains(stdout, `"client_token": "hvs.fake-token-2"`) || strings.Contains(stdout, "token_file") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if _, err := os.Stat(filepath.Join(home, ".vault-token")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("~/.vault-token: %v; want none", err)
		}
	})
	t.Run("text writes ~/.vault-token", func(t *testing.T) {
		code, stdout, stderr := login()
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		path := filepath.Join(home, ".vault-token")
		b, err := os.ReadFile(path)
		if err != nil || string(b) != "hvs.fake-token-3" {
			t.Fatalf("~/.vault-token = %q, %v", b, err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Errorf("~/.vault-token mode %v, want 0600", fi.Mode().Perm())
		}
		for _, want := range []string{"challenge ", "activate ", "quote ", "login ", "write ", "token written to " + path + " (mode 0600)"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("stdout lacks %q:\n%s", want, stdout)
			}
		}
		if strings.Contains(stdout, "hvs.") {
			t.Errorf("text output shows the token:\n%s", stdout)
		}
	})
	t.Run("refused login keeps the previous token", func(t *testing.T) {
		fv.Override("auth/tpm/login", func(map[string]any) (int, any) {
			return http.StatusForbidden, map[string]any{"errors": []string{"policy: no policy allows this node"}}
		})
		defer fv.Override("auth/tpm/login", nil)
		code, _, stderr := login("--quiet")
		if want := "vault-login failed at login: vault refused (403): policy: no policy allows this node\n"; code != 1 || stderr != want {
			t.Errorf("exit %d, stderr %q; want 1, %q", code, stderr, want)
		}
		if b, _ := os.ReadFile(filepath.Join(home, ".vault-token")); string(b) != "hvs.fake-token-3" {
			t.Errorf("~/.vault-token = %q after a refusal; want the previous token", b)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		fv.Override("auth/tpm/challenge", func(map[string]any) (int, any) {
			time.Sleep(2 * time.Second)
			return http.StatusInternalServerError, nil
		})
		defer fv.Override("auth/tpm/challenge", nil)
		code, _, stderr := login("--timeout", "500ms")
		if code != 1 || !strings.Contains(stderr, "vault-login failed at challenge: ") || !strings.Contains(stderr, "deadline exceeded") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
}
