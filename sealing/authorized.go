package sealing

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"
)

// policyRefPrefix starts the policyRef of every keybroker PCR-policy
// approval; the PCR selection and the node follow (see policyRef).
const policyRefPrefix = "keybroker pcr-policy v1 "

// MaxNodeRef bounds Authorization.Node.
const MaxNodeRef = 128

// MaxSigners bounds the signing keys an authorized blob names (the TPM's
// PolicyOR takes at most eight branches).
const MaxSigners = 8

// Authorization binds an envelope to approvals instead of literal PCR
// values (pcr_policy = "authorized"): the CEK's object has the authPolicy
// PolicyAuthorize(signer) for each signer, joined by a PolicyOR when there
// are several, so it opens in any state some signer approved.
type Authorization struct {
	// Bank (a TPM_ALG_ID) and PCRs are the PCR selection the approvals
	// must cover: it is the blob's policyRef, so an approval over fewer
	// PCRs, or another bank, never opens the envelope.
	Bank uint32
	PCRs []uint32
	// Node names the node the envelope is for (the broker uses its EK
	// hash), 1 to MaxNodeRef bytes: it is part of the policyRef too, so an
	// approval made for one node never opens another node's envelope.
	Node []byte
	// Signers are the TPMT_PUBLICs of the PCR-policy signing keys (ECC
	// P-256, see SignerPublic) whose approvals open the envelope: the
	// current key and, while a rotation is prepared, the next one. 1 to
	// MaxSigners; the order is part of the policy.
	Signers [][]byte
	// Counter, when set, is the node's policy-version NV counter (see
	// CounterPublic): each approval then holds only while the counter is at
	// most the approval's version, so incrementing the counter revokes
	// every approval made before.
	Counter *tpm2.TPMSNVPublic
}

// Approval is a PCR-policy signing key's approval of one state: a signature
// over the approved policy PolicyPCR(PCRs) [∧ PolicyNV(counter ≤ Version)].
type Approval struct {
	// PCRs is the approved state: one bank and its values.
	PCRs *tpmpb.PCRs
	// Version bounds the node's policy counter (unused without a counter).
	Version uint64
	// Signer is the signing key's TPMT_PUBLIC.
	Signer []byte
	// Signature is a TPMT_SIGNATURE (ECDSA, SHA-256) over
	// SHA-256(approvedPolicy || policyRef), policyRef naming the selection
	// of PCRs and the node.
	Signature []byte
}

// SignerPublic returns the TPMT_PUBLIC under which a TPM loads a PCR-policy
// signing key (ECC P-256, ECDSA with SHA-256) to check its approvals. The
// broker publishes it and names it in every authorized blob.
func SignerPublic(pub *ecdsa.PublicKey) ([]byte, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("the PCR-policy signing key must be ECC P-256")
	}
	ecdh, err := pub.ECDH()
	if err != nil {
		return nil, fmt.Errorf("unable to use the PCR-policy signing key: %w", err)
	}
	point := ecdh.Bytes() // 0x04 || X || Y
	t := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{SignEncrypt: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: point[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: point[33:]},
		}),
	}
	return tpm2.Marshal(t), nil
}

// signerKey parses a TPMT_PUBLIC made by SignerPublic back into its key
// and TPM name. It accepts only that exact form.
func signerKey(public []byte) (*ecdsa.PublicKey, *tpm2.TPM2BName, error) {
	t, err := tpm2.Unmarshal[tpm2.TPMTPublic](public)
	if err != nil {
		return nil, nil, fmt.Errorf("PCR-policy signer is not a TPMT_PUBLIC: %w", err)
	}
	ecc, err := t.Unique.ECC()
	if err != nil {
		return nil, nil, fmt.Errorf("PCR-policy signer is not an ECC key: %w", err)
	}
	x, y := new(big.Int).SetBytes(ecc.X.Buffer), new(big.Int).SetBytes(ecc.Y.Buffer)
	if !elliptic.P256().IsOnCurve(x, y) { //nolint:staticcheck // the point comes as coordinates
		return nil, nil, errors.New("PCR-policy signer is not a P-256 point")
	}
	pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}
	want, err := SignerPublic(pub)
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(want, public) {
		return nil, nil, errors.New("PCR-policy signer is not a keybroker signing key (want ECC P-256, ECDSA-SHA256, sign only)")
	}
	name, err := tpm2.ObjectName(t)
	if err != nil {
		return nil, nil, err
	}
	return pub, name, nil
}

// checkAuthorization checks a's form: a PCR selection, 1 to MaxSigners
// well-formed signers, no signer twice, and a counter of the keybroker form
// when set.
func checkAuthorization(a *Authorization) error {
	if _, err := a.policyRef(); err != nil {
		return err
	}
	if len(a.Signers) == 0 || len(a.Signers) > MaxSigners {
		return fmt.Errorf("an authorized envelope names %d PCR-policy signers, want 1 to %d", len(a.Signers), MaxSigners)
	}
	for i, s := range a.Signers {
		if _, _, err := signerKey(s); err != nil {
			return err
		}
		for _, prev := range a.Signers[:i] {
			if bytes.Equal(prev, s) {
				return errors.New("an authorized envelope names a PCR-policy signer twice")
			}
		}
	}
	if a.Counter != nil {
		return CheckCounterPublic(a.Counter)
	}
	return nil
}

// AuthPolicy is the authPolicy of an authorized envelope's sealed object:
// PolicyAuthorize(signer, PolicyRef) for one signer, PolicyOR over one such
// branch per signer otherwise.
func (a *Authorization) AuthPolicy() ([]byte, error) {
	if err := checkAuthorization(a); err != nil {
		return nil, err
	}
	branches, err := a.branches()
	if err != nil {
		return nil, err
	}
	if len(branches) == 1 {
		return branches[0].Buffer, nil
	}
	calc, err := tpm2.NewPolicyCalculator(sealedObjectNameAlg)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyOr{PHashList: tpm2.TPMLDigest{Digests: branches}}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// policyRef is the policyRef of a's approvals.
func (a *Authorization) policyRef() ([]byte, error) {
	sel, err := selection(a.Bank, a.PCRs)
	if err != nil {
		return nil, err
	}
	if len(a.Node) == 0 || len(a.Node) > MaxNodeRef {
		return nil, fmt.Errorf("an authorized envelope names its node in 1 to %d bytes, not %d", MaxNodeRef, len(a.Node))
	}
	return policyRef(sel, a.Node), nil
}

// policyRef is the policyRef of approvals over sel for node: the SHA-256
// of policyRefPrefix, the TPML_PCR_SELECTION and node (a digest, as
// TPM2_PolicyAuthorize takes at most a digest's size). It is part of what
// the signing key signs and of the blob's PolicyAuthorize, so neither a
// signature the same key made for another purpose, nor an approval over
// another selection or for another node, authorizes a blob.
func policyRef(sel tpm2.TPMLPCRSelection, node []byte) []byte {
	h := sha256.New()
	h.Write([]byte(policyRefPrefix))
	h.Write(tpm2.Marshal(sel))
	h.Write(node)
	return h.Sum(nil)
}

// selection is the TPML_PCR_SELECTION of indexes (0 to 23, at least one,
// none twice) in bank.
func selection(bank uint32, indexes []uint32) (tpm2.TPMLPCRSelection, error) {
	if _, err := tpm2.TPMIAlgHash(bank).Hash(); err != nil {
		return tpm2.TPMLPCRSelection{}, fmt.Errorf("unsupported PCR bank 0x%04x", bank)
	}
	if len(indexes) == 0 {
		return tpm2.TPMLPCRSelection{}, errors.New("a PCR policy needs at least one PCR")
	}
	bitmap := make([]byte, 3)
	for _, i := range indexes {
		if i > 23 {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("PCR index %d is above 23", i)
		}
		if bitmap[i/8]&(1<<(i%8)) != 0 {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("PCR %d is selected twice", i)
		}
		bitmap[i/8] |= 1 << (i % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMIAlgHash(bank), PCRSelect: bitmap}}}, nil
}

// branches returns the PolicyAuthorize digest of each signer, in order.
func (a *Authorization) branches() ([]tpm2.TPM2BDigest, error) {
	ref, err := a.policyRef()
	if err != nil {
		return nil, err
	}
	out := make([]tpm2.TPM2BDigest, 0, len(a.Signers))
	for _, s := range a.Signers {
		_, name, err := signerKey(s)
		if err != nil {
			return nil, err
		}
		calc, err := tpm2.NewPolicyCalculator(sealedObjectNameAlg)
		if err != nil {
			return nil, err
		}
		if err := (tpm2.PolicyAuthorize{KeySign: *name, PolicyRef: tpm2.TPM2BDigest{Buffer: ref}}).Update(calc); err != nil {
			return nil, err
		}
		out = append(out, tpm2.TPM2BDigest{Buffer: calc.Hash().Digest})
	}
	return out, nil
}

// ApprovedPolicy is the policy digest an approval of state pcrs signs:
// PolicyPCR(pcrs), then, with a counter, PolicyNV(counter ≤ version).
func ApprovedPolicy(pcrs *tpmpb.PCRs, counter *tpm2.TPMSNVPublic, version uint64) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(sealedObjectNameAlg)
	if err != nil {
		return nil, err
	}
	sel, digest, err := pcrPolicyArgs(pcrs)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyPCR{Pcrs: sel, PcrDigest: tpm2.TPM2BDigest{Buffer: digest}}).Update(calc); err != nil {
		return nil, err
	}
	if counter != nil {
		cmd, err := counterPolicy(counter, version)
		if err != nil {
			return nil, err
		}
		if err := cmd.Update(calc); err != nil {
			return nil, err
		}
	}
	return calc.Hash().Digest, nil
}

// LiteralPCRPolicy is the authPolicy of a pcr_sealed envelope with literal
// values: PolicyPCR(pcrs), the policy go-tpm-tools' Key.Import runs.
func LiteralPCRPolicy(pcrs *tpmpb.PCRs) ([]byte, error) {
	return ApprovedPolicy(pcrs, nil, 0)
}

// pcrPolicyArgs returns TPM2_PolicyPCR's selection and PCR digest for one
// bank of values: SHA-256 over the values in index order.
func pcrPolicyArgs(pcrs *tpmpb.PCRs) (tpm2.TPMLPCRSelection, []byte, error) {
	indexes := slices.Sorted(maps.Keys(pcrs.GetPcrs()))
	sel, err := selection(uint32(pcrs.GetHash()), indexes)
	if err != nil {
		return tpm2.TPMLPCRSelection{}, nil, err
	}
	bh, _ := tpm2.TPMIAlgHash(pcrs.GetHash()).Hash()
	h := sha256.New()
	for _, i := range indexes {
		v := pcrs.GetPcrs()[i]
		if len(v) != bh.Size() {
			return tpm2.TPMLPCRSelection{}, nil, fmt.Errorf("PCR %d has %d bytes, want %d for its bank", i, len(v), bh.Size())
		}
		h.Write(v)
	}
	return sel, h.Sum(nil), nil
}

// approvalDigest is aHash, what an approval's signature covers:
// SHA-256(approvedPolicy || policyRef), as TPM2_PolicyAuthorize checks it.
func approvalDigest(approvedPolicy, ref []byte) []byte {
	h := sha256.New()
	h.Write(approvedPolicy)
	h.Write(ref)
	return h.Sum(nil)
}

// SignApproval approves state pcrs with the PCR-policy signing key key
// (ECC P-256), for node (Authorization.Node) whose policy counter is
// counter (nil: none) at most version. The broker signs; the node checks the signature inside its
// TPM (TPM2_VerifySignature) when it opens an authorized envelope.
func SignApproval(key *ecdsa.PrivateKey, pcrs *tpmpb.PCRs, node []byte, counter *tpm2.TPMSNVPublic, version uint64) (*Approval, error) {
	if len(node) == 0 || len(node) > MaxNodeRef {
		return nil, fmt.Errorf("an approval names its node in 1 to %d bytes, not %d", MaxNodeRef, len(node))
	}
	signer, err := SignerPublic(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	policy, err := ApprovedPolicy(pcrs, counter, version)
	if err != nil {
		return nil, err
	}
	sel, _, err := pcrPolicyArgs(pcrs)
	if err != nil {
		return nil, err
	}
	r, s, err := ecdsa.Sign(rand.Reader, key, approvalDigest(policy, policyRef(sel, node)))
	if err != nil {
		return nil, fmt.Errorf("unable to sign the PCR-policy approval: %w", err)
	}
	sig := tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, 32))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, 32))},
		}),
	}
	if counter == nil {
		version = 0
	}
	return &Approval{PCRs: pcrs, Version: version, Signer: signer, Signature: tpm2.Marshal(sig)}, nil
}

// counterPolicy is the PolicyNV of an approval at version: the counter's
// 8-byte value, unsigned, at most version.
func counterPolicy(counter *tpm2.TPMSNVPublic, version uint64) (*tpm2.PolicyNV, error) {
	name, err := tpm2.NVName(counter)
	if err != nil {
		return nil, fmt.Errorf("unable to name the policy counter: %w", err)
	}
	return &tpm2.PolicyNV{
		NVIndex:   tpm2.NamedHandle{Handle: counter.NVIndex, Name: *name},
		OperandB:  tpm2.TPM2BOperand{Buffer: binary.BigEndian.AppendUint64(nil, version)},
		Operation: tpm2.TPMEOUnsignedLE,
	}, nil
}

// CheckApproval checks in software what the TPM checks when ap opens an
// envelope bound to a: that ap is signed by one of a's signers over
// PolicyPCR(ap's state) [∧ PolicyNV(a's counter ≤ ap.Version)] for a's PCR
// selection and node. It returns the index of the signer. The TPM remains
// the judge (TPM2_VerifySignature, TPM2_PolicyAuthorize); this lets the
// broker's tests and tools inspect approvals without one.
func (a *Authorization) CheckApproval(ap *Approval) (int, error) {
	if err := checkAuthorization(a); err != nil {
		return 0, err
	}
	if ap == nil {
		return 0, errors.New("no PCR-policy approval")
	}
	sel, _, err := pcrPolicyArgs(ap.PCRs)
	if err != nil {
		return 0, err
	}
	want, err := selection(a.Bank, a.PCRs)
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(tpm2.Marshal(sel), tpm2.Marshal(want)) {
		return 0, errors.New("the approval is over another PCR selection")
	}
	version := ap.Version
	if a.Counter == nil {
		version = 0
	}
	policy, err := ApprovedPolicy(ap.PCRs, a.Counter, version)
	if err != nil {
		return 0, err
	}
	digest := approvalDigest(policy, policyRef(want, a.Node))
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](ap.Signature)
	if err != nil {
		return 0, fmt.Errorf("the approval's signature is not a TPMT_SIGNATURE: %w", err)
	}
	ecc, err := sig.Signature.ECDSA()
	if err != nil || sig.SigAlg != tpm2.TPMAlgECDSA || ecc.Hash != tpm2.TPMAlgSHA256 {
		return 0, errors.New("the approval's signature is not ECDSA-SHA256")
	}
	r, s := new(big.Int).SetBytes(ecc.SignatureR.Buffer), new(big.Int).SetBytes(ecc.SignatureS.Buffer)
	for i, signer := range a.Signers {
		if !bytes.Equal(signer, ap.Signer) {
			continue
		}
		pub, _, err := signerKey(signer)
		if err != nil {
			return 0, err
		}
		if ecdsa.Verify(pub, digest, r, s) {
			return i, nil
		}
	}
	return 0, errors.New("the approval is not signed by a signer of the envelope over its policy")
}
