package sealing

import (
	"bytes"
	"errors"
	"fmt"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Limits on the API's PCR-policy fields.
const (
	// MaxSignerSize bounds a signer's TPMT_PUBLIC and an approval's
	// TPMT_SIGNATURE.
	MaxSignerSize = 256
	// MaxCounterPublicSize bounds a policy counter's TPMS_NV_PUBLIC.
	MaxCounterPublicSize = 256
)

// AuthorizationToProto encodes a as the API's PolicyAuthorization.
func AuthorizationToProto(a *Authorization) *pb.PolicyAuthorization {
	out := &pb.PolicyAuthorization{HashAlg: a.Bank, Pcrs: append([]uint32(nil), a.PCRs...), Signers: a.Signers, Node: a.Node}
	if a.Counter != nil {
		out.CounterPublic = tpm2.Marshal(a.Counter)
	}
	return out
}

// AuthorizationFromProto decodes and checks (as Wrap would) the API's
// PolicyAuthorization.
func AuthorizationFromProto(p *pb.PolicyAuthorization) (*Authorization, error) {
	if p == nil {
		return nil, errors.New("no PCR-policy authorization")
	}
	a := &Authorization{Bank: p.GetHashAlg(), PCRs: p.GetPcrs(), Signers: p.GetSigners(), Node: p.GetNode()}
	for _, s := range a.Signers {
		if len(s) > MaxSignerSize {
			return nil, fmt.Errorf("PCR-policy signer exceeds %d bytes", MaxSignerSize)
		}
	}
	if c := p.GetCounterPublic(); len(c) > 0 {
		pub, err := ParseCounterPublic(c)
		if err != nil {
			return nil, err
		}
		a.Counter = pub
	}
	if err := checkAuthorization(a); err != nil {
		return nil, err
	}
	return a, nil
}

// ParseCounterPublic decodes a policy counter's TPMS_NV_PUBLIC strictly (no
// trailing bytes, at most MaxCounterPublicSize) and checks that it is a
// keybroker policy counter (CheckCounterPublic).
func ParseCounterPublic(b []byte) (*tpm2.TPMSNVPublic, error) {
	if len(b) > MaxCounterPublicSize {
		return nil, fmt.Errorf("policy counter public area exceeds %d bytes", MaxCounterPublicSize)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMSNVPublic](b)
	if err != nil {
		return nil, fmt.Errorf("policy counter public area is not a TPMS_NV_PUBLIC: %w", err)
	}
	if !bytes.Equal(tpm2.Marshal(pub), b) {
		return nil, errors.New("policy counter public area has trailing bytes")
	}
	if err := CheckCounterPublic(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// ApprovalToProto encodes a as the API's PCRApproval.
func ApprovalToProto(a *Approval) *pb.PCRApproval {
	return &pb.PCRApproval{
		Pcrs:      &pb.PCRValues{HashAlg: uint32(a.PCRs.GetHash()), Values: a.PCRs.GetPcrs()},
		Version:   a.Version,
		Signer:    a.Signer,
		Signature: a.Signature,
	}
}

// ApprovalsFromProto decodes the API's approvals, at most MaxApprovals,
// each bounded in size (their contents are checked by the TPM).
func ApprovalsFromProto(in []*pb.PCRApproval) ([]*Approval, error) {
	if len(in) > MaxApprovals {
		return nil, fmt.Errorf("%d PCR-policy approvals, at most %d allowed", len(in), MaxApprovals)
	}
	out := make([]*Approval, 0, len(in))
	for i, p := range in {
		switch {
		case len(p.GetSigner()) > MaxSignerSize || len(p.GetSignature()) > MaxSignerSize:
			return nil, fmt.Errorf("PCR-policy approval %d: signer or signature exceeds %d bytes", i, MaxSignerSize)
		case len(p.GetPcrs().GetValues()) == 0 || len(p.GetPcrs().GetValues()) > MaxBlobPCRs:
			return nil, fmt.Errorf("PCR-policy approval %d names %d PCR values, want 1 to %d", i, len(p.GetPcrs().GetValues()), MaxBlobPCRs)
		}
		out = append(out, &Approval{
			PCRs:      &tpmpb.PCRs{Hash: tpmpb.HashAlgo(p.GetPcrs().GetHashAlg()), Pcrs: p.GetPcrs().GetValues()},
			Version:   p.GetVersion(),
			Signer:    p.GetSigner(),
			Signature: p.GetSignature(),
		})
	}
	return out, nil
}
