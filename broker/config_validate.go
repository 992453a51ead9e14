package broker

import (
	"bytes"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
)

// build applies defaults, validates and resolves fc into the parsed form,
// recording every problem in p at the range at locates. base is the
// directory relative paths start from. An attribute HCL already refused
// (missing or of the wrong type) is not reported again. The Config is
// meaningful only when p stays empty.
func (fc *FileConfig) build(base string, at spot, p *problems) *Config {
	abs := func(path string) string {
		if path == "" || filepath.IsAbs(path) {
			return path
		}
		return filepath.Join(base, path)
	}
	c := &Config{
		Listen:             fc.Listen,
		DataDir:            abs(fc.DataDir),
		ServerNames:        fc.ServerNames,
		ChallengeTTL:       DefaultChallengeTTL,
		PolicyPollInterval: DefaultPolicyPollInterval,
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.at(at.attr("listen"), "listen %q is not a host:port address such as %q", fc.Listen, DefaultListen)
	}
	c.MetricsListen = parseMetricsListen(fc.MetricsListen, c.Listen, at, p)
	if len(c.ServerNames) == 0 {
		c.ServerNames = []string{"localhost", "127.0.0.1"}
	}
	if d, ok := parseDuration(fc.ChallengeTTL, "challenge_ttl", at, p); ok {
		if d <= 0 || d > MaxChallengeTTL {
			p.at(at.attr("challenge_ttl"), "challenge_ttl must be between 1s and %s", MaxChallengeTTL)
		} else {
			c.ChallengeTTL = d
		}
	}
	if d, ok := parseDuration(fc.PolicyPollInterval, "policy_poll_interval", at, p); ok {
		switch {
		case d < 0:
			p.at(at.attr("policy_poll_interval"), "policy_poll_interval cannot be negative")
		case d > 0 && d < MinPolicyPollInterval:
			p.at(at.attr("policy_poll_interval"), "policy_poll_interval must be 0 (disabled) or at least %s", MinPolicyPollInterval)
		default:
			c.PolicyPollInterval = d
		}
	}
	if at.has("data_dir") && fc.DataDir == "" {
		p.at(at.attr("data_dir"), "data_dir cannot be empty")
	}
	if at.has("policies") && fc.Policies != nil && len(fc.Policies) == 0 {
		p.at(at.attr("policies"), "policies cannot be empty: with no policy every node is refused")
	}
	for i, path := range fc.Policies {
		if path == "" {
			p.at(at.entry("policies", i), "policies[%d] cannot be empty", i)
			continue
		}
		c.PolicyPaths = append(c.PolicyPaths, abs(path))
	}
	c.Verify = fc.buildVerify(abs, at, p)
	if fc.SPIFFE != nil {
		c.TrustDomain = fc.SPIFFE.build(at.block("spiffe", 0), p)
	}
	if fc.Vault != nil {
		c.Vault = fc.Vault.build(abs, at.block("vault", 0), p)
	}
	if fc.Kubernetes != nil {
		c.Kubernetes = fc.Kubernetes.build(abs, at.block("kubernetes", 0), p)
	}
	c.Store = fc.buildStore(abs, at, p)
	if fc.AttestationResults != nil {
		c.AttestationResults = fc.AttestationResults.build(abs, at.block("attestation_results", 0), p)
	}
	if fc.PCRPolicy != nil {
		c.PCRPolicy = fc.PCRPolicy.build(abs, c.Store.Kind, at.block("pcr_policy", 0), p)
	}
	c.ChallengeKeyRotation = challenge.DefaultKeyRotation
	if d, ok := parseDays(fc.ChallengeKeyRotation, "challenge_key_rotation", at, p); ok {
		if d < time.Hour || d > 90*24*time.Hour {
			p.at(at.attr("challenge_key_rotation"), "challenge_key_rotation must be between 1h and 90d")
		} else {
			c.ChallengeKeyRotation = d
		}
	}
	c.ReceiptCheckpoints = fc.ReceiptCheckpoints.buildCheckpoints(abs, at.block("receipt_checkpoints", 0), p)
	c.ReceiptRetention = DefaultReceiptRetention
	if d, ok := parseDays(fc.ReceiptRetention, "receipt_retention", at, p); ok {
		if d != 0 && d < 24*time.Hour {
			p.at(at.attr("receipt_retention"), "receipt_retention must be 0 (keep every receipt) or at least 1d")
		} else {
			c.ReceiptRetention = d
		}
	}
	return c
}

// parseMetricsListen checks metrics_listen, when written: a host:port
// address with a numeric port, apart from listen.
func parseMetricsListen(addr, listen string, at spot, p *problems) string {
	if !at.has("metrics_listen") {
		return ""
	}
	rng := at.attr("metrics_listen")
	_, port, err := net.SplitHostPort(addr)
	switch {
	case addr == "":
		p.at(rng, "metrics_listen cannot be empty; leave it out to serve no metrics")
	case err != nil:
		p.at(rng, "metrics_listen %q is not a host:port address such as \"127.0.0.1:9464\"", addr)
	case !validPort(port):
		p.at(rng, "metrics_listen %q: port %q is not a number from 0 to 65535", addr, port)
	case addr == listen && port != "0":
		p.at(rng, "metrics_listen %q is the listen address; give the metrics their own port", addr)
	default:
		return addr
	}
	return ""
}

// validPort reports whether port is a decimal port number.
func validPort(port string) bool {
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535 && strconv.Itoa(n) == port
}

// parseDays parses an optional duration attribute that may also be a number
// of days ("90d"); ok is false when it is absent or malformed (then
// recorded in p).
func parseDays(s, name string, at spot, p *problems) (time.Duration, bool) {
	if days, found := strings.CutSuffix(s, "d"); found && at.has(name) {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 36500 {
			p.at(at.attr(name), "%s %q is not a number of days such as \"90d\" or a duration such as \"24h\"", name, s)
			return 0, false
		}
		return time.Duration(n) * 24 * time.Hour, true
	}
	return parseDuration(s, name, at, p)
}

// parseDuration parses an optional duration attribute; ok is false when it
// is absent or not a duration (then recorded in p).
func parseDuration(s, name string, at spot, p *problems) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.at(at.attr(name), "%s %q is not a duration such as \"60s\"", name, s)
		return 0, false
	}
	return d, true
}

// buildVerify parses allow_sha1, pcr_banks, identity_log_pcr, ek_allow and the ek_ca blocks
// with verify.ParseOpts, the parser the Vault auth method's config endpoint
// uses too, each problem at what it is about.
func (fc *FileConfig) buildVerify(abs func(string) string, at spot, p *problems) verify.Opts {
	oc := verify.OptsConfig{EKAllow: fc.EKAllow, AllowSHA1: fc.AllowSHA1, PCRBanks: fc.PCRBanks, IdentityLogPCR: fc.IdentityLogPCR, IdentityLogRequired: fc.IdentityLogReq}
	for _, ca := range fc.EKCAs {
		oc.EKCAs = append(oc.EKCAs, verify.CAConfig{Name: ca.Name,
			Roots: readCertSources(ca.Roots, abs), Intermediates: readCertSources(ca.Intermediates, abs)})
	}
	o, problems := verify.ParseOpts(oc)
	for _, cp := range problems {
		if cp.Attr == "" && at.has("ek_allow") {
			continue // ek_allow written, its value refused by HCL
		}
		p.at(problemRange(cp, at), "%v", cp.Err)
	}
	return o
}

// problemRange is where in the file a problem of verify.ParseOpts is.
func problemRange(cp verify.ConfigProblem, at spot) hcl.Range {
	switch {
	case cp.Attr == "":
		return at.def
	case cp.Attr == "ek_ca":
		in := at.block("ek_ca", cp.Index)
		switch {
		case cp.List == "":
			return in.label
		case cp.Entry < 0:
			return in.attr(cp.List)
		}
		return in.entry(cp.List, cp.Entry)
	case cp.Index < 0:
		return at.attr(cp.Attr)
	}
	return at.entry(cp.Attr, cp.Index)
}

// build checks the spiffe block's trust domain.
func (sf *SPIFFEFile) build(at spot, p *problems) spiffeid.TrustDomain {
	td, err := spiffeid.TrustDomainFromString(sf.TrustDomain)
	rng := at.attr("trust_domain")
	switch {
	case !at.has("trust_domain"):
		// HCL reported it missing.
	case sf.TrustDomain == "":
		p.at(rng, "spiffe: trust_domain cannot be empty")
	case err != nil:
		p.at(rng, "spiffe: trust_domain %q is not a trust domain: %v", sf.TrustDomain, err)
	case td.Name() != sf.TrustDomain:
		p.at(rng, "spiffe: trust_domain must be a name such as %q, not %q", td.Name(), sf.TrustDomain)
	default:
		return td
	}
	return spiffeid.TrustDomain{}
}

// build validates the vault block, each problem at the attribute or block
// it is about; abs resolves relative paths.
func (vf *VaultFile) build(abs func(string) string, at spot, p *problems) *VaultConfig {
	vc := &VaultConfig{Address: vf.Address, CACert: abs(vf.CACert), TokenFile: abs(vf.TokenFile), Namespace: vf.Namespace}
	u, err := url.Parse(vf.Address)
	rng := at.attr("address")
	switch {
	case !at.has("address"):
		// HCL reported it missing.
	case vf.Address == "":
		p.at(rng, "vault: address cannot be empty")
	case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || (u.Path != "" && u.Path != "/"):
		p.at(rng, "vault: address %q is not a URL such as \"https://vault.example.com:8200\"", vf.Address)
	case u.Scheme != "https":
		p.at(rng, "vault: address %q must use https: the broker sends its token and receives secrets", vf.Address)
	}
	if vf.CACert != "" {
		rng := at.attr("ca_cert")
		if data, err := os.ReadFile(vc.CACert); err != nil {
			p.at(rng, "vault: unable to read ca_cert %s: %v", vf.CACert, err)
		} else if !bytes.Contains(data, []byte("-----BEGIN ")) {
			p.at(rng, "vault: ca_cert %s: holds no PEM certificate", vf.CACert)
		} else if _, err := verify.ParseCertificates(data); err != nil {
			p.at(rng, "vault: ca_cert %s: %v", vf.CACert, err)
		}
	}
	switch {
	case vf.TokenFile == "" && vf.AppRole == nil:
		p.at(at.def, "vault: set token_file or an approle block")
	case vf.TokenFile != "" && vf.AppRole != nil:
		p.at(at.attr("token_file"), "vault: set token_file or an approle block, not both")
	}
	if vf.TokenFile != "" {
		readable(p, at.attr("token_file"), "vault: ", "token_file", vc.TokenFile, vf.TokenFile)
	}
	if vf.AppRole != nil {
		vf.AppRole.build(vc, abs, at.block("approle", 0), p)
	}
	return vc
}

// build validates the approle block into vc.
func (ar *AppRoleFile) build(vc *VaultConfig, abs func(string) string, at spot, p *problems) {
	vc.RoleID, vc.SecretIDFile, vc.AppRoleMount = ar.RoleID, abs(ar.SecretIDFile), ar.Mount
	if vc.AppRoleMount == "" {
		vc.AppRoleMount = "approle"
	}
	if at.has("role_id") && ar.RoleID == "" {
		p.at(at.attr("role_id"), "vault: approle: role_id cannot be empty")
	}
	switch {
	case !at.has("secret_id_file"):
		// HCL reported it missing.
	case ar.SecretIDFile == "":
		p.at(at.attr("secret_id_file"), "vault: approle: secret_id_file cannot be empty")
	default:
		readable(p, at.attr("secret_id_file"), "vault: approle: ", "secret_id_file", vc.SecretIDFile, ar.SecretIDFile)
	}
}

// readable records a problem at rng unless the file at path can be read and
// holds more than white space; prefix, what and shown name it.
func readable(p *problems, rng hcl.Range, prefix, what, path, shown string) {
	if b, err := os.ReadFile(path); err != nil {
		p.at(rng, "%sunable to read %s %s: %v", prefix, what, shown, err)
	} else if len(bytes.TrimSpace(b)) == 0 {
		p.at(rng, "%s%s %s is empty", prefix, what, shown)
	}
}
