package broker

import (
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/broker/release"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

const (
	checkEKA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	checkEKB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// checkConfigs are the configurations policies are checked against.
var checkConfigs = map[string]*Config{
	// full has an ek_ca "swtpm", a spiffe block, a vault block and a
	// kubernetes block without token_file.
	"full": {
		File:        "broker.hcl",
		Verify:      verify.Opts{Trust: verify.Trust{CAs: []verify.CA{{Name: "swtpm"}}}},
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Vault:       &VaultConfig{Address: "https://vault.example.com:8200"},
		Kubernetes:  &release.Kubernetes{Server: "https://10.0.0.1:6443"},
	},
	// bare trusts ek_allow = [checkEKA] only: no ek_ca, spiffe or vault.
	"bare": {
		File:   "broker.hcl",
		Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{checkEKA}}},
	},
	// etcd is bare on store "etcd" without pcr_policy.key_file.
	"etcd": {
		File:   "broker.hcl",
		Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{checkEKA}}},
		Store:  StoreConfig{Kind: StoreEtcd},
	},
	// etcdKey is etcd with pcr_policy.key_file.
	"etcdKey": {
		File:      "broker.hcl",
		Verify:    verify.Opts{Trust: verify.Trust{EKHashes: []string{checkEKA}}},
		Store:     StoreConfig{Kind: StoreEtcd},
		PCRPolicy: PCRPolicyConfig{KeyFile: "/etc/keybroker/pcr-policy.pem"},
	},
	// sha256 is bare counting only the sha256 bank (pcr_banks).
	"sha256": {
		File:   "broker.hcl",
		Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{checkEKA}}, Banks: []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}},
	},
}

// authorizedPolicy has one pcr_policy "authorized" release, sealed to the
// sha384 bank with one expected state.
var authorizedPolicy = `
policy "web" {
  select { ek_hashes = ["` + checkEKA + `"] }
  release "updates" {
    type            = "tls_certificate"
    mode            = "pcr_sealed"
    pcr_bank        = "sha384"
    pcrs            = [7]
    pcr_policy      = "authorized"
    expected_states = [{ 7 = "` + strings.Repeat("ab", 48) + `" }]
    common_name     = "web"
  }
}
`

func TestCheckPolicies(t *testing.T) {
	tests := []struct {
		name   string
		config string
		policy string
		want   []string // the error's lines; none: accepted
	}{
		{
			name:   "everything defined",
			config: "full",
			policy: `
policy "web" {
  select { ek_cas = ["swtpm"] }
  release "svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
  }
  release "db" {
    type = "vault_kv"
    path = "secret/data/db"
  }
  release "token" {
    type       = "vault_token"
    token_role = "nodes"
  }
  release "kubelet" {
    type      = "kubelet"
    node_name = "n-${ek_hash_short}"
  }
  workload "app" {
    spiffe_id = "spiffe://example.org/app"
    selectors = ["unix:uid:1000"]
  }
}
`,
		},
		{
			name:   "labels some node carries, ek_hashes in ek_allow",
			config: "bare",
			policy: `
node "` + checkEKA + `" {
  labels = { role = "web", site = "fra1" }
}
policy "web" {
  select {
    labels    = { role = "web" }
    ek_hashes = ["` + checkEKA + `"]
  }
}
`,
		},
		{
			name:   "undefined ek_ca",
			config: "full",
			policy: `
policy "web" {
  select { ek_cas = ["swtpm", "infineon"] }
}
`,
			want: []string{`p.hcl:3:31: policy "web": ek_ca "infineon" is not defined in broker.hcl (defined: "swtpm")`},
		},
		{
			name:   "pcr_sealed in a bank pcr_banks does not count",
			config: "sha256",
			policy: `
policy "web" {
  select { ek_hashes = ["` + checkEKA + `"] }
  release "ok" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcr_bank    = "sha256"
    pcrs        = [7]
    common_name = "web"
  }
  release "sealed" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcr_bank    = "sha384"
    pcrs        = [7]
    common_name = "web"
  }
  release "bound" {
    type        = "tls_certificate"
    mode        = "tpm_bound"
    common_name = "web"
  }
}
`,
			want: []string{`p.hcl:12:19: policy "web": release "sealed" is sealed to the sha384 bank, but pcr_banks of broker.hcl counts only sha256: nodes do not quote it`},
		},
		{
			name:   "expected_states in a bank pcr_banks does not count",
			config: "sha256",
			policy: authorizedPolicy,
			want:   []string{`p.hcl:5:23: policy "web": release "updates" is sealed to the sha384 bank, but pcr_banks of broker.hcl counts only sha256: nodes do not quote it, and its 1 expected_states can never be approved`},
		},
		{
			name:   "pcr_policy authorized on etcd without key_file",
			config: "etcd",
			policy: authorizedPolicy,
			want:   []string{`p.hcl:5:23: policy "web": release "updates" is pcr_policy "authorized", but broker.hcl uses store "etcd" without pcr_policy.key_file: every replica must sign with the same key`},
		},
		{
			name:   "pcr_policy authorized on etcd with key_file",
			config: "etcdKey",
			policy: authorizedPolicy,
		},
		{
			name:   "ek_ca without any ek_ca block",
			config: "bare",
			policy: `
policy "web" {
  select { ek_cas = ["swtpm"] }
}
`,
			want: []string{`p.hcl:3:22: policy "web": ek_ca "swtpm" is not defined: broker.hcl has no ek_ca block`},
		},
		{
			name:   "spiffe and vault releases without their blocks",
			config: "bare",
			policy: `
policy "web" {
  select { ek_hashes = ["` + checkEKA + `"] }
  release "svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/node"
  }
  release "db" {
    type = "vault_kv"
    path = "secret/data/db"
  }
  release "cert" {
    type        = "vault_pki"
    path        = "pki/issue/web"
    common_name = "web"
  }
  release "token" {
    type       = "vault_token"
    token_role = "nodes"
  }
  release "kubelet" {
    type      = "kubelet"
    node_name = "n-${ek_hash_short}"
  }
  workload "app" {
    spiffe_id = "spiffe://example.org/app"
    selectors = ["unix:uid:1000"]
  }
}
`,
			want: []string{
				`p.hcl:5:17: policy "web": release "svid" is an x509_svid, but broker.hcl has no spiffe block`,
				`p.hcl:9:12: policy "web": release "db" is a vault_kv, but broker.hcl has no vault block`,
				`p.hcl:13:19: policy "web": release "cert" is a vault_pki, but broker.hcl has no vault block`,
				`p.hcl:18:18: policy "web": release "token" is a vault_token, but broker.hcl has no vault block`,
				`p.hcl:22:17: policy "web": release "kubelet" is a kubelet, but broker.hcl has no kubernetes block`,
				`p.hcl:25:12: policy "web": workload "app" needs a SPIFFE authority, but broker.hcl has no spiffe block`,
			},
		},
		{
			name:   "quarantine without a token for the broker",
			config: "full",
			policy: `
policy "web" {
  select { ek_cas = ["swtpm"] }
  release "kubelet" {
    type       = "kubelet"
    node_name  = "n-${ek_hash_short}"
    quarantine = true
  }
}
`,
			want: []string{
				`p.hcl:5:18: policy "web": release "kubelet" asks for quarantine, but the kubernetes block of broker.hcl has no token_file for the broker to taint nodes with`,
			},
		},
		{
			name:   "spiffe ids outside the trust domain",
			config: "full",
			policy: `
policy "web" {
  select { ek_cas = ["swtpm"] }
  release "svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://other.org/node"
  }
  workload "app" {
    spiffe_id = "spiffe://other.org/app"
    selectors = ["unix:uid:1000"]
  }
}
`,
			want: []string{
				`p.hcl:6:17: policy "web": release "svid": spiffe_id spiffe://other.org/node is not in trust domain "example.org" of broker.hcl`,
				`p.hcl:9:17: policy "web": workload "app": spiffe_id spiffe://other.org/app is not in trust domain "example.org" of broker.hcl`,
			},
		},
		{
			name:   "labels no node block carries",
			config: "full",
			policy: `
node "` + checkEKA + `" {
  labels = { role = "web" }
}
policy "db" {
  select { labels = { role = "db" } }
}
policy "web" {
  select { labels = { role = "web", site = "fra1" } }
}
`,
			want: []string{
				`p.hcl:6:21: policy "db": select labels {role = "db"} match no node block: no node carries all of them`,
				`p.hcl:9:21: policy "web": select labels {role = "web", site = "fra1"} match no node block: no node carries all of them`,
			},
		},
		{
			name:   "EKs that cannot attest without an ek_ca",
			config: "bare",
			policy: `
node "` + checkEKB + `" {
  labels = { role = "web" }
}
policy "web" {
  select { ek_hashes = ["` + checkEKA + `", "` + checkEKB + `"] }
}
`,
			want: []string{
				`p.hcl:2:6: node "` + checkEKB + `" can never attest: it is not in ek_allow and broker.hcl has no ek_ca block`,
				`p.hcl:6:93: policy "web": ek_hashes entry ` + checkEKB + ` can never attest: it is not in ek_allow and broker.hcl has no ek_ca block`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := policies.Parse([]byte(tt.policy), "p.hcl")
			if err != nil {
				t.Fatalf("policies.Parse: %v", err)
			}
			err = checkConfigs[tt.config].CheckPolicies(set)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("CheckPolicies: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckPolicies accepted the policies, want:\n%s", strings.Join(tt.want, "\n"))
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("CheckPolicies:\n%s\nwant:\n%s", err, strings.Join(tt.want, "\n"))
			}
		})
	}
}
