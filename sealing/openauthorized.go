package sealing

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// MaxApprovals bounds the approvals a node considers for one envelope.
const MaxApprovals = 256

// ErrNotApproved reports that no approval the node holds covers the state
// its PCRs are in: the state was never approved (or the approval did not
// reach the node yet), so an authorized envelope does not open.
var ErrNotApproved = errors.New("no PCR-policy approval matches the current PCR state")

// OpenAuthorized opens an envelope made with WrapOpts.Authorization inside
// the TPM on rw under ek: it picks the approval (by one of the envelope's
// signers) of the state the PCRs hold now, has the TPM check its signature
// (TPM2_LoadExternal of the signer, TPM2_VerifySignature), imports the
// object under the EK and unseals the CEK with the policy session
// PolicyPCR → [PolicyNV(counter)] → PolicyAuthorize(approval) →
// [PolicyOR(signers)], then decrypts the JWE. It returns ErrNotApproved when
// no approval covers the current state, ErrImport when the TPM refuses
// (another TPM, a signature by another key or over another policy, a
// revoked approval whose version is below the counter). It flushes every
// object and session it loads.
func OpenAuthorized(rw io.ReadWriter, ek *client.Key, env *Envelope, approvals []*Approval) ([]byte, error) {
	if env == nil || env.Blob == nil {
		return nil, errors.New("envelope has no import blob")
	}
	if env.Authorization == nil {
		return nil, errors.New("envelope is not sealed to PCR-policy approvals")
	}
	if err := checkAuthorization(env.Authorization); err != nil {
		return nil, err
	}
	if len(env.JWE) > MaxJWESize {
		return nil, errors.New("envelope JWE is too large")
	}
	if len(approvals) > MaxApprovals {
		return nil, fmt.Errorf("%d PCR-policy approvals, at most %d allowed", len(approvals), MaxApprovals)
	}
	want, err := selection(env.Authorization.Bank, env.Authorization.PCRs)
	if err != nil {
		return nil, err
	}
	matching, err := matchingApprovals(rw, env.Authorization, tpm2.Marshal(want), approvals)
	if err != nil {
		return nil, err
	}
	// Every matching approval in order: one the TPM refuses (a key
	// rotated out, a version below the counter) does not hide a later one
	// that opens.
	var errs []error
	for _, a := range matching {
		cek, err := unsealAuthorized(transport.FromReadWriter(rw), ek, env, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		defer clear(cek)
		return decrypt(cek, env.JWE)
	}
	return nil, fmt.Errorf("%w: %w", ErrImport, errors.Join(errs...))
}

// matchingApprovals returns the approvals, by one of auth's signers and
// over the envelope's PCR selection (the TPML_PCR_SELECTION want), of the
// state the TPM's PCRs hold now, in order; ErrNotApproved when there is
// none.
func matchingApprovals(rw io.ReadWriter, auth *Authorization, want []byte, approvals []*Approval) ([]*Approval, error) {
	var out []*Approval
	for _, a := range approvals {
		if !slices.ContainsFunc(auth.Signers, func(s []byte) bool { return bytes.Equal(s, a.Signer) }) {
			continue
		}
		if sel, _, err := pcrPolicyArgs(a.PCRs); err != nil || !bytes.Equal(tpm2.Marshal(sel), want) {
			continue
		}
		indexes := make([]int, 0, len(a.PCRs.GetPcrs()))
		for i := range a.PCRs.GetPcrs() {
			indexes = append(indexes, int(i))
		}
		cur, err := client.ReadPCRs(rw, legacy.PCRSelection{Hash: legacy.Algorithm(a.PCRs.GetHash()), PCRs: indexes})
		if err != nil {
			return nil, fmt.Errorf("unable to read PCRs: %w", err)
		}
		if samePCRs(cur, a.PCRs) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, ErrNotApproved
	}
	return out, nil
}

func samePCRs(cur, want *tpmpb.PCRs) bool {
	if cur.GetHash() != want.GetHash() || len(cur.GetPcrs()) != len(want.GetPcrs()) {
		return false
	}
	ok := 1
	for i, v := range want.GetPcrs() {
		ok &= subtle.ConstantTimeCompare(cur.GetPcrs()[i], v)
	}
	return ok == 1
}

// unsealAuthorized runs the TPM half of OpenAuthorized for approval a.
func unsealAuthorized(tpm transport.TPM, ek *client.Key, env *Envelope, a *Approval) ([]byte, error) {
	approved, err := ApprovedPolicy(a.PCRs, env.Authorization.Counter, a.Version)
	if err != nil {
		return nil, err
	}
	ref, err := env.Authorization.policyRef()
	if err != nil {
		return nil, err
	}
	ticket, signerName, err := verifyApproval(tpm, a, approvalDigest(approved, ref))
	if err != nil {
		return nil, err
	}
	branches, err := env.Authorization.branches()
	if err != nil {
		return nil, err
	}
	obj, err := importUnderEK(tpm, ek, env.Blob)
	if err != nil {
		return nil, err
	}
	defer (tpm2.FlushContext{FlushHandle: obj.ObjectHandle}).Execute(tpm) //nolint:errcheck // best effort

	sel, _, err := pcrPolicyArgs(a.PCRs)
	if err != nil {
		return nil, err
	}
	// A session of our own, flushed whatever happens: go-tpm's one-off
	// policy sessions stay loaded when a policy command fails.
	sess, closeSession, err := tpm2.PolicySession(tpm, sealedObjectNameAlg, 16)
	if err != nil {
		return nil, fmt.Errorf("unable to start a policy session: %w", err)
	}
	defer closeSession() //nolint:errcheck // best effort
	p := &approvedPolicy{sel: sel, counter: env.Authorization.Counter, version: a.Version, approved: approved, ref: ref,
		signer: signerName, ticket: ticket, branches: branches}
	if err := p.run(tpm, sess.Handle()); err != nil {
		return nil, err
	}
	out, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: obj.ObjectHandle, Name: obj.Name, Auth: sess}}).Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unseal failed: %w", err)
	}
	return out.OutData.Buffer, nil
}

// approvedPolicy is what the unseal session of an authorized envelope runs.
type approvedPolicy struct {
	sel      tpm2.TPMLPCRSelection
	counter  *tpm2.TPMSNVPublic // nil: no PolicyNV
	version  uint64
	approved []byte // the approved policy digest
	ref      []byte // the policyRef
	signer   *tpm2.TPM2BName
	ticket   *tpm2.TPMTTKVerified
	branches []tpm2.TPM2BDigest // PolicyOR when more than one
}

// run runs, in session sess, PolicyPCR(sel), PolicyNV(counter ≤ version),
// PolicyAuthorize(approved, ref, signer, ticket) and PolicyOR(branches).
func (p *approvedPolicy) run(tpm transport.TPM, sess tpm2.TPMHandle) error {
	if _, err := (tpm2.PolicyPCR{PolicySession: sess, Pcrs: p.sel}).Execute(tpm); err != nil {
		return fmt.Errorf("PolicyPCR: %w", err)
	}
	if p.counter != nil {
		cmd, err := counterPolicy(p.counter, p.version)
		if err != nil {
			return err
		}
		cmd.AuthHandle = tpm2.AuthHandle{Handle: p.counter.NVIndex, Name: cmd.NVIndex.(tpm2.NamedHandle).Name, Auth: tpm2.PasswordAuth(nil)}
		cmd.PolicySession = sess
		if _, err := cmd.Execute(tpm); err != nil {
			return fmt.Errorf("PolicyNV (the approval's version is below the policy counter): %w", err)
		}
	}
	if _, err := (tpm2.PolicyAuthorize{
		PolicySession:  sess,
		ApprovedPolicy: tpm2.TPM2BDigest{Buffer: p.approved},
		PolicyRef:      tpm2.TPM2BDigest{Buffer: p.ref},
		KeySign:        *p.signer,
		CheckTicket:    *p.ticket,
	}).Execute(tpm); err != nil {
		return fmt.Errorf("PolicyAuthorize: %w", err)
	}
	if len(p.branches) > 1 {
		if _, err := (tpm2.PolicyOr{PolicySession: sess, PHashList: tpm2.TPMLDigest{Digests: p.branches}}).Execute(tpm); err != nil {
			return fmt.Errorf("PolicyOR: %w", err)
		}
	}
	return nil
}

// verifyApproval has the TPM check a's signature: it loads the signer as an
// external public key in the owner hierarchy (a NULL-hierarchy key would
// give a NULL ticket, which TPM2_PolicyAuthorize refuses) and returns the
// TPM2_VerifySignature ticket and the signer's name.
func verifyApproval(tpm transport.TPM, a *Approval, aHash []byte) (*tpm2.TPMTTKVerified, *tpm2.TPM2BName, error) {
	if _, _, err := signerKey(a.Signer); err != nil {
		return nil, nil, err
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.Signer)
	if err != nil {
		return nil, nil, err
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](a.Signature)
	if err != nil {
		return nil, nil, fmt.Errorf("PCR-policy approval signature is not a TPMT_SIGNATURE: %w", err)
	}
	if !bytes.Equal(tpm2.Marshal(sig), a.Signature) {
		return nil, nil, errors.New("PCR-policy approval signature has trailing bytes")
	}
	loaded, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(*pub), Hierarchy: tpm2.TPMRHOwner}).Execute(tpm)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to load the PCR-policy signer: %w", err)
	}
	defer (tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}).Execute(tpm) //nolint:errcheck // best effort
	v, err := (tpm2.VerifySignature{
		KeyHandle: tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name},
		Digest:    tpm2.TPM2BDigest{Buffer: aHash},
		Signature: *sig,
	}).Execute(tpm)
	if err != nil {
		return nil, nil, fmt.Errorf("the PCR-policy approval's signature does not verify: %w", err)
	}
	return &v.Validation, &loaded.Name, nil
}

// importUnderEK imports and loads blob's sealed object under ek, authorizing
// the EK with a PolicySecret(endorsement) session as its default template
// demands.
func importUnderEK(tpm transport.TPM, ek *client.Key, blob *tpmpb.ImportBlob) (*tpm2.LoadResponse, error) {
	ekHandle := tpm2.TPMHandle(ek.Handle())
	rp, err := (tpm2.ReadPublic{ObjectHandle: ekHandle}).Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unable to read the EK: %w", err)
	}
	ekAuth := func() tpm2.AuthHandle {
		return tpm2.AuthHandle{Handle: ekHandle, Name: rp.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tpm transport.TPM, sess tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
			_, err := (tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: sess, NonceTPM: nonce}).Execute(tpm)
			return err
		})}
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](blob.GetPublicArea())
	if err != nil {
		return nil, fmt.Errorf("import blob public area is not a TPMT_PUBLIC: %w", err)
	}
	imp, err := (tpm2.Import{
		ParentHandle: ekAuth(),
		ObjectPublic: tpm2.New2B(*pub),
		Duplicate:    tpm2.TPM2BPrivate{Buffer: blob.GetDuplicate()},
		InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: blob.GetEncryptedSeed()},
		Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
	}).Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("import failed: %w", err)
	}
	loaded, err := (tpm2.Load{ParentHandle: ekAuth(), InPrivate: imp.OutPrivate, InPublic: tpm2.New2B(*pub)}).Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("load failed: %w", err)
	}
	return loaded, nil
}
