package resident

import (
	"crypto"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// ParentTemplate is the storage primary key resident keys are created
// under: the ECC P-256 storage key of TCG's provisioning guidance with an
// empty unique field, the template the TSS2 key file consumers (OpenSSL's
// tpm2 provider, tpm2-tss-engine) recreate under the owner hierarchy for a
// key whose parent is TPM_RH_OWNER. The same template yields the same key
// in the same TPM (its seed does not change until TPM2_Clear), so a
// key file written now loads after a reboot.
func ParentTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			NoDA: true, Restricted: true, Decrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
			},
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// KeyTemplate is a resident key: an unrestricted ECDSA P-256 signing key
// (SHA-256) created in the TPM, which cannot leave it or its parent, used
// with an empty password.
func KeyTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// Key is a key created inside the TPM for one tpm_resident release, and
// the AK's certify of it. Private is the TPM's own encryption of the key
// under the parent (ParentTemplate's primary): only that TPM can load it.
type Key struct {
	Name string
	// PCRs, if set, is what the key is bound to (CreateOpts.PCRs): it
	// signs only in a PolicyPCR session over them.
	PCRs        *PCRs
	Public      []byte // TPMT_PUBLIC
	Private     []byte // TPM2B_PRIVATE
	CertifyInfo []byte // TPMS_ATTEST of type CERTIFY
	Signature   []byte // TPMT_SIGNATURE by the AK
}

// PublicKey is the key's public half.
func (k *Key) PublicKey() (crypto.PublicKey, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err != nil {
		return nil, err
	}
	return tpm2.Pub(*pub)
}

// CreateOpts tune CreateWith. The zero value is Create's key.
type CreateOpts struct {
	// PCRs, if set, binds the key to the values these PCRs hold now: its
	// authPolicy is TPM2_PolicyPCR over them (computed by the TPM in a
	// trial session) and userWithAuth is clear, so its empty password
	// does not authorize signing. It still certifies with the password
	// (the ADMIN role: adminWithPolicy is clear). OpenSSL's tpm2 provider
	// cannot start the policy session such a key needs (the agent signs
	// with it itself, Key.Signer).
	PCRs *PCRs
}

// Create creates a resident key for release name under the parent
// storage key and certifies it with the AK at akHandle (a loaded
// restricted signing key with an empty password, such as go-tpm-tools'
// AK) over QualifyingData(secret, name). It flushes everything it loaded.
func Create(rw io.ReadWriter, akHandle uint32, secret []byte, name string) (*Key, error) {
	return CreateWith(rw, akHandle, secret, name, CreateOpts{})
}

// CreateWith is Create with opts.
func CreateWith(rw io.ReadWriter, akHandle uint32, secret []byte, name string, opts CreateOpts) (*Key, error) {
	if name == "" || len(name) > MaxNameSize {
		return nil, fmt.Errorf("resident key name must be 1 to %d bytes", MaxNameSize)
	}
	tpm := transport.FromReadWriter(rw)
	tmpl := KeyTemplate()
	if opts.PCRs != nil {
		policy, err := trialPolicyPCR(tpm, opts.PCRs)
		if err != nil {
			return nil, err
		}
		tmpl.AuthPolicy = tpm2.TPM2BDigest{Buffer: policy}
		tmpl.ObjectAttributes.UserWithAuth = false
	}
	parent, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(ParentTemplate()),
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to create the parent storage key: %w", err)
	}
	defer flush(tpm, parent.ObjectHandle)
	created, err := tpm2.Create{
		ParentHandle: tpm2.NamedHandle{Handle: parent.ObjectHandle, Name: parent.Name},
		InPublic:     tpm2.New2B(tmpl),
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to create the key: %w", err)
	}
	loaded, err := tpm2.Load{
		ParentHandle: tpm2.NamedHandle{Handle: parent.ObjectHandle, Name: parent.Name},
		InPrivate:    created.OutPrivate,
		InPublic:     created.OutPublic,
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to load the key: %w", err)
	}
	defer flush(tpm, loaded.ObjectHandle)
	ak, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(akHandle)}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to read the AK: %w", err)
	}
	cert, err := tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: tpm2.TPMHandle(akHandle), Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: QualifyingData(secret, name)},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to certify the key with the AK: %w", err)
	}
	pub, err := created.OutPublic.Contents()
	if err != nil {
		return nil, err
	}
	if len(cert.CertifyInfo.Bytes()) == 0 {
		return nil, errors.New("the TPM returned an empty certify")
	}
	return &Key{
		Name:        name,
		PCRs:        opts.PCRs,
		Public:      tpm2.Marshal(pub),
		Private:     tpm2.Marshal(created.OutPrivate),
		CertifyInfo: cert.CertifyInfo.Bytes(),
		Signature:   tpm2.Marshal(cert.Signature),
	}, nil
}

func flush(tpm transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tpm)
}

// trialPolicyPCR is the digest of TPM2_PolicyPCR over the current values
// of pcrs, as the TPM computes it in a trial session.
func trialPolicyPCR(tpm transport.TPM, pcrs *PCRs) ([]byte, error) {
	if len(pcrs.PCRs) == 0 {
		return nil, errors.New("a PCR-bound key needs at least one PCR")
	}
	sess, closeSession, err := tpm2.PolicySession(tpm, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		return nil, fmt.Errorf("unable to start a trial policy session: %w", err)
	}
	defer closeSession()
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrs.Selection()}).Execute(tpm); err != nil {
		return nil, fmt.Errorf("unable to compute the PCR policy (%s): %w", pcrs, err)
	}
	d, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to read the PCR policy: %w", err)
	}
	return d.PolicyDigest.Buffer, nil
}
