package provenance

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/verify"
)

var timeZero time.Time

// Selector values of type "signed" that a verified bundle makes hold.
const (
	// KeyPrefix: "key:<name>", the bundle is signed by the named key.
	KeyPrefix = "key:"
	// IdentityPrefix: "identity:<issuer>/<subject>", the bundle's
	// certificate chains to a trusted root declaring the issuer, and
	// names the subject.
	IdentityPrefix = "identity:"
)

// ErrNoSignature means that no trusted key or root verified the bundle
// for the artifact.
var ErrNoSignature = errors.New("no trusted signature")

// Verify verifies a Sigstore bundle (JSON, at most MaxBundleSize bytes)
// for the artifact whose SHA-256 is digest, offline, and returns the
// values of the signed selectors it makes hold ("key:<name>",
// "identity:<issuer>/<subject>"), sorted. A bundle signed by a key is tried
// against every trusted key; one with a certificate against every trusted
// root, whose issuer must be one the root declares. The bundle must sign
// the artifact itself (a message signature), or be a DSSE in-toto
// statement of build provenance (ProvenancePredicateTypes) whose subject
// is the artifact: other attestations that name the digest do not count. When nothing holds the
// error wraps ErrNoSignature and says, for each key or root, why it did not
// verify; it holds no secret (bundles and keys are public).
//
// Results are cached by (digest, SHA-256 of the bundle), so that a busy
// workload is verified once: a keyless signature was checked at the time
// its timestamp proves, so the result does not change with time.
func (t *Trust) Verify(digest []byte, bundleJSON []byte) ([]string, error) {
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("the artifact digest must be %d bytes", sha256.Size)
	}
	if len(bundleJSON) > MaxBundleSize {
		return nil, fmt.Errorf("the bundle exceeds %d bytes", MaxBundleSize)
	}
	key := cacheKey{artifact: [sha256.Size]byte(digest), bundle: sha256.Sum256(bundleJSON)}
	if r, ok := t.cache.get(key); ok {
		return slices.Clone(r.facts), r.err
	}
	facts, err := t.verify(digest, bundleJSON)
	t.cache.put(key, result{facts: facts, err: err})
	return slices.Clone(facts), err
}

func (t *Trust) verify(digest []byte, bundleJSON []byte) ([]string, error) {
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, fmt.Errorf("unable to parse the bundle: %w", err)
	}
	if err := checkContent(&b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoSignature, err)
	}
	vc, err := b.VerificationContent()
	if err != nil {
		return nil, fmt.Errorf("unable to read the bundle's verification material: %w", err)
	}
	var facts []string
	var errs []error
	if vc.Certificate() == nil {
		pol := verify.NewPolicy(verify.WithArtifactDigest("sha256", digest), verify.WithKey())
		for _, k := range t.keys {
			if _, err := k.verifier.Verify(&b, pol); err != nil {
				errs = append(errs, fmt.Errorf("signer %q: %w", k.name, err))
				continue
			}
			facts = append(facts, KeyPrefix+k.name)
		}
		if len(t.keys) == 0 {
			errs = append(errs, errors.New("the bundle is signed by a key and the policy trusts no signer"))
		}
	} else {
		// The identity is read from the verified certificate and
		// compared by the selectors that name it, so any identity is
		// accepted here.
		pol := verify.NewPolicy(verify.WithArtifactDigest("sha256", digest), verify.WithoutIdentitiesUnsafe())
		for _, r := range t.roots {
			res, err := r.verifier.Verify(&b, pol)
			if err != nil {
				errs = append(errs, fmt.Errorf("trusted root %q: %w", r.name, err))
				continue
			}
			if res.Signature == nil || res.Signature.Certificate == nil {
				errs = append(errs, fmt.Errorf("trusted root %q: no certificate identity in the result", r.name))
				continue
			}
			iss, san := res.Signature.Certificate.Issuer, res.Signature.Certificate.SubjectAlternativeName
			switch {
			case !slices.Contains(r.issuers, iss):
				errs = append(errs, fmt.Errorf("trusted root %q: certificate issuer %q is not one the root declares", r.name, iss))
			case san == "" || len(san) > MaxSubjectSize:
				errs = append(errs, fmt.Errorf("trusted root %q: certificate subject must be 1 to %d bytes", r.name, MaxSubjectSize))
			default:
				facts = append(facts, IdentityPrefix+iss+"/"+san)
			}
		}
		if len(t.roots) == 0 {
			errs = append(errs, errors.New("the bundle holds a certificate and the policy trusts no root"))
		}
	}
	if len(facts) == 0 {
		return nil, fmt.Errorf("%w: %w", ErrNoSignature, errors.Join(errs...))
	}
	slices.Sort(facts)
	return slices.Compact(facts), nil
}

// InTotoPayloadType is the DSSE payload type of an in-toto statement.
const InTotoPayloadType = "application/vnd.in-toto+json"

// ProvenancePredicateTypes are the in-toto predicate types of the DSSE
// attestations that count as a signature of the artifact they name: SLSA
// build provenance, a statement that the signer built it. Any other
// attestation (an SBOM, a vulnerability scan, a test report) names the
// artifact's digest without vouching for it, and is refused.
var ProvenancePredicateTypes = []string{
	"https://slsa.dev/provenance/v1",
	"https://slsa.dev/provenance/v0.2",
}

// checkContent accepts a bundle signing the artifact itself (a message
// signature) or a DSSE in-toto statement with a predicate type of
// ProvenancePredicateTypes. The statement is the payload the signature
// covers, so reading it before verification only ever refuses.
func checkContent(b *bundle.Bundle) error {
	switch c := b.GetContent().(type) {
	case *protobundle.Bundle_MessageSignature:
		return nil
	case *protobundle.Bundle_DsseEnvelope:
		env := c.DsseEnvelope
		if env.GetPayloadType() != InTotoPayloadType {
			return fmt.Errorf("the bundle's DSSE payload type %q is not %s", env.GetPayloadType(), InTotoPayloadType)
		}
		var st struct {
			PredicateType string `json:"predicateType"`
		}
		if err := json.Unmarshal(env.GetPayload(), &st); err != nil {
			return fmt.Errorf("unable to parse the bundle's in-toto statement: %w", err)
		}
		if !slices.Contains(ProvenancePredicateTypes, st.PredicateType) {
			return fmt.Errorf("the bundle's attestation has predicate type %q, not build provenance", st.PredicateType)
		}
		return nil
	default:
		return errors.New("the bundle holds neither a message signature nor a DSSE envelope")
	}
}

// maxCache bounds the cached results of one Trust; when full it starts
// over.
const maxCache = 1024

type cacheKey struct {
	artifact, bundle [sha256.Size]byte
}

type result struct {
	facts []string
	err   error
}

type resultCache struct {
	mu sync.Mutex
	m  map[cacheKey]result
}

func newResultCache() *resultCache { return &resultCache{m: map[cacheKey]result{}} }

func (c *resultCache) get(k cacheKey) (result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[k]
	return r, ok
}

func (c *resultCache) put(k cacheKey, r result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxCache {
		clear(c.m)
	}
	c.m[k] = r
}
