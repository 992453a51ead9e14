package broker_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
)

func TestParseConfigVault(t *testing.T) {
	dir := t.TempDir()
	ca, err := issue.LoadOrCreateCA(filepath.Join(dir, "ca"), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vault-ca.pem"), ca.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"token": "hvs.x\n", "secret-id": "s\n", "empty": "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := `data_dir = "d"` + "\n" + `policies = ["p.hcl"]` + "\n" + `ek_allow = ["` + strings.Repeat("ab", 32) + `"]` + "\n"
	tests := []struct {
		name    string
		vault   string
		want    broker.VaultConfig
		wantErr []string
	}{
		{
			name:  "token",
			vault: "vault {\n  address = \"https://127.0.0.1:8200\"\n  ca_cert = \"vault-ca.pem\"\n  token_file = \"token\"\n}",
			want:  broker.VaultConfig{Address: "https://127.0.0.1:8200", CACert: filepath.Join(dir, "vault-ca.pem"), TokenFile: filepath.Join(dir, "token")},
		},
		{
			name:  "approle",
			vault: "vault {\n  address = \"https://v:8200\"\n  namespace = \"ns1\"\n  approle {\n    role_id = \"r\"\n    secret_id_file = \"secret-id\"\n  }\n}",
			want: broker.VaultConfig{Address: "https://v:8200", RoleID: "r", SecretIDFile: filepath.Join(dir, "secret-id"),
				AppRoleMount: "approle", Namespace: "ns1"},
		},
		{
			name:  "every problem at once",
			vault: "vault {\n  address = \"http://v:8200\"\n  ca_cert = \"token\"\n}",
			wantErr: []string{
				`broker.hcl:5:13: vault: address "http://v:8200" must use https: the broker sends its token and receives secrets`,
				`broker.hcl:6:13: vault: ca_cert token: holds no PEM certificate`,
				`broker.hcl:4:1: vault: set token_file or an approle block`,
			},
		},
		{
			name:    "not a URL",
			vault:   "vault {\n  address = \"v:8200/x\"\n  token_file = \"token\"\n}",
			wantErr: []string{`broker.hcl:5:13: vault: address "v:8200/x" is not a URL such as "https://vault.example.com:8200"`},
		},
		{
			name:  "both logins, bad files",
			vault: "vault {\n  address = \"https://v\"\n  token_file = \"missing\"\n  approle {\n    role_id = \"r\"\n    secret_id_file = \"empty\"\n  }\n}",
			wantErr: []string{
				`broker.hcl:6:16: vault: set token_file or an approle block, not both`,
				`broker.hcl:6:16: vault: unable to read token_file missing: open `,
				`broker.hcl:9:22: vault: approle: secret_id_file empty is empty`,
			},
		},
		{
			name:    "empty token file",
			vault:   "vault {\n  address = \"https://v\"\n  token_file = \"empty\"\n}",
			wantErr: []string{`broker.hcl:6:16: vault: token_file empty is empty`},
		},
		{
			name:    "approle without secret",
			vault:   "vault {\n  address = \"https://v\"\n  approle {\n    role_id = \"\"\n    secret_id_file = \"missing\"\n  }\n}",
			wantErr: []string{`broker.hcl:7:15: vault: approle: role_id cannot be empty`, `broker.hcl:8:22: vault: approle: unable to read secret_id_file missing: open `},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := broker.ParseConfig([]byte(base+tc.vault), filepath.Join(dir, "broker.hcl"))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				if cfg.Vault == nil || *cfg.Vault != tc.want {
					t.Errorf("Vault = %+v, want %+v", cfg.Vault, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatal("ParseConfig succeeded")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
