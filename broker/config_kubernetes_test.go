package broker_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
)

func TestParseConfigKubernetes(t *testing.T) {
	dir := t.TempDir()
	ca, err := issue.LoadOrCreateCA(filepath.Join(dir, "client"), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := issue.LoadOrCreateCA(filepath.Join(dir, "other"), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster.pem"), other.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "junk"), []byte("junk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := `data_dir = "d"` + "\n" + `policies = ["p.hcl"]` + "\n" + `ek_allow = ["` + strings.Repeat("ab", 32) + `"]` + "\n"
	good := "  client_ca_cert = \"client/ca.pem\"\n  client_ca_key = \"client/ca-key.pem\"\n"
	tests := []struct {
		name    string
		block   string
		wantErr []string
	}{
		{name: "valid", block: "kubernetes {\n  server = \"https://10.0.0.1:6443\"\n  ca_cert = \"cluster.pem\"\n" + good + "}"},
		{
			name:  "every problem at once",
			block: "kubernetes {\n  server = \"http://10.0.0.1:6443\"\n  ca_cert = \"junk\"\n  client_ca_cert = \"other/ca.pem\"\n  client_ca_key = \"client/ca-key.pem\"\n}",
			wantErr: []string{
				`broker.hcl:5:12: kubernetes: server "http://10.0.0.1:6443" must use https`,
				`broker.hcl:6:13: kubernetes: ca_cert junk: holds no PEM certificate`,
				`does not match certificate`,
			},
		},
		{
			name:    "not a URL",
			block:   "kubernetes {\n  server = \"https://h:6443/api?x=1\"\n" + good + "}",
			wantErr: []string{`kubernetes: server "https://h:6443/api?x=1" is not a URL such as "https://10.0.0.1:6443"`},
		},
		{
			name:    "quarantine settings",
			block:   "kubernetes {\n  server = \"https://h:6443\"\n" + good + "  token_file = \"missing\"\n  quarantine_taint = \"k=v:Evict\"\n}",
			wantErr: []string{`kubernetes: quarantine_taint: taint "k=v:Evict": effect "Evict" is not NoSchedule, PreferNoSchedule or NoExecute`, `kubernetes: unable to read token_file missing`},
		},
		{
			name:    "a taint without a token",
			block:   "kubernetes {\n  server = \"https://h:6443\"\n" + good + "  quarantine_taint = \"k=v:NoSchedule\"\n}",
			wantErr: []string{`kubernetes: quarantine_taint needs token_file, the broker's identity for tainting nodes`},
		},
		{
			name:    "no client CA",
			block:   "kubernetes {\n  server = \"https://h:6443\"\n}",
			wantErr: []string{`the argument "client_ca_cert" is required`, `the argument "client_ca_key" is required`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := broker.ParseConfig([]byte(base+tt.block+"\n"), filepath.Join(dir, "broker.hcl"))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				k := c.Kubernetes
				if k == nil || k.Server != "https://10.0.0.1:6443" || string(k.ClusterCAPEM) != string(other.BundlePEM()) ||
					!k.ClientCA.Certificate().Equal(ca.Certificate()) {
					t.Fatalf("kubernetes = %+v", k)
				}
				return
			}
			if err == nil {
				t.Fatal("parsed")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\nlacks %q", err, w)
				}
			}
		})
	}
}
