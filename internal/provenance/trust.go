package provenance

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/keybroker/keybroker/internal/workloadentry"
)

// Bounds on trust material and bundles.
const (
	// MaxBundleSize bounds a Sigstore bundle the agent reads (a few KiB
	// in practice, more with a certificate chain).
	MaxBundleSize = 256 << 10
	// MaxTrustedRootSize bounds a trusted_root.json.
	MaxTrustedRootSize = 1 << 20
	// MaxPublicKeySize bounds a signer's public key (PEM or DER).
	MaxPublicKeySize = 16 << 10
	// MaxKeys and MaxRoots bound the signers and trusted roots of a Trust.
	MaxKeys  = 64
	MaxRoots = 16
	// MaxIssuers bounds the issuers of one trusted root.
	MaxIssuers = 32
	// MaxSubjectSize bounds an identity's issuer and subject.
	MaxSubjectSize = 1024
)

// CheckName checks a signer or trusted root name: they appear in
// selectors (signed:key:<name>), so no colons or slashes.
func CheckName(name string) error { return workloadentry.CheckTrustName(name) }

// Material is trust material as policies hold it and the broker sends it:
// what NewTrust parses.
type Material struct {
	Keys  []Key
	Roots []Root
}

// Key is a public key a policy trusts to sign workload executables, by
// name (selector signed:key:<name>).
type Key struct {
	Name string
	// DER is the key in PKIX (SubjectPublicKeyInfo) DER form.
	DER []byte
}

// Root is a Sigstore trusted root (trusted_root.json: Fulcio CAs,
// timestamp authorities, transparency and CT logs) with the OIDC issuers
// whose certificates the policy accepts from it.
type Root struct {
	Name    string
	JSON    []byte
	Issuers []string
}

// ParsePublicKey reads a public key in PEM ("PUBLIC KEY", as cosign
// generate-key-pair writes it) or PKIX DER form and returns its DER. It
// accepts ECDSA (P-256, P-384, P-521), Ed25519 and RSA (2048 bits or more).
func ParsePublicKey(data []byte) ([]byte, error) {
	if len(data) == 0 || len(data) > MaxPublicKeySize {
		return nil, fmt.Errorf("a public key must be 1 to %d bytes", MaxPublicKeySize)
	}
	der := data
	if blk, rest := pem.Decode(data); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block %q is not a PUBLIC KEY", blk.Type)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, errors.New("unexpected data after the PUBLIC KEY block")
		}
		der = blk.Bytes
	}
	if _, err := loadVerifier(der); err != nil {
		return nil, err
	}
	return slices.Clone(der), nil
}

func loadVerifier(der []byte) (signature.Verifier, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("unable to parse the public key: %w", err)
	}
	v, err := signature.LoadDefaultVerifier(pub)
	if err != nil {
		return nil, fmt.Errorf("unsupported public key: %w", err)
	}
	return v, nil
}

// ParseTrustedRoot parses a Sigstore trusted_root.json (media type
// application/vnd.dev.sigstore.trustedroot+json;version=0.1). It must list
// at least one certificate authority: keyless certificates are verified
// against it.
func ParseTrustedRoot(data []byte) (*root.TrustedRoot, error) {
	if len(data) == 0 || len(data) > MaxTrustedRootSize {
		return nil, fmt.Errorf("a trusted root must be 1 to %d bytes", MaxTrustedRootSize)
	}
	tr, err := root.NewTrustedRootFromJSON(data)
	if err != nil {
		return nil, fmt.Errorf("unable to parse the trusted root: %w", err)
	}
	if len(tr.FulcioCertificateAuthorities()) == 0 {
		return nil, errors.New("the trusted root lists no certificate authority")
	}
	if len(tr.TimestampingAuthorities()) == 0 && len(tr.RekorLogs()) == 0 {
		return nil, errors.New("the trusted root lists no timestamp authority and no transparency log: nothing could vouch for when a short-lived certificate signed")
	}
	return tr, nil
}

// CheckIssuer checks an OIDC issuer a trusted root accepts: an https (or
// http) URL without query or fragment, not ending in "/".
func CheckIssuer(iss string) error {
	switch {
	case len(iss) > MaxSubjectSize:
		return fmt.Errorf("issuer is longer than %d bytes", MaxSubjectSize)
	case !strings.HasPrefix(iss, "https://") && !strings.HasPrefix(iss, "http://"):
		return fmt.Errorf("issuer %q must be an https:// URL", iss)
	case strings.HasSuffix(iss, "/") || strings.ContainsAny(iss, "?# \t\n"):
		return fmt.Errorf("issuer %q must not end in '/' or hold '?', '#' or spaces", iss)
	}
	return nil
}

// SplitIdentity splits the value of a signed:identity selector,
// "<issuer>/<subject>", using the issuers the trusted roots declare: the
// issuer is the declared issuer that the value starts with, followed by
// "/". NewTrust refuses declared issuers where one is a prefix of another
// so that the split is never ambiguous.
func SplitIdentity(value string, issuers []string) (issuer, subject string, err error) {
	for _, iss := range issuers {
		if s, ok := strings.CutPrefix(value, iss+"/"); ok {
			if s == "" || len(s) > MaxSubjectSize {
				return "", "", fmt.Errorf("identity %q: the subject after issuer %q must be 1 to %d bytes", value, iss, MaxSubjectSize)
			}
			return iss, s, nil
		}
	}
	return "", "", fmt.Errorf("identity %q does not start with an issuer a trusted root declares, followed by '/'", value)
}

// Trust is the parsed trust material of a node's workload entries: the
// signers' keys and the trusted roots. Build it with NewTrust; it is safe
// for concurrent use and caches verification results (Verify).
type Trust struct {
	keys   []trustedKey
	roots  []trustedRoot
	digest [sha256.Size]byte
	cache  *resultCache
}

type trustedKey struct {
	name     string
	verifier *verify.Verifier
}

type trustedRoot struct {
	name     string
	issuers  []string
	verifier *verify.Verifier
}

// NewTrust parses keys and roots, reporting every problem. Names must be
// unique among keys and among roots, and no issuer may be declared twice or
// be a prefix of another followed by "/".
func NewTrust(keys []Key, roots []Root) (*Trust, error) {
	if len(keys) > MaxKeys || len(roots) > MaxRoots {
		return nil, fmt.Errorf("at most %d signers and %d trusted roots", MaxKeys, MaxRoots)
	}
	t := &Trust{cache: newResultCache()}
	h := sha256.New()
	var errs []error
	seen := map[string]bool{}
	for _, k := range keys {
		if err := CheckName(k.Name); err != nil {
			errs = append(errs, fmt.Errorf("signer: %w", err))
			continue
		}
		if seen["key:"+k.Name] {
			errs = append(errs, fmt.Errorf("signer %q is listed twice", k.Name))
			continue
		}
		seen["key:"+k.Name] = true
		v, err := keyVerifier(k.DER)
		if err != nil {
			errs = append(errs, fmt.Errorf("signer %q: %w", k.Name, err))
			continue
		}
		t.keys = append(t.keys, trustedKey{name: k.Name, verifier: v})
		fmt.Fprintf(h, "key %q %x\n", k.Name, k.DER)
	}
	var allIssuers []string
	for _, r := range roots {
		if err := CheckName(r.Name); err != nil {
			errs = append(errs, fmt.Errorf("trusted root: %w", err))
			continue
		}
		if seen["root:"+r.Name] {
			errs = append(errs, fmt.Errorf("trusted root %q is listed twice", r.Name))
			continue
		}
		seen["root:"+r.Name] = true
		v, err := rootVerifier(r.JSON)
		if err != nil {
			errs = append(errs, fmt.Errorf("trusted root %q: %w", r.Name, err))
			continue
		}
		if len(r.Issuers) == 0 || len(r.Issuers) > MaxIssuers {
			errs = append(errs, fmt.Errorf("trusted root %q: 1 to %d issuers are required", r.Name, MaxIssuers))
			continue
		}
		for _, iss := range r.Issuers {
			if err := CheckIssuer(iss); err != nil {
				errs = append(errs, fmt.Errorf("trusted root %q: %w", r.Name, err))
			}
		}
		allIssuers = append(allIssuers, r.Issuers...)
		t.roots = append(t.roots, trustedRoot{name: r.Name, issuers: slices.Clone(r.Issuers), verifier: v})
		fmt.Fprintf(h, "root %q %q %x\n", r.Name, r.Issuers, sha256.Sum256(r.JSON))
	}
	errs = append(errs, CheckIssuerSet(allIssuers)...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	h.Sum(t.digest[:0])
	return t, nil
}

// CheckIssuerSet refuses an issuer declared twice, or one that is
// another followed by "/...": "<issuer>/<subject>" would then split two
// ways.
func CheckIssuerSet(issuers []string) []error {
	var errs []error
	for i, a := range issuers {
		for _, b := range issuers[i+1:] {
			switch {
			case a == b:
				errs = append(errs, fmt.Errorf("issuer %q is declared twice", a))
			case strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/"):
				errs = append(errs, fmt.Errorf("issuers %q and %q make signed:identity selectors ambiguous: one is a prefix of the other", a, b))
			}
		}
	}
	return errs
}

// keyVerifier verifies bundles signed by one public key: no certificate,
// and no timestamp needed (a key has no validity period here).
func keyVerifier(der []byte) (*verify.Verifier, error) {
	sv, err := loadVerifier(der)
	if err != nil {
		return nil, err
	}
	key := root.NewExpiringKey(sv, timeZero, timeZero)
	tm := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })
	v, err := verify.NewVerifier(tm, verify.WithNoObserverTimestamps())
	if err != nil {
		return nil, fmt.Errorf("unable to build the key verifier: %w", err)
	}
	return v, nil
}

// rootVerifier verifies keyless bundles against a trusted root, asking for
// what the root can vouch for: always one observer timestamp (a signed
// timestamp from a listed timestamp authority, or the integrated time of an
// entry in a listed transparency log) within the certificate's validity;
// an inclusion in a listed transparency log when the root lists one; a
// signed certificate timestamp when it lists CT logs.
func rootVerifier(data []byte) (*verify.Verifier, error) {
	tr, err := ParseTrustedRoot(data)
	if err != nil {
		return nil, err
	}
	opts := []verify.VerifierOption{verify.WithObserverTimestamps(1)}
	if len(tr.RekorLogs()) > 0 {
		opts = append(opts, verify.WithTransparencyLog(1))
	}
	if len(tr.CTLogs()) > 0 {
		opts = append(opts, verify.WithSignedCertificateTimestamps(1))
	}
	v, err := verify.NewVerifier(tr, opts...)
	if err != nil {
		return nil, fmt.Errorf("unable to build the trusted root verifier: %w", err)
	}
	return v, nil
}

// Digest identifies the trust material: equal digests, equal trust.
func (t *Trust) Digest() [sha256.Size]byte { return t.digest }

// Empty reports whether t trusts nothing.
func (t *Trust) Empty() bool { return t == nil || len(t.keys)+len(t.roots) == 0 }

// hashSHA256 is the artifact digest algorithm of executables.
const hashSHA256 = crypto.SHA256
