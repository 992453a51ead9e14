package broker

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/keybroker/keybroker/broker/verify"
)

// FileConfig is the broker's configuration file (HCL) as decoded.
//
//	listen        = "127.0.0.1:8443"      # gRPC over TLS
//	data_dir      = "/var/lib/keybroker"  # CA, store; created 0700
//	server_names  = ["localhost", "127.0.0.1"]
//	challenge_ttl = "60s"
//	allow_sha1    = false
//	policies      = ["policies"]          # files or directories of *.hcl
//	ek_allow      = ["<EK hash>"]         # EKs trusted without a certificate
//	ek_ca "swtpm" {                        # EK certificate authorities
//	  roots         = ["swtpm-root.pem"]
//	  intermediates = ["swtpm-intermediate.pem"]
//	}
//
// Relative paths are relative to the configuration file's directory.
type FileConfig struct {
	Listen       string     `hcl:"listen,optional"`
	DataDir      string     `hcl:"data_dir"`
	ServerNames  []string   `hcl:"server_names,optional"`
	ChallengeTTL string     `hcl:"challenge_ttl,optional"`
	AllowSHA1    bool       `hcl:"allow_sha1,optional"`
	Policies     []string   `hcl:"policies"`
	EKAllow      []string   `hcl:"ek_allow,optional"`
	EKCAs        []EKCAFile `hcl:"ek_ca,block"`
}

// EKCAFile is an ek_ca block.
type EKCAFile struct {
	Name          string   `hcl:"name,label"`
	Roots         []string `hcl:"roots"`
	Intermediates []string `hcl:"intermediates,optional"`
}

// Defaults for FileConfig.
const (
	DefaultListen       = "127.0.0.1:8443"
	DefaultChallengeTTL = 60 * time.Second
	MaxChallengeTTL     = 10 * time.Minute
)

// Config is the parsed configuration: paths resolved, durations parsed, EK
// CAs loaded.
type Config struct {
	Listen       string
	DataDir      string
	ServerNames  []string
	ChallengeTTL time.Duration
	AllowSHA1    bool
	PolicyPaths  []string
	Trust        verify.Trust
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
	return fc.Build(filepath.Dir(filename), filename)
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
		Listen:       fc.Listen,
		DataDir:      abs(fc.DataDir),
		ServerNames:  fc.ServerNames,
		ChallengeTTL: DefaultChallengeTTL,
		AllowSHA1:    fc.AllowSHA1,
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if len(c.ServerNames) == 0 {
		c.ServerNames = []string{"localhost", "127.0.0.1"}
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(name+": "+format, args...)) }
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
		roots, err := loadPool(ca.Roots, abs)
		if err != nil {
			bad("ek_ca %q roots: %v", ca.Name, err)
			continue
		}
		inter, err := loadPool(ca.Intermediates, abs)
		if err != nil {
			bad("ek_ca %q intermediates: %v", ca.Name, err)
			continue
		}
		c.Trust.CAs = append(c.Trust.CAs, verify.CA{Name: ca.Name, Roots: roots, Intermediates: inter})
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

func loadPool(files []string, abs func(string) string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	for _, f := range files {
		pemBytes, err := os.ReadFile(abs(f))
		if err != nil {
			return nil, fmt.Errorf("unable to read %s: %w", f, err)
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("%s holds no PEM certificate", f)
		}
	}
	return pool, nil
}
