package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/release"
	"github.com/keybroker/keybroker/broker/verify"
)

// FileConfig is the broker's configuration file (HCL) as decoded.
//
//	listen        = "127.0.0.1:8443"      # gRPC over TLS
//	metrics_listen = "127.0.0.1:9464"     # optional: Prometheus GET /metrics over HTTP; default off
//	data_dir      = "/var/lib/keybroker"  # CA, store; created 0700
//	server_names  = ["localhost", "127.0.0.1"]
//	challenge_ttl = "60s"
//	allow_sha1    = false
//	pcr_banks     = ["sha256", "sha384"]  # banks whose quotes count; default all
//	identity_log_pcr = 15                  # PCR of the nodes' identity record, 10-15; 0: off (docs/identities.md)
//	policies      = ["policies"]          # files or directories of *.hcl
//	policy_poll_interval = "2s"           # reload policies when their files change; "0" disables
//	ek_allow      = ["<EK hash>"]         # EKs trusted without a certificate
//	ek_ca "swtpm" {                        # EK certificate authorities
//	  roots         = ["swtpm-root.pem"]  # files or directories of *.pem, *.crt, *.cer
//	  intermediates = ["swtpm-intermediate.pem"]
//	}
//	spiffe {                               # optional: the SPIFFE authority
//	  trust_domain = "example.org"        # CA and JWT key in data_dir/spiffe
//	}
//	vault {                                # optional: the source of vault_kv, vault_pki and vault_token releases
//	  address    = "https://vault.example.com:8200"
//	  ca_cert    = "vault-ca.pem"          # PEM bundle that verifies address; default: system roots
//	  token_file = "vault-token"           # a token, or:
//	  approle {                            # an AppRole login
//	    role_id        = "…"
//	    secret_id_file = "vault-secret-id"
//	    mount          = "approle"         # default
//	  }
//	  namespace  = ""                      # Vault Enterprise namespace
//	}
//	kubernetes { … }                       # optional: the cluster kubelet releases join (KubernetesFile)
//	limits { … }                           # optional: admission limits (LimitsFile)
//	store "etcd" { … }                     # optional: shared state for several brokers (StoreFile)
//	challenge_key_rotation = "24h"         # how long a challenge key seals challenges
//	receipt_retention      = "90d"         # receipts older are deleted; "0" keeps them all
//	receipt_checkpoints { … }              # optional: signed receipt chain heads (ReceiptCheckpointsFile)
//	attestation_results { … }              # optional: signed EAR results (AttestationResultsFile)
//	pcr_policy { … }                       # optional: PCR-policy signing keys (PCRPolicyFile)
//
// Relative paths are relative to the configuration file's directory.
// ParseConfig decodes it and builds the parsed form, Config, from it once;
// the two are kept apart.
type FileConfig struct {
	Listen             string          `hcl:"listen,optional"`
	MetricsListen      string          `hcl:"metrics_listen,optional"`
	DataDir            string          `hcl:"data_dir"`
	ServerNames        []string        `hcl:"server_names,optional"`
	ChallengeTTL       string          `hcl:"challenge_ttl,optional"`
	AllowSHA1          bool            `hcl:"allow_sha1,optional"`
	PCRBanks           []string        `hcl:"pcr_banks,optional"`
	IdentityLogPCR     *int            `hcl:"identity_log_pcr,optional"`
	Policies           []string        `hcl:"policies"`
	PolicyPollInterval string          `hcl:"policy_poll_interval,optional"`
	EKAllow            []string        `hcl:"ek_allow,optional"`
	EKCAs              []EKCAFile      `hcl:"ek_ca,block"`
	SPIFFE             *SPIFFEFile     `hcl:"spiffe,block"`
	Vault              *VaultFile      `hcl:"vault,block"`
	Kubernetes         *KubernetesFile `hcl:"kubernetes,block"`
	Limits             *LimitsFile     `hcl:"limits,block"`
	Store              []StoreFile     `hcl:"store,block"`
	// ChallengeKeyRotation is how long a challenge key seals challenges
	// (default 24h).
	ChallengeKeyRotation string `hcl:"challenge_key_rotation,optional"`
	// ReceiptRetention is how long receipts are kept (default 90d).
	ReceiptRetention string `hcl:"receipt_retention,optional"`
	// ReceiptCheckpoints tunes the signed checkpoints of the receipt
	// chain (config_receipts.go).
	ReceiptCheckpoints *ReceiptCheckpointsFile `hcl:"receipt_checkpoints,block"`
	// AttestationResults, when set, has Attest return signed attestation
	// results (config_ear.go).
	AttestationResults *AttestationResultsFile `hcl:"attestation_results,block"`
	// PCRPolicy names the keys that sign PCR-policy approvals
	// (config_pcrpolicy.go).
	PCRPolicy *PCRPolicyFile `hcl:"pcr_policy,block"`
}

// VaultFile is the vault block: the Vault the broker reads vault_kv
// secrets from, has issue vault_pki certificates and create vault_token
// tokens, and how it logs in
// (exactly one of TokenFile and AppRole).
type VaultFile struct {
	Address   string       `hcl:"address"`
	CACert    string       `hcl:"ca_cert,optional"`
	TokenFile string       `hcl:"token_file,optional"`
	AppRole   *AppRoleFile `hcl:"approle,block"`
	Namespace string       `hcl:"namespace,optional"`
}

// AppRoleFile is the approle block of the vault block.
type AppRoleFile struct {
	RoleID       string `hcl:"role_id"`
	SecretIDFile string `hcl:"secret_id_file"`
	Mount        string `hcl:"mount,optional"`
}

// VaultConfig is the parsed vault block: paths resolved, files checked.
type VaultConfig struct {
	Address   string
	CACert    string // PEM file; empty: the system's roots
	TokenFile string // empty with AppRole
	// AppRole login, when RoleID is set.
	RoleID       string
	SecretIDFile string
	AppRoleMount string // default "approle"
	Namespace    string
}

// SPIFFEFile is the spiffe block: with it, the broker is the SPIFFE
// authority of TrustDomain (x509_svid releases, workload SVIDs, the
// bundle).
type SPIFFEFile struct {
	// TrustDomain is a trust domain name such as "example.org".
	TrustDomain string `hcl:"trust_domain"`
}

// EKCAFile is an ek_ca block. Each entry of Roots and Intermediates is a
// certificate file (PEM with one or more CERTIFICATE blocks, or DER), or a
// directory of which every *.pem, *.crt and *.cer file (not recursing) is
// read.
type EKCAFile struct {
	Name          string   `hcl:"name,label"`
	Roots         []string `hcl:"roots"`
	Intermediates []string `hcl:"intermediates,optional"`
}

// Defaults for FileConfig.
const (
	DefaultListen       = "127.0.0.1:8443"
	DefaultChallengeTTL = 60 * time.Second
	MaxChallengeTTL     = challenge.MaxTTL
	// DefaultPolicyPollInterval is how often a broker checks its policy
	// files for changes unless policy_poll_interval says otherwise.
	DefaultPolicyPollInterval = 2 * time.Second
	// DefaultReceiptRetention is how long receipts are kept unless
	// receipt_retention says otherwise.
	DefaultReceiptRetention = 90 * 24 * time.Hour
	// MinPolicyPollInterval is the shortest policy_poll_interval other
	// than 0 (polling disabled): every poll reads every policy file.
	MinPolicyPollInterval = 100 * time.Millisecond
)

// Config is the parsed configuration: paths resolved, durations parsed, EK
// CAs loaded.
type Config struct {
	// File is the configuration file's name, for messages; set by
	// ParseConfig.
	File         string
	Listen       string
	DataDir      string
	ServerNames  []string
	ChallengeTTL time.Duration
	// Verify is what allow_sha1, pcr_banks, ek_allow and the ek_ca blocks
	// say, in the one form every check of a node's evidence takes.
	Verify      verify.Opts
	PolicyPaths []string
	// PolicyPollInterval is how often Start's watcher checks the files
	// under PolicyPaths and reloads the policies when one changed; zero
	// disables the watcher (SIGHUP and Running.ReloadPolicies still
	// reload). LoadConfig defaults it to DefaultPolicyPollInterval.
	PolicyPollInterval time.Duration
	// TrustDomain is the SPIFFE trust domain of the spiffe block; zero
	// when SPIFFE is not configured (x509_svid releases and workload SVIDs
	// are then refused).
	TrustDomain spiffeid.TrustDomain
	// Vault is the vault block; nil when absent (vault_kv, vault_pki and
	// vault_token releases are then refused).
	Vault *VaultConfig
	// Kubernetes is the kubernetes block, its client CA loaded; nil when
	// absent (kubelet releases are then refused).
	Kubernetes *release.Kubernetes
	// Limits are the admission limits on Challenge and Attest;
	// ParseConfig fills in DefaultLimits for what the file leaves out.
	Limits LimitsConfig
	// Store is where the state is kept: bolt (default) or etcd.
	Store StoreConfig
	// ChallengeKeyRotation is how long a challenge key seals challenges.
	ChallengeKeyRotation time.Duration
	// ReceiptRetention is how long receipts are kept; zero keeps them.
	ReceiptRetention time.Duration
	// ReceiptCheckpoints says when the broker signs the receipt chain's
	// head, and with which key; defaults without the block.
	ReceiptCheckpoints ReceiptCheckpointsConfig
	// MetricsListen is the host:port on which Start serves the metrics
	// (GET /metrics, plain HTTP); empty: none.
	MetricsListen string
	// AttestationResults is the attestation_results block; nil when
	// absent (Attest then returns no attestation result).
	AttestationResults *AttestationResultsConfig
	// PCRPolicy names the PCR-policy signing keys; zero: the broker's own.
	PCRPolicy PCRPolicyConfig
}

// LoadConfig reads, defaults and validates a configuration file. Every
// problem is reported in the returned error, one per line in file order, as
// "file:line:column: message": HCL's own (syntax, unknown or missing
// attributes, wrong types) and the configuration's (values, files), each at
// the attribute, list entry or block it is about. A file that does not
// parse reports only its syntax errors.
func LoadConfig(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("unable to read config: %w", err)
	}
	return ParseConfig(src, path)
}

// ParseConfig parses configuration source as LoadConfig does; filename
// resolves relative paths and labels errors.
func ParseConfig(src []byte, filename string) (*Config, error) {
	var p problems
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	p.add(diags)
	if diags.HasErrors() {
		// A body that does not parse cannot be checked any further.
		return nil, p.err()
	}
	var fc FileConfig
	body, _ := file.Body.(*hclsyntax.Body)
	p.add(nameAttributes(gohcl.DecodeBody(file.Body, nil, &fc), body))
	at := newSpot(body, filename)
	c := fc.build(filepath.Dir(filename), at, &p)
	c.Limits = fc.Limits.build(c.ChallengeTTL, at.block("limits", 0), &p)
	if !p.empty() {
		return nil, p.err()
	}
	c.File = filename
	return c, nil
}
