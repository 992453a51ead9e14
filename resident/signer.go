package resident

import (
	"crypto"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"
)

// TPMFunc runs fn with the TPM that holds a key's parent, open for the
// time of fn. A Signer reaches the TPM only through it, one signature at a
// time, so that an agent that opens its TPM per use (swtpm serves one
// client at a time) need not hold it open between signatures. Calls must
// not overlap with other users of the same TPM connection.
type TPMFunc func(fn func(rw io.ReadWriter) error) error

// signer signs with a resident key inside its TPM.
type signer struct {
	key *Key
	pub crypto.PublicKey
	tpm TPMFunc
}

// Signer returns a crypto.Signer for k whose Sign signs inside the TPM
// reached through tpm: it recreates the parent storage key
// (ParentTemplate), loads k from its public and private blobs under it,
// signs through go-tpm-tools' client.Key signer — in a PolicyPCR session
// over k.PCRs when the key is bound to them, which the TPM refuses
// (TPM_RC_POLICY_FAIL) once those PCRs no longer hold the values the key
// was created for — and flushes what it loaded. k needs Public and
// Private; the key is an ECDSA P-256 key with SHA-256 (KeyTemplate).
func (k *Key) Signer(tpm TPMFunc) (crypto.Signer, error) {
	if tpm == nil {
		return nil, errors.New("no TPM to sign with")
	}
	if len(k.Private) < 2 {
		return nil, errors.New("resident key has no private part")
	}
	pub, err := k.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("unable to read the resident key's public area: %w", err)
	}
	return &signer{key: k, pub: pub, tpm: tpm}, nil
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

func (s *signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) (sig []byte, err error) {
	err = s.tpm(func(rw io.ReadWriter) error {
		sig, err = s.signIn(rw, rand, digest, opts)
		return err
	})
	return sig, err
}

func (s *signer) signIn(rw io.ReadWriter, rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	tpm := transport.FromReadWriter(rw)
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](s.key.Public)
	if err != nil {
		return nil, fmt.Errorf("unable to read the resident key's public area: %w", err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](s.key.Private)
	if err != nil {
		return nil, fmt.Errorf("unable to read the resident key's private blob: %w", err)
	}
	parent, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(ParentTemplate())}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to create the parent storage key: %w", err)
	}
	defer flush(tpm, parent.ObjectHandle)
	loaded, err := tpm2.Load{
		ParentHandle: tpm2.NamedHandle{Handle: parent.ObjectHandle, Name: parent.Name},
		InPrivate:    *priv,
		InPublic:     tpm2.New2B(*pub),
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to load the resident key: %w", err)
	}
	var session client.Session = client.NullSession{}
	if p := s.key.PCRs; p != nil {
		sel := legacy.PCRSelection{Hash: legacy.Algorithm(p.Bank)}
		for _, i := range p.PCRs {
			sel.PCRs = append(sel.PCRs, int(i))
		}
		if session, err = client.NewPCRSession(rw, sel); err != nil {
			flush(tpm, loaded.ObjectHandle)
			return nil, fmt.Errorf("unable to start a PCR policy session: %w", err)
		}
	}
	key, err := client.LoadCachedKey(rw, tpmutil.Handle(loaded.ObjectHandle), session)
	if err != nil {
		session.Close()
		flush(tpm, loaded.ObjectHandle)
		return nil, fmt.Errorf("unable to use the resident key: %w", err)
	}
	defer key.Close() // flushes the key and the session
	signer, err := key.GetSigner()
	if err != nil {
		return nil, fmt.Errorf("unable to sign with the resident key: %w", err)
	}
	sig, err := signer.Sign(rand, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("the TPM did not sign with the resident key: %w", err)
	}
	return sig, nil
}
