package broker

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/verify"
)

// crossChecks are policies a broker trusting only ek_allow = [watchedEK],
// with no ek_ca, spiffe or vault block, cannot run; want is the problem
// CheckPolicies reports, after the policy file's name.
var crossChecks = []struct {
	name   string
	policy string
	want   string
}{
	{
		name:   "undefined ek_ca",
		policy: "policy \"web\" {\n  select { ek_cas = [\"swtpm\"] }\n}\n",
		want:   `:2:22: policy "web": ek_ca "swtpm" is not defined: broker.hcl has no ek_ca block`,
	},
	{
		name: "x509_svid without spiffe",
		policy: "policy \"web\" {\n  select { ek_hashes = [\"" + watchedEK + "\"] }\n" +
			"  release \"svid\" {\n    type      = \"x509_svid\"\n    spiffe_id = \"spiffe://example.org/node\"\n  }\n}\n",
		want: `:4:17: policy "web": release "svid" is an x509_svid, but broker.hcl has no spiffe block`,
	},
	{
		name: "workload without spiffe",
		policy: "policy \"web\" {\n  select { ek_hashes = [\"" + watchedEK + "\"] }\n" +
			"  workload \"app\" {\n    spiffe_id = \"spiffe://example.org/app\"\n    selectors = [\"unix:uid:1000\"]\n  }\n}\n",
		want: `:3:12: policy "web": workload "app" needs a SPIFFE authority, but broker.hcl has no spiffe block`,
	},
	{
		name: "vault_kv without vault",
		policy: "policy \"web\" {\n  select { ek_hashes = [\"" + watchedEK + "\"] }\n" +
			"  release \"db\" {\n    type = \"vault_kv\"\n    path = \"secret/data/db\"\n  }\n}\n",
		want: `:4:12: policy "web": release "db" is a vault_kv, but broker.hcl has no vault block`,
	},
	{
		name: "vault_pki without vault",
		policy: "policy \"web\" {\n  select { ek_hashes = [\"" + watchedEK + "\"] }\n" +
			"  release \"cert\" {\n    type        = \"vault_pki\"\n    path        = \"pki/issue/web\"\n    common_name = \"web\"\n  }\n}\n",
		want: `:4:19: policy "web": release "cert" is a vault_pki, but broker.hcl has no vault block`,
	},
	{
		name: "labels no node carries",
		policy: "node \"" + watchedEK + "\" {\n  labels = { role = \"web\" }\n}\n" +
			"policy \"db\" {\n  select { labels = { role = \"db\" } }\n}\n",
		want: `:5:21: policy "db": select labels {role = "db"} match no node block: no node carries all of them`,
	},
	{
		name:   "node block of an EK that cannot attest",
		policy: "node \"" + strings.Repeat("cd", 32) + "\" {\n  labels = { role = \"web\" }\n}\n" + watchedPolicy("web"),
		want:   `:1:6: node "` + strings.Repeat("cd", 32) + `" can never attest: it is not in ek_allow and broker.hcl has no ek_ca block`,
	},
}

// crossCheckConfig is the configuration of the cross-check tests; it names
// itself broker.hcl in messages.
func crossCheckConfig(dir, policy string) *Config {
	return &Config{
		File:         "broker.hcl",
		Listen:       "127.0.0.1:0",
		DataDir:      filepath.Join(dir, "data"),
		ServerNames:  []string{"127.0.0.1"},
		ChallengeTTL: DefaultChallengeTTL,
		PolicyPaths:  []string{policy},
		Verify:       verify.Opts{Trust: verify.Trust{EKHashes: []string{watchedEK}}},
	}
}

// TestStartRefusesPoliciesConfigCannotRun: Start refuses each policy that
// cannot run under the configuration, naming its position, before it opens
// the store or listens.
func TestStartRefusesPoliciesConfigCannotRun(t *testing.T) {
	for _, tc := range crossChecks {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "p.hcl")
			writePolicy(t, path, tc.policy)
			r, err := Start(crossCheckConfig(dir, path), nil)
			if err == nil {
				r.Stop()
				t.Fatal("Start accepted policies its configuration cannot run")
			}
			if want := "unable to load policies: " + path + tc.want; err.Error() != want {
				t.Errorf("Start: %v\nwant: %s", err, want)
			}
			if _, err := os.Stat(filepath.Join(dir, "data", BoltFile)); !os.IsNotExist(err) {
				t.Errorf("the store was opened by a refused start (stat: %v)", err)
			}
		})
	}
}

// TestReloadRefusesPoliciesConfigCannotRun: a reload to each policy that
// cannot run under the configuration is refused and logged with the
// problem's position, and the previous policies keep serving.
func TestReloadRefusesPoliciesConfigCannotRun(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.hcl")
	writePolicy(t, path, watchedPolicy("web"))
	var logs lockedBuffer
	r, err := Start(crossCheckConfig(dir, path), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	serving := r.Server.policies.Load().Hash()
	for _, tc := range crossChecks {
		t.Run(tc.name, func(t *testing.T) {
			logs.take()
			writePolicy(t, path, tc.policy)
			err := r.ReloadPolicies()
			if want := "policy reload refused: " + path + tc.want; err == nil || err.Error() != want {
				t.Errorf("ReloadPolicies: %v\nwant: %s", err, want)
			}
			if got := r.Server.policies.Load().Hash(); got != serving {
				t.Errorf("serving %s after a refused reload, want the previous %s", got, serving)
			}
			logged := logs.take()
			for _, want := range []string{"policy reload refused; the previous policies keep serving", "policy_hash=" + serving, path + strings.Fields(tc.want)[0]} {
				if !strings.Contains(logged, want) {
					t.Errorf("log lacks %q:\n%s", want, logged)
				}
			}
		})
	}
}
