package ear

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Input limits of Verify.
const (
	MaxResultSize = 16 << 10 // a result JWT
	MaxJWKSSize   = 64 << 10 // a JWKS document
)

// VerifyOpts tune Verify. The zero value is the strict default: the result
// must carry the relying party's nonce, and the clock has no leeway.
type VerifyOpts struct {
	// Nonce is the nonce the relying party had the node send (8 to 64
	// bytes): the result's eat_nonce must be exactly it. Required unless
	// IgnoreNonceInsecure.
	Nonce []byte
	// IgnoreNonceInsecure accepts a result whatever its eat_nonce, or
	// without one: its freshness then rests on exp alone, and a result
	// obtained for another relying party is accepted too.
	IgnoreNonceInsecure bool
	// Leeway is the clock skew tolerated on iat and exp; default none.
	Leeway time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Verify checks an attestation result token against jwks (the broker's
// published JWKS) and returns its claims: an ES256 signature by the key the
// header's kid names, the profile, the claims' names and types (unknown
// claims are refused), iat and exp against the clock, and eat_nonce
// against opts.Nonce. It does not judge the appraisal: the caller reads
// Submods[Submod].Status and the trustworthiness vector.
func Verify(token string, jwks []byte, opts VerifyOpts) (*Result, error) {
	switch {
	case len(token) > MaxResultSize:
		return nil, fmt.Errorf("attestation result exceeds %d bytes", MaxResultSize)
	case len(jwks) > MaxJWKSSize:
		return nil, fmt.Errorf("jwks exceeds %d bytes", MaxJWKSSize)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		return nil, fmt.Errorf("unable to parse jwks: %w", err)
	}
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, fmt.Errorf("unable to parse attestation result: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("attestation result must carry exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys := set.Key(kid)
	if kid == "" || len(keys) != 1 {
		return nil, fmt.Errorf("attestation result key %q is not in the jwks", kid)
	}
	key := keys[0]
	switch {
	case key.Algorithm != "" && key.Algorithm != string(jose.ES256):
		return nil, fmt.Errorf("jwks key %q is for %s, not ES256", kid, key.Algorithm)
	case key.Use != "" && key.Use != "sig":
		return nil, fmt.Errorf("jwks key %q is not a signing key", kid)
	}
	payload, err := jws.Verify(key.Public().Key)
	if err != nil {
		return nil, fmt.Errorf("attestation result signature does not verify: %w", err)
	}
	r, err := decode(payload)
	if err != nil {
		return nil, err
	}
	if err := checkTime(r, opts); err != nil {
		return nil, err
	}
	if err := checkNonce(r, opts); err != nil {
		return nil, err
	}
	return r, nil
}

// decode parses the claims strictly and checks what each must hold.
func decode(payload []byte) (*Result, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var r Result
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("unable to decode attestation result claims: %w", err)
	}
	if dec.More() {
		return nil, errors.New("unable to decode attestation result claims: trailing data")
	}
	var problems []string
	if r.Profile != Profile {
		problems = append(problems, fmt.Sprintf("eat_profile is %q, not %q", r.Profile, Profile))
	}
	if r.IssuedAt <= 0 {
		problems = append(problems, "iat is missing")
	}
	if r.Expiry <= r.IssuedAt {
		problems = append(problems, "exp is missing or not after iat")
	}
	if r.VerifierID.Build == "" || r.VerifierID.Developer == "" {
		problems = append(problems, "ear.verifier-id needs build and developer")
	}
	if r.ReceiptID == "" || r.EKHash == "" {
		problems = append(problems, "keybroker.receipt-id and keybroker.ek-hash are required")
	}
	if len(r.Submods) == 0 {
		problems = append(problems, "submods is empty")
	}
	for _, name := range slices.Sorted(maps.Keys(r.Submods)) {
		a := r.Submods[name]
		if _, ok := tierRank[a.Status]; !ok {
			problems = append(problems, fmt.Sprintf("submods[%q]: ear.status %q is not a trust tier", name, a.Status))
		}
	}
	if len(problems) > 0 {
		return nil, errors.New("invalid attestation result: " + strings.Join(problems, "; "))
	}
	return &r, nil
}

func checkTime(r *Result, opts VerifyOpts) error {
	now := time.Now()
	if opts.Now != nil {
		now = opts.Now()
	}
	iat, exp := time.Unix(r.IssuedAt, 0), time.Unix(r.Expiry, 0)
	switch {
	case !now.Add(-opts.Leeway).Before(exp):
		return fmt.Errorf("attestation result expired at %s", exp.UTC().Format(time.RFC3339))
	case now.Add(opts.Leeway).Before(iat):
		return fmt.Errorf("attestation result is issued in the future (%s)", iat.UTC().Format(time.RFC3339))
	}
	return nil
}

func checkNonce(r *Result, opts VerifyOpts) error {
	if opts.IgnoreNonceInsecure {
		return nil
	}
	if len(opts.Nonce) == 0 {
		return errors.New("no nonce to check the attestation result against (VerifyOpts.Nonce)")
	}
	if r.Nonce == "" {
		return errors.New("attestation result carries no nonce")
	}
	got, err := base64.RawURLEncoding.DecodeString(r.Nonce)
	if err != nil {
		return fmt.Errorf("attestation result eat_nonce is not base64url: %w", err)
	}
	if len(got) < MinNonceSize || len(got) > MaxNonceSize {
		return fmt.Errorf("attestation result eat_nonce must be %d to %d bytes, not %d", MinNonceSize, MaxNonceSize, len(got))
	}
	if subtle.ConstantTimeCompare(got, opts.Nonce) != 1 {
		return errors.New("attestation result is for another nonce")
	}
	return nil
}
