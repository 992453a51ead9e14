// Package receiptchain signs checkpoints of a store's receipt chain and
// verifies a chain offline: every receipt links to the one before it by
// hash (store.Receipt Seq and Prev), the sequence has no gap, checkpoints
// carry valid signatures of a published key, and the newest checkpoint
// covers the newest receipt. The formats are in docs/receipts.md.
//
//	v := receiptchain.NewVerifier(keys)
//	for each exported line { v.Add(line) }
//	rep := v.Report()
//	if !rep.OK() { ... rep.Problems[0] names the first bad receipt ... }
package receiptchain

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/store"
)

// Signer signs checkpoints with an ECDSA P-256 key.
type Signer struct {
	key   *ecdsa.PrivateKey
	keyID string
	now   func() time.Time
}

// NewSigner returns a Signer of key, which must be P-256.
func NewSigner(key *ecdsa.PrivateKey) (*Signer, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return nil, errors.New("checkpoint key must be an ECDSA P-256 key")
	}
	id, err := issue.KeyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	return &Signer{key: key, keyID: id, now: time.Now}, nil
}

// KeyID is the key ID checkpoints name: issue.KeyID of the public key.
func (s *Signer) KeyID() string { return s.keyID }

// PublicKeyPEM is the public key as a PEM "PUBLIC KEY" block (PKIX), as
// "keybroker receipts checkpoint-key" prints it.
func (s *Signer) PublicKeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(&s.key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("unable to encode the checkpoint key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// Seal signs a checkpoint of head, now; it is a store.Sealer.
func (s *Signer) Seal(head store.ChainHead) (store.Checkpoint, error) {
	c := store.Checkpoint{Seq: head.Seq, Head: head.Hash, Time: s.now().UTC().Round(0), KeyID: s.keyID}
	sum := sha256.Sum256(c.SignedMessage())
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, sum[:])
	if err != nil {
		return store.Checkpoint{}, fmt.Errorf("unable to sign checkpoint: %w", err)
	}
	c.Signature = sig
	return c, nil
}

var _ store.Sealer = (*Signer)(nil).Seal

// Keys are the public keys checkpoints may be signed with, by key ID.
type Keys map[string]*ecdsa.PublicKey

// maxKeysPEM bounds a file of public keys.
const maxKeysPEM = 1 << 20

// ParseKeys parses PEM "PUBLIC KEY" blocks (P-256 keys, as
// "keybroker receipts checkpoint-key" prints them) into keys; it refuses
// other blocks, other keys and trailing data.
func ParseKeys(data []byte, into Keys) error {
	if len(data) > maxKeysPEM {
		return fmt.Errorf("more than %d bytes of keys", maxKeysPEM)
	}
	n := 0
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			if len(bytes.TrimSpace(data)) != 0 {
				return errors.New("data that is not a pem block")
			}
			break
		}
		data = rest
		if block.Type != "PUBLIC KEY" {
			return fmt.Errorf("unexpected pem block %q, want \"PUBLIC KEY\"", block.Type)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return fmt.Errorf("unable to parse public key: %w", err)
		}
		key, ok := pub.(*ecdsa.PublicKey)
		if !ok || key.Curve != elliptic.P256() {
			return errors.New("not an ECDSA P-256 public key")
		}
		id, err := issue.KeyID(key)
		if err != nil {
			return err
		}
		into[id] = key
		n++
	}
	if n == 0 {
		return errors.New("no pem public key found")
	}
	return nil
}

// VerifyCheckpoint checks c's signature under the key it names.
func (k Keys) VerifyCheckpoint(c store.Checkpoint) error {
	pub, ok := k[c.KeyID]
	if !ok {
		return fmt.Errorf("signed by key %s, which is not a checkpoint key given", c.KeyID)
	}
	sum := sha256.Sum256(c.SignedMessage())
	if !ecdsa.VerifyASN1(pub, sum[:], c.Signature) {
		return fmt.Errorf("signature does not verify under key %s", c.KeyID)
	}
	return nil
}
