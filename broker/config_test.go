package broker_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
)

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	hash := strings.Repeat("ab", 32)
	tests := []struct {
		name    string
		src     string
		wantErr []string
	}{
		{
			name: "minimal",
			src:  `data_dir = "d"` + "\n" + `policies = ["p.hcl"]` + "\n" + `ek_allow = ["` + hash + `"]`,
		},
		{
			name:    "syntax error with position",
			src:     "data_dir = \n",
			wantErr: []string{"broker.hcl:1"},
		},
		{
			name:    "missing data_dir",
			src:     `policies = ["p"]`,
			wantErr: []string{`broker.hcl:1,1`, `"data_dir" is required`},
		},
		{
			name: "every problem reported",
			src: `data_dir = "d"
policies = []
challenge_ttl = "forever"
ek_allow = ["ABC"]`,
			wantErr: []string{
				"challenge_ttl \"forever\" is not a duration",
				"policies cannot be empty",
				"ek_allow entry \"ABC\" is not a lowercase hex SHA-256 EK hash",
				"no EK is trusted",
			},
		},
		{
			name: "challenge_ttl out of range",
			src: `data_dir = "d"
policies = ["p"]
ek_allow = ["` + hash + `"]
challenge_ttl = "1h"`,
			wantErr: []string{"challenge_ttl must be between 1s and 10m0s"},
		},
		{
			name: "missing EK CA file",
			src: `data_dir = "d"
policies = ["p"]
ek_ca "vendor" {
  roots = ["missing.pem"]
}`,
			wantErr: []string{`ek_ca "vendor" roots: unable to read missing.pem`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := broker.ParseConfig([]byte(tc.src), filepath.Join(dir, "broker.hcl"))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				if cfg.Listen != broker.DefaultListen || cfg.ChallengeTTL != 60*time.Second {
					t.Errorf("defaults not applied: %+v", cfg)
				}
				if cfg.DataDir != filepath.Join(dir, "d") || cfg.PolicyPaths[0] != filepath.Join(dir, "p.hcl") {
					t.Errorf("relative paths not resolved against the config's directory: %q %q", cfg.DataDir, cfg.PolicyPaths)
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

func TestParseConfigLoadsEKCA(t *testing.T) {
	dir := t.TempDir()
	// Any PEM certificate will do as a root: use a CA the issue package makes.
	caPEM := mustCAPEM(t)
	if err := os.WriteFile(filepath.Join(dir, "root.pem"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.ParseConfig([]byte(`data_dir = "d"
policies = ["p"]
ek_ca "vendor" {
  roots = ["root.pem"]
}`), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Trust.CAs) != 1 || cfg.Trust.CAs[0].Name != "vendor" || cfg.Trust.CAs[0].Roots == nil {
		t.Fatalf("EK CAs = %+v", cfg.Trust.CAs)
	}
}

func mustCAPEM(t *testing.T) []byte {
	t.Helper()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	return ca.BundlePEM()
}
