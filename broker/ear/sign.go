package ear

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"

	"github.com/keybroker/keybroker/broker/issue"
)

// Signer signs attestation results with the broker's result key.
type Signer struct {
	key    *ecdsa.PrivateKey
	kid    string
	signer jose.Signer
}

// NewSigner returns a Signer with key, an ECDSA P-256 key (ES256).
func NewSigner(key *ecdsa.PrivateKey) (*Signer, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return nil, errors.New("the attestation result key must be an ECDSA P-256 key")
	}
	kid, err := issue.KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, opts)
	if err != nil {
		return nil, fmt.Errorf("unable to make the attestation result signer: %w", err)
	}
	return &Signer{key: key, kid: kid, signer: signer}, nil
}

// KeyID returns the kid of the result key, as the JWT header and the JWKS
// name it.
func (s *Signer) KeyID() string { return s.kid }

// Sign returns r as a compact JWS (a JWT) whose header names the key's kid.
func (s *Signer) Sign(r *Result) (string, error) {
	payload, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("unable to encode the attestation result: %w", err)
	}
	jws, err := s.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("unable to sign the attestation result: %w", err)
	}
	return jws.CompactSerialize()
}

// JWKS returns the JWK Set relying parties verify results with: the
// result key's public half, with its kid, alg "ES256" and use "sig".
func (s *Signer) JWKS() ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key: s.key.Public(), KeyID: s.kid, Algorithm: string(jose.ES256), Use: "sig",
	}}}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("unable to encode the attestation result keys: %w", err)
	}
	return b, nil
}
