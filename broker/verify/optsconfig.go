package verify

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/idlog"
)

// OptsConfig is the configuration of verification as operators write it,
// with the same names in the broker's broker.hcl and in the Vault auth
// method's config endpoint. ParseOpts is its one parser.
type OptsConfig struct {
	// EKAllow lists EK hashes trusted with or without a certificate
	// (ek_allow). nil: not written.
	EKAllow []string
	// EKCAs are the ek_ca entries, in the order they were written.
	EKCAs []CAConfig
	// AllowSHA1 is allow_sha1 (Opts.AllowSHA1).
	AllowSHA1 bool
	// PCRBanks is pcr_banks, bank names such as "sha256"; nil counts
	// every bank, an empty list is an error.
	PCRBanks []string
	// IdentityLogPCR is identity_log_pcr (Opts.IdentityLogPCR): the PCR
	// the nodes' identity record extends, 10-15; nil: idlog.DefaultPCR
	// (15); 0 turns the record off (Opts.IdentityLogOff).
	IdentityLogPCR *int
}

// CAConfig is one ek_ca entry: a name and where its roots and
// intermediates were read from.
type CAConfig struct {
	Name          string
	Roots         []CertSource
	Intermediates []CertSource
}

// CertSource is what was read for one entry of an ek_ca's roots or
// intermediates: a file's content, or a PEM bundle written in the
// configuration itself. An entry naming a directory gives one source per
// file.
type CertSource struct {
	// Entry is the index of the roots or intermediates entry it was read
	// for, to locate its problems.
	Entry int
	// Name names it in problems, such as a file name; empty: unnamed.
	Name string
	// Data holds certificates: PEM (every CERTIFICATE block) or, unless
	// PEMOnly, DER (ParseCertificates).
	Data    []byte
	PEMOnly bool
	// Err, if set, is why the entry could not be read; it is reported as
	// the entry's problem, and Data is ignored.
	Err error
}

// ConfigProblem is one problem ParseOpts found, located for the front end
// to point at: broker.hcl reports it at its file:line, the Vault auth
// method in its error response.
type ConfigProblem struct {
	// Attr is the attribute it is about: "ek_allow", "pcr_banks",
	// "ek_ca", "identity_log_pcr", or "" for the configuration as a whole.
	Attr string
	// Index is the entry of ek_allow or pcr_banks, or the index of the
	// ek_ca in OptsConfig.EKCAs; -1: the attribute as a whole.
	Index int
	// List is, for an ek_ca, "roots" or "intermediates" (with Entry, the
	// CertSource.Entry, or -1 for the list as a whole); "" for its name.
	List  string
	Entry int
	Err   error
}

func (p ConfigProblem) Error() string { return p.Err.Error() }

// ParseOpts builds the Opts that c configures, reporting every problem: an
// ek_allow entry that is not an EK hash, an ek_ca name that is empty,
// padded or repeated, roots that are missing, a certificate that does not
// parse, pcr_banks that are empty, unknown, repeated or sha1 without
// allow_sha1, an identity_log_pcr outside 10-15 (idlog.ValidPCR) other
// than 0, and no EK trusted at all. The Opts are meaningful only
// without problems; they are not indexed (Opts.Index).
func ParseOpts(c OptsConfig) (Opts, []ConfigProblem) {
	var ps []ConfigProblem
	bad := func(attr string, index int, format string, args ...any) {
		ps = append(ps, ConfigProblem{Attr: attr, Index: index, Entry: -1, Err: fmt.Errorf(format, args...)})
	}
	o := Opts{AllowSHA1: c.AllowSHA1}
	for i, h := range c.EKAllow {
		if !ValidEKHash(h) {
			bad("ek_allow", i, "ek_allow entry %q is not a lowercase hex SHA-256 EK hash", h)
			continue
		}
		o.Trust.EKHashes = append(o.Trust.EKHashes, h)
	}
	seen := map[string]bool{}
	for i, ca := range c.EKCAs {
		n := len(ps)
		switch {
		case seen[ca.Name]:
			bad("ek_ca", i, "ek_ca %q is defined twice", ca.Name)
			continue
		case ca.Name == "" || strings.TrimSpace(ca.Name) != ca.Name:
			bad("ek_ca", i, "ek_ca name %q cannot be empty or start or end with spaces", ca.Name)
		}
		seen[ca.Name] = true
		if len(ca.Roots) == 0 {
			ps = append(ps, ConfigProblem{Attr: "ek_ca", Index: i, List: "roots", Entry: -1,
				Err: fmt.Errorf("ek_ca %q roots: cannot be empty", ca.Name)})
		}
		roots := certPool(ca.Roots, func(s CertSource, err error) {
			ps = append(ps, ConfigProblem{Attr: "ek_ca", Index: i, List: "roots", Entry: s.Entry,
				Err: fmt.Errorf("ek_ca %q roots: %w", ca.Name, err)})
		})
		inter := certPool(ca.Intermediates, func(s CertSource, err error) {
			ps = append(ps, ConfigProblem{Attr: "ek_ca", Index: i, List: "intermediates", Entry: s.Entry,
				Err: fmt.Errorf("ek_ca %q intermediates: %w", ca.Name, err)})
		})
		if len(ps) == n {
			o.Trust.CAs = append(o.Trust.CAs, CA{Name: ca.Name, Roots: roots, Intermediates: inter})
		}
	}
	switch {
	case c.EKAllow == nil && len(c.EKCAs) == 0:
		bad("", -1, "no EK is trusted: set ek_allow or ek_ca")
	case len(c.EKAllow) == 0 && len(c.EKCAs) == 0:
		bad("ek_allow", -1, "no EK is trusted: ek_allow is empty and there is no ek_ca")
	}
	switch pcr := c.IdentityLogPCR; {
	case pcr == nil:
	case *pcr == 0:
		o.IdentityLogOff = true
	default:
		if err := idlog.ValidPCR(*pcr); err != nil {
			bad("identity_log_pcr", -1, "identity_log_pcr: %v (0 turns the identity record off)", err)
		}
		o.IdentityLogPCR = *pcr
	}
	o.Banks = parseBanks(c.PCRBanks, c.AllowSHA1, func(i int, format string, args ...any) { bad("pcr_banks", i, format, args...) })
	return o, ps
}

// certPool reads sources into a pool, reporting each one that does not
// read or parse to bad.
func certPool(sources []CertSource, bad func(CertSource, error)) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, s := range sources {
		if s.Err != nil {
			bad(s, s.Err)
			continue
		}
		parse := ParseCertificates
		if s.PEMOnly {
			parse = ParsePEMCertificates
		}
		certs, err := parse(s.Data)
		if err != nil {
			if s.Name != "" {
				err = fmt.Errorf("%s: %w", s.Name, err)
			}
			bad(s, err)
			continue
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
	}
	return pool
}

// parseBanks reads pcr_banks, reporting each problem to bad with the
// entry's index (-1: the list).
func parseBanks(names []string, allowSHA1 bool, bad func(i int, format string, args ...any)) []tpm2.TPMAlgID {
	if names == nil {
		return nil
	}
	if len(names) == 0 {
		bad(-1, "pcr_banks cannot be empty; leave it out to count every bank")
		return nil
	}
	var out []tpm2.TPMAlgID
	for i, n := range names {
		id, ok := ParseBank(n)
		switch {
		case !ok:
			bad(i, "pcr_banks: %q is not sha1, sha256, sha384 or sha512", n)
		case id == tpm2.TPMAlgSHA1 && !allowSHA1:
			bad(i, "pcr_banks: sha1 needs allow_sha1")
		case slices.Contains(out, id):
			bad(i, "pcr_banks: %q is listed twice", n)
		default:
			out = append(out, id)
		}
	}
	return out
}

// PEMBundle is an ek_ca's roots or intermediates written as one PEM bundle
// (the Vault auth method's config): one source, none when empty.
func PEMBundle(bundle string) []CertSource {
	if bundle == "" {
		return nil
	}
	return []CertSource{{Data: []byte(bundle), PEMOnly: true}}
}
