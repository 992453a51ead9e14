package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker/ear"
	"github.com/keybroker/keybroker/broker/issue"
)

// AttestationResultsFile is the attestation_results block: with it, an
// allowed Attest returns an attestation result (package ear) signed by the
// result key, published by the GetAttestationResultKeys RPC and
// "keybroker ear jwks".
//
//	attestation_results {
//	  key_file = "ear-key.pem"  # ECDSA P-256 (PEM); default data_dir/ear/result-key.pem, created 0600
//	  ttl      = "5m"           # how long a result is valid (exp - iat); 1s to 24h, default 5m
//	}
type AttestationResultsFile struct {
	KeyFile string `hcl:"key_file,optional"`
	TTL     string `hcl:"ttl,optional"`
}

// AttestationResultsConfig is the parsed attestation_results block.
type AttestationResultsConfig struct {
	// KeyFile is the operator's result key, loaded as is; empty: the
	// broker's own in data_dir/ear (EARKeyFile), created on first start.
	KeyFile string
	TTL     time.Duration
}

// Defaults and bounds of the attestation_results block.
const (
	DefaultAttestationResultTTL = 5 * time.Minute
	MaxAttestationResultTTL     = 24 * time.Hour
	// EARDir holds the result key the broker makes (EARKeyFile) when
	// key_file is not set.
	EARDir     = "ear"
	EARKeyFile = "result-key.pem"
)

// build validates the attestation_results block; abs resolves relative
// paths. A key_file must hold an ECDSA P-256 key: the broker never writes
// an operator's key file.
func (af *AttestationResultsFile) build(abs func(string) string, at spot, p *problems) *AttestationResultsConfig {
	ac := &AttestationResultsConfig{KeyFile: abs(af.KeyFile), TTL: DefaultAttestationResultTTL}
	if d, ok := parseDuration(af.TTL, "ttl", at, p); ok {
		if d < time.Second || d > MaxAttestationResultTTL {
			p.at(at.attr("ttl"), "attestation_results: ttl must be between 1s and %s", MaxAttestationResultTTL)
		} else {
			ac.TTL = d
		}
	}
	switch {
	case at.has("key_file") && af.KeyFile == "":
		p.at(at.attr("key_file"), "attestation_results: key_file cannot be empty; leave it out for a key in data_dir")
	case af.KeyFile != "":
		if _, err := issue.LoadSigningKey(ac.KeyFile); err != nil {
			p.at(at.attr("key_file"), "attestation_results: key_file %s: %v", af.KeyFile, err)
		}
	}
	return ac
}

// ResultKeyPath is where the result key of c lives: key_file, or the
// broker's own in data_dir/ear.
func (c *Config) ResultKeyPath() string {
	if c.AttestationResults == nil {
		return ""
	}
	if c.AttestationResults.KeyFile != "" {
		return c.AttestationResults.KeyFile
	}
	return filepath.Join(c.DataDir, EARDir, EARKeyFile)
}

// loadResultSigner loads (or, for the broker's own key, creates) the result
// key of c; nil without an attestation_results block.
func loadResultSigner(c *Config) (*ear.Signer, error) {
	if c.AttestationResults == nil {
		return nil, nil
	}
	load := issue.LoadSigningKey
	if c.AttestationResults.KeyFile == "" {
		if err := os.MkdirAll(filepath.Join(c.DataDir, EARDir), 0o700); err != nil {
			return nil, fmt.Errorf("unable to create the result key's directory: %w", err)
		}
		load = issue.LoadOrCreateSigningKey
	}
	key, err := load(c.ResultKeyPath())
	if err != nil {
		return nil, err
	}
	return ear.NewSigner(key)
}

// LoadResultKeys returns the JWKS of c's result key, as the
// GetAttestationResultKeys RPC publishes it, without creating the key.
func LoadResultKeys(c *Config) ([]byte, error) {
	key, err := issue.LoadSigningKey(c.ResultKeyPath())
	if err != nil {
		return nil, err
	}
	s, err := ear.NewSigner(key)
	if err != nil {
		return nil, err
	}
	return s.JWKS()
}
