package pcrpolicy

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/sealing"
)

// Signer holds the broker's PCR-policy signing keys: the current key signs
// approvals; blobs are bound to it and, when set, to the next key.
type Signer struct {
	current *ecdsa.PrivateKey
	next    *ecdsa.PrivateKey
	signers [][]byte // TPMT_PUBLICs: current, then next
}

// NewSigner returns a Signer for current and (optional) next, both ECC
// P-256 and different.
func NewSigner(current, next *ecdsa.PrivateKey) (*Signer, error) {
	if current == nil {
		return nil, errors.New("no PCR-policy signing key")
	}
	s := &Signer{current: current, next: next}
	for _, k := range []*ecdsa.PrivateKey{current, next} {
		if k == nil {
			continue
		}
		pub, err := sealing.SignerPublic(&k.PublicKey)
		if err != nil {
			return nil, err
		}
		s.signers = append(s.signers, pub)
	}
	if next != nil && current.PublicKey.Equal(&next.PublicKey) {
		return nil, errors.New("the next PCR-policy signing key is the current one")
	}
	return s, nil
}

// Authorization is what a release of bank and pcrs for node (its EK hash)
// with policy counter counter is sealed to: the signers (current, next),
// the node and the counter.
func (s *Signer) Authorization(bank tpm2.TPMAlgID, pcrs []uint32, node string, counter *tpm2.TPMSNVPublic) *sealing.Authorization {
	return &sealing.Authorization{Bank: uint32(bank), PCRs: append([]uint32(nil), pcrs...), Node: []byte(node), Signers: s.signers, Counter: counter}
}

// PublicKeysPEM returns the signing keys' public keys as PEM "PUBLIC KEY"
// blocks (PKIX), the current first, for operators to pin.
func (s *Signer) PublicKeysPEM() ([]byte, error) {
	var out []byte
	for _, k := range []*ecdsa.PrivateKey{s.current, s.next} {
		if k == nil {
			continue
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("unable to encode the PCR-policy signing key: %w", err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	return out, nil
}
