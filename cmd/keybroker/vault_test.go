package main

import (
	"strings"
	"testing"
)

// --vault-mount reads a Vault auth method instead of the broker's store:
// it cannot be combined with the store's flags, and needs a token.
func TestVaultMountFlags(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "")
	t.Setenv("HOME", t.TempDir()) // no ~/.vault-token
	t.Setenv("VAULT_ADDR", "https://127.0.0.1:1")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"receipts with --config", []string{"receipts", "list", "--vault-mount", "auth/tpm", "--config", "broker.hcl"}, 2,
			"--vault-mount reads Vault instead of the broker: leave out --config and --data-dir"},
		{"receipts --vault-addr alone", []string{"receipts", "list", "--vault-addr", "https://vault:8200", "--data-dir", "d"}, 2,
			"--vault-addr needs --vault-mount"},
		{"receipts without a token", []string{"receipts", "list", "--vault-mount", "auth/tpm"}, 1,
			"receipts: no Vault token: set VAULT_TOKEN or log in with 'vault login'"},
		{"nodes list with --data-dir", []string{"nodes", "list", "--vault-mount", "auth/tpm", "--data-dir", "d"}, 2,
			"--vault-mount reads Vault instead of the broker"},
		{"nodes show without a token", []string{"nodes", "show", "--vault-mount", "auth/tpm", "0123456789abcdef"}, 1,
			"nodes: no Vault token"},
		{"policy eval with --config", []string{"policy", "eval", "--vault-mount", "auth/tpm", "--config", "broker.hcl", "p.hcl"}, 2,
			"--vault-mount reads Vault instead of the broker"},
		{"policy eval needs --config or --vault-mount", []string{"policy", "eval", "p.hcl"}, 2,
			"--config"},
		{"policy eval without a token", []string{"policy", "eval", "--vault-mount", "auth/tpm", "p.hcl"}, 1,
			"policy eval: no Vault token: set VAULT_TOKEN or log in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tt.wantCode, tt.wantStderr)
			}
		})
	}
}
