package broker

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
)

// FileConfig is the broker's configuration file (HCL) as decoded.
//
//	listen        = "127.0.0.1:8443"      # gRPC over TLS
//	data_dir      = "/var/lib/keybroker"  # CA, store; created 0700
//	server_names  = ["localhost", "127.0.0.1"]
//	challenge_ttl = "60s"
//	allow_sha1    = false
//	pcr_banks     = ["sha256", "sha384"]  # banks whose quotes count; default all
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
//	vault {                                # optional: the source of vault_kv and vault_pki releases
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
//
// Relative paths are relative to the configuration file's directory.
type FileConfig struct {
	Listen             string      `hcl:"listen,optional"`
	DataDir            string      `hcl:"data_dir"`
	ServerNames        []string    `hcl:"server_names,optional"`
	ChallengeTTL       string      `hcl:"challenge_ttl,optional"`
	AllowSHA1          bool        `hcl:"allow_sha1,optional"`
	PCRBanks           []string    `hcl:"pcr_banks,optional"`
	Policies           []string    `hcl:"policies"`
	PolicyPollInterval string      `hcl:"policy_poll_interval,optional"`
	EKAllow            []string    `hcl:"ek_allow,optional"`
	EKCAs              []EKCAFile  `hcl:"ek_ca,block"`
	SPIFFE             *SPIFFEFile `hcl:"spiffe,block"`
	Vault              *VaultFile  `hcl:"vault,block"`
}

// VaultFile is the vault block: the Vault the broker reads vault_kv
// secrets from and has issue vault_pki certificates, and how it logs in
// (exactly one of TokenFile and AppRole).
type VaultFile struct {
	Address   string       `hcl:"address"`
	CACert    string       `hcl:"ca_cert,optional"`
	TokenFile string       `hcl:"token_file,optional"`
	AppRole   *AppRoleFile `hcl:"approle,block"`
	Namespace string       `hcl:"namespace,optional"`
	// Range is where the block is, for errors; set by ParseConfig.
	Range hcl.Range `hcl:",def_range"`
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
	// Range is where the block is, for errors; set by ParseConfig.
	Range hcl.Range `hcl:",def_range"`
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
	// MinPolicyPollInterval is the shortest policy_poll_interval other
	// than 0 (polling disabled): every poll reads every policy file.
	MinPolicyPollInterval = 100 * time.Millisecond
)

// certExts are the file name extensions read from an ek_ca directory.
var certExts = []string{".pem", ".crt", ".cer"}

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
	AllowSHA1    bool
	// PCRBanks are the banks whose quotes count (verify.QuoteOpts.Banks);
	// empty: all.
	PCRBanks    []tpm2.TPMAlgID
	PolicyPaths []string
	// PolicyPollInterval is how often Start's watcher checks the files
	// under PolicyPaths and reloads the policies when one changed; zero
	// disables the watcher (SIGHUP and Running.ReloadPolicies still
	// reload). LoadConfig defaults it to DefaultPolicyPollInterval.
	PolicyPollInterval time.Duration
	Trust              verify.Trust
	// TrustDomain is the SPIFFE trust domain of the spiffe block; zero
	// when SPIFFE is not configured (x509_svid releases and workload SVIDs
	// are then refused).
	TrustDomain spiffeid.TrustDomain
	// Vault is the vault block; nil when absent (vault_kv and vault_pki
	// releases are then refused).
	Vault *VaultConfig
}

// LoadConfig reads, defaults and validates a configuration file, reporting
// every problem with its file and line.
func LoadConfig(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("unable to read config: %w", err)
	}
	return ParseConfig(src, path)
}

// ParseConfig parses configuration source; filename resolves relative paths
// and labels errors.
func ParseConfig(src []byte, filename string) (*Config, error) {
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	var fc FileConfig
	if diags := gohcl.DecodeBody(file.Body, nil, &fc); diags.HasErrors() {
		return nil, diags
	}
	c, err := fc.Build(filepath.Dir(filename), filename)
	if err != nil {
		return nil, err
	}
	c.File = filename
	return c, nil
}

// Build applies defaults, validates and resolves fc. base is the directory
// relative paths start from; name labels errors.
func (fc *FileConfig) Build(base, name string) (*Config, error) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	c := &Config{
		Listen:             fc.Listen,
		DataDir:            abs(fc.DataDir),
		ServerNames:        fc.ServerNames,
		ChallengeTTL:       DefaultChallengeTTL,
		AllowSHA1:          fc.AllowSHA1,
		PolicyPollInterval: DefaultPolicyPollInterval,
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if len(c.ServerNames) == 0 {
		c.ServerNames = []string{"localhost", "127.0.0.1"}
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(name+": "+format, args...)) }
	banks, err := verify.ParseBanks(fc.PCRBanks, fc.AllowSHA1)
	if err != nil {
		for _, e := range strings.Split(err.Error(), "\n") {
			bad("%s", e)
		}
	}
	c.PCRBanks = banks
	if fc.ChallengeTTL != "" {
		d, err := time.ParseDuration(fc.ChallengeTTL)
		switch {
		case err != nil:
			bad("challenge_ttl %q is not a duration", fc.ChallengeTTL)
		case d <= 0 || d > MaxChallengeTTL:
			bad("challenge_ttl must be between 1s and %s", MaxChallengeTTL)
		default:
			c.ChallengeTTL = d
		}
	}
	if fc.PolicyPollInterval != "" {
		d, err := time.ParseDuration(fc.PolicyPollInterval)
		switch {
		case err != nil:
			bad("policy_poll_interval %q is not a duration", fc.PolicyPollInterval)
		case d < 0:
			bad("policy_poll_interval cannot be negative")
		case d > 0 && d < MinPolicyPollInterval:
			bad("policy_poll_interval must be 0 (disabled) or at least %s", MinPolicyPollInterval)
		default:
			c.PolicyPollInterval = d
		}
	}
	switch {
	case c.DataDir == "":
		bad("data_dir cannot be empty")
	case len(fc.Policies) == 0:
		bad("policies cannot be empty: with no policy every node is refused")
	}
	for _, p := range fc.Policies {
		c.PolicyPaths = append(c.PolicyPaths, abs(p))
	}
	for _, h := range fc.EKAllow {
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 || hex.EncodeToString(b) != h {
			bad("ek_allow entry %q is not a lowercase hex SHA-256 EK hash", h)
			continue
		}
		c.Trust.EKHashes = append(c.Trust.EKHashes, h)
	}
	seen := map[string]bool{}
	for _, ca := range fc.EKCAs {
		if seen[ca.Name] {
			bad("ek_ca %q is defined twice", ca.Name)
			continue
		}
		seen[ca.Name] = true
		roots, rootErrs := loadPool(ca.Roots, abs)
		for _, err := range rootErrs {
			bad("ek_ca %q roots: %v", ca.Name, err)
		}
		inter, interErrs := loadPool(ca.Intermediates, abs)
		for _, err := range interErrs {
			bad("ek_ca %q intermediates: %v", ca.Name, err)
		}
		if len(rootErrs)+len(interErrs) > 0 {
			continue
		}
		c.Trust.CAs = append(c.Trust.CAs, verify.CA{Name: ca.Name, Roots: roots, Intermediates: inter})
	}
	if fc.SPIFFE != nil {
		at := name
		if r := fc.SPIFFE.Range; r.Filename != "" {
			at = fmt.Sprintf("%s:%d", r.Filename, r.Start.Line)
		}
		td, err := spiffeid.TrustDomainFromString(fc.SPIFFE.TrustDomain)
		switch {
		case fc.SPIFFE.TrustDomain == "":
			errs = append(errs, fmt.Errorf("%s: spiffe: trust_domain cannot be empty", at))
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: spiffe: trust_domain %q is not a trust domain: %w", at, fc.SPIFFE.TrustDomain, err))
		case td.Name() != fc.SPIFFE.TrustDomain:
			errs = append(errs, fmt.Errorf("%s: spiffe: trust_domain must be a name such as %q, not %q", at, td.Name(), fc.SPIFFE.TrustDomain))
		default:
			c.TrustDomain = td
		}
	}
	if fc.Vault != nil {
		at := name
		if r := fc.Vault.Range; r.Filename != "" {
			at = fmt.Sprintf("%s:%d", r.Filename, r.Start.Line)
		}
		var verrs []error
		c.Vault, verrs = fc.Vault.build(abs)
		for _, err := range verrs {
			errs = append(errs, fmt.Errorf("%s: vault: %w", at, err))
		}
	}
	c.Trust.AllowSHA1 = c.AllowSHA1
	if len(c.Trust.EKHashes) == 0 && len(c.Trust.CAs) == 0 {
		bad("no EK is trusted: set ek_allow or an ek_ca block")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// loadPool reads the certificates of an ek_ca list into a pool: each entry
// is a file or a directory (its *.pem, *.crt and *.cer files, not
// recursing). It returns every problem, each naming its file as written in
// the configuration (joined with the directory entry's name).
func loadPool(entries []string, abs func(string) string) (*x509.CertPool, []error) {
	pool := x509.NewCertPool()
	var errs []error
	for _, entry := range entries {
		fi, err := os.Stat(abs(entry))
		if err != nil {
			errs = append(errs, fmt.Errorf("unable to read %s: %w", entry, err))
			continue
		}
		if !fi.IsDir() {
			errs = append(errs, addCertFile(pool, entry, abs(entry))...)
			continue
		}
		des, err := os.ReadDir(abs(entry))
		if err != nil {
			errs = append(errs, fmt.Errorf("unable to read %s: %w", entry, err))
			continue
		}
		n := 0
		for _, de := range des {
			if !hasCertExt(de.Name()) {
				continue
			}
			name, path := filepath.Join(entry, de.Name()), filepath.Join(abs(entry), de.Name())
			if fi, err := os.Stat(path); err == nil && fi.IsDir() {
				continue
			}
			n++
			errs = append(errs, addCertFile(pool, name, path)...)
		}
		if n == 0 {
			errs = append(errs, fmt.Errorf("directory %s holds no *.pem, *.crt or *.cer file", entry))
		}
	}
	return pool, errs
}

func hasCertExt(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	for _, e := range certExts {
		if ext == e {
			return true
		}
	}
	return false
}

// addCertFile adds the certificates of one file to pool: PEM CERTIFICATE
// blocks (other block types are skipped), or DER. name labels errors.
func addCertFile(pool *x509.CertPool, name, path string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{fmt.Errorf("unable to read %s: %w", name, err)}
	}
	certs, err := parseCerts(data)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", name, err)}
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return nil
}

// parseCerts parses PEM (if data holds a PEM block) or DER certificates.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	if !bytes.Contains(data, []byte("-----BEGIN ")) {
		certs, err := x509.ParseCertificates(data)
		switch {
		case err != nil:
			return nil, fmt.Errorf("is neither PEM nor a DER certificate: %w", err)
		case len(certs) == 0:
			return nil, errors.New("holds no certificate")
		}
		return certs, nil
	}
	var certs []*x509.Certificate
	for i, rest := 1, data; ; i++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return certs, nil
}

// build validates the vault block; abs resolves relative paths.
func (vf *VaultFile) build(abs func(string) string) (*VaultConfig, []error) {
	vc := &VaultConfig{Address: vf.Address, CACert: abs(vf.CACert), TokenFile: abs(vf.TokenFile), Namespace: vf.Namespace}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	u, err := url.Parse(vf.Address)
	switch {
	case vf.Address == "":
		bad("address cannot be empty")
	case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || (u.Path != "" && u.Path != "/"):
		bad("address %q is not a URL such as \"https://vault.example.com:8200\"", vf.Address)
	case u.Scheme != "https":
		bad("address %q must use https: the broker sends its token and receives secrets", vf.Address)
	}
	if vf.CACert != "" {
		if data, err := os.ReadFile(vc.CACert); err != nil {
			bad("unable to read ca_cert %s: %v", vf.CACert, err)
		} else if !bytes.Contains(data, []byte("-----BEGIN ")) {
			bad("ca_cert %s: holds no PEM certificate", vf.CACert)
		} else if _, err := parseCerts(data); err != nil {
			bad("ca_cert %s: %v", vf.CACert, err)
		}
	}
	readable := func(what, path, shown string) {
		if b, err := os.ReadFile(path); err != nil {
			bad("unable to read %s %s: %v", what, shown, err)
		} else if len(bytes.TrimSpace(b)) == 0 {
			bad("%s %s is empty", what, shown)
		}
	}
	switch {
	case vf.TokenFile == "" && vf.AppRole == nil:
		bad("set token_file or an approle block")
	case vf.TokenFile != "" && vf.AppRole != nil:
		bad("set token_file or an approle block, not both")
	case vf.TokenFile != "":
		readable("token_file", vc.TokenFile, vf.TokenFile)
	default:
		ar := vf.AppRole
		vc.RoleID, vc.SecretIDFile, vc.AppRoleMount = ar.RoleID, abs(ar.SecretIDFile), ar.Mount
		if vc.AppRoleMount == "" {
			vc.AppRoleMount = "approle"
		}
		if ar.RoleID == "" {
			bad("approle: role_id cannot be empty")
		}
		if ar.SecretIDFile == "" {
			bad("approle: secret_id_file cannot be empty")
		} else {
			readable("approle: secret_id_file", vc.SecretIDFile, ar.SecretIDFile)
		}
	}
	return vc, errs
}
