package softtpm

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-tpm/tpm2"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// ErrPolicy reports that the node's PCRs do not satisfy a sealed
// credential's PolicyPCR, as a TPM refuses TPM2_Unseal (TPM_RC_POLICY_FAIL).
var ErrPolicy = errors.New("policy check failed: the PCRs do not hold the sealed values")

// Open opens a credential the broker released: TPM2_Import of its import
// blob under the EK (seed decrypted with label "DUPLICATE", outer HMAC
// checked over the object's name, TPMT_SENSITIVE decrypted and bound to the
// public area), then TPM2_Unseal of the 32-byte CEK — with an empty
// password for a TPM_BOUND object, under TPM2_PolicyPCR over the node's
// current PCRs for a PCR_SEALED one — then the JWE's decryption. A blob made
// for another EK is refused with ErrIntegrity, a sealed one whose PCRs
// changed with ErrPolicy.
func (n *Node) Open(cred *pb.Credential) ([]byte, error) {
	blob, err := sealing.BlobFromProto(cred.GetBlob())
	if err != nil {
		return nil, err
	}
	if len(cred.GetJwe()) > sealing.MaxJWESize {
		return nil, errors.New("credential JWE is too large")
	}
	cek, err := n.importUnseal(blob.GetDuplicate(), blob.GetEncryptedSeed(), blob.GetPublicArea(), cred.GetBlob().GetPcrs())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", sealing.ErrImport, err)
	}
	defer clear(cek)
	if len(cek) != sealing.CEKSize {
		return nil, fmt.Errorf("credential content key has %d bytes, want %d", len(cek), sealing.CEKSize)
	}
	obj, err := jose.ParseEncrypted(cred.GetJwe(), []jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("unable to parse JWE: %w", err)
	}
	out, err := obj.Decrypt(cek)
	if err != nil {
		return nil, fmt.Errorf("unable to decrypt JWE: %w", err)
	}
	return out, nil
}

// importUnseal is TPM2_Import, TPM2_Load and TPM2_Unseal of a sealed data
// object: dup is the TPM2B_PRIVATE body, seed the TPM2B_ENCRYPTED_SECRET
// body, public the TPMT_PUBLIC; pcrs, when set, is the PolicyPCR selection
// the unseal session runs.
func (n *Node) importUnseal(dup, seed, public []byte, pcrs *pb.PCRValues) ([]byte, error) {
	pub, err := decodeKeyedHashPublic(public)
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	// The public area as decoded is its one canonical encoding: the name
	// is that of the bytes received.
	name, err := objectName(pub.nameAlg, public)
	if err != nil {
		return nil, err
	}
	plain, err := n.unwrap(seed, labelDuplicate, dup, name)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	body, err := tpm2b(plain, len(plain))
	if err != nil {
		return nil, fmt.Errorf("duplicate is not a TPM2B_SENSITIVE: %w", err)
	}
	sens, err := decodeSensitive(body)
	if err != nil {
		return nil, fmt.Errorf("duplicate is not a TPMT_SENSITIVE: %w", err)
	}
	data, err := sealedData(pub, sens)
	if err != nil {
		return nil, err
	}
	if err := n.authorizeUnseal(pub, sens, pcrs); err != nil {
		return nil, err
	}
	return bytes.Clone(data), nil
}

// sealedData checks what TPM2_Load and TPM2_Unseal check of a sealed data
// object — sensitive type, no sign or decrypt attribute, the public area's
// unique bound to the sensitive data — and returns that data.
func sealedData(pub *keyedHashPublic, sens *objectSensitive) ([]byte, error) {
	if sens.sensitiveType != tpm2.TPMAlgKeyedHash {
		return nil, errors.New("sensitive area type does not match the public area")
	}
	if pub.attributes&(attrSignEncrypt|attrDecrypt) != 0 {
		return nil, errors.New("object is not a sealed data object")
	}
	h, err := pub.nameAlg.Hash()
	if err != nil {
		return nil, fmt.Errorf("object name algorithm: %w", err)
	}
	d := h.New()
	d.Write(sens.seedValue)
	d.Write(sens.sensitive)
	if subtle.ConstantTimeCompare(d.Sum(nil), pub.unique) != 1 {
		return nil, errors.New("public area is not bound to the sensitive area")
	}
	return sens.sensitive, nil
}

// authorizeUnseal is the unseal's authorization: without pcrs, a password
// session with an empty password (userWithAuth and an empty authValue);
// with pcrs, a policy session (SHA-256) in which TPM2_PolicyPCR over that
// selection ran on the node's current values, whose digest must be the
// object's authPolicy.
func (n *Node) authorizeUnseal(pub *keyedHashPublic, sens *objectSensitive, pcrs *pb.PCRValues) error {
	if pcrs == nil {
		if pub.attributes&attrUserWithAuth == 0 {
			return errors.New("object needs a policy session and the credential names no PCRs")
		}
		if len(sens.authValue) != 0 {
			return errors.New("object has a password")
		}
		return nil
	}
	digest, err := n.policyPCR(tpm2.TPMAlgID(pcrs.GetHashAlg()), slices.Sorted(maps.Keys(pcrs.GetValues())))
	if err != nil {
		return err
	}
	if len(pub.authPolicy) == 0 || subtle.ConstantTimeCompare(digest, pub.authPolicy) != 1 {
		return ErrPolicy
	}
	return nil
}

// policyPCR returns the SHA-256 policy digest of one TPM2_PolicyPCR over
// the selection, computed with the node's current values.
func (n *Node) policyPCR(bank tpm2.TPMAlgID, indices []uint32) ([]byte, error) {
	if len(indices) == 0 {
		return nil, errors.New("PolicyPCR selects no PCR")
	}
	sel := make([]byte, 3)
	n.mu.Lock()
	b, err := n.bank(bank)
	n.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("PolicyPCR: %w", err)
	}
	d := sha256Hash.New()
	for _, i := range indices {
		if i >= NumPCRs {
			return nil, fmt.Errorf("PolicyPCR selects PCR %d, the TPM has 0-23", i)
		}
		sel[i/8] |= 1 << (i % 8)
		d.Write(b[i])
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	cmd := tpm2.PolicyPCR{
		PcrDigest: tpm2.TPM2BDigest{Buffer: d.Sum(nil)},
		Pcrs:      tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: bank, PCRSelect: sel}}},
	}
	if err := cmd.Update(calc); err != nil {
		return nil, fmt.Errorf("PolicyPCR: %w", err)
	}
	return calc.Hash().Digest, nil
}
