package release

import (
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// PolicyNode is what pcr_policy "authorized" releases need of the node
// beyond its verified evidence.
type PolicyNode struct {
	// Counter is the node's policy counter, from its AttestRequest,
	// checked by sealing.ParseCounterPublic; nil: none.
	Counter *tpm2.TPMSNVPublic
	// Version is what its approvals are signed at (pcrpolicy.Bound).
	Version uint64
	// Stored are the operator's approvals and revocations.
	Stored []store.PCRApproval
}

// Authorized reports whether d releases anything with pcr_policy
// "authorized".
func Authorized(d policies.Decision) bool {
	return slices.ContainsFunc(d.Releases, func(r policies.Release) bool { return r.PCRPolicy == policies.PCRPolicyAuthorized })
}

// checkAuthorized refuses, before anything is issued, a decision with
// authorized releases the broker cannot seal: no signing key, or a node
// without a policy counter.
func (r *Releaser) checkAuthorized(d policies.Decision, node *PolicyNode) *Failure {
	for _, rel := range d.Releases {
		if rel.PCRPolicy != policies.PCRPolicyAuthorized {
			continue
		}
		switch {
		case r.pcrs == nil:
			return &Failure{Kind: KindNoPolicyCounter, Msg: "release: pcr_policy \"authorized\" is not available (no PCR-policy signing key)",
				Notes: []string{fmt.Sprintf("release %q: pcr_policy authorized, and the broker has no PCR-policy signing key", rel.Name)},
				Cause: fmt.Errorf("release %q: no PCR-policy signing key", rel.Name)}
		case node == nil || node.Counter == nil:
			return &Failure{Kind: KindNoPolicyCounter, Msg: fmt.Sprintf("release: %q is pcr_policy \"authorized\" and the node reported no policy counter (keybroker-agent --pcr-policy-counter)", rel.Name),
				Notes: []string{fmt.Sprintf("release %q: pcr_policy authorized, and the node reported no policy counter", rel.Name)},
				Cause: fmt.Errorf("release %q: no policy counter", rel.Name)}
		}
	}
	return nil
}

// approvals signs the approvals of d's authorized releases for node.
func (r *Releaser) approvals(v *verify.Verified, d policies.Decision, node *PolicyNode) ([]*pb.PCRApproval, error) {
	var sels []pcrpolicy.Selection
	for _, rel := range d.Releases {
		if rel.PCRPolicy == policies.PCRPolicyAuthorized {
			sels = append(sels, pcrpolicy.Selection{Release: rel.Name, Bank: rel.PCRBank, PCRs: rel.PCRs, Expected: rel.ExpectedStates})
		}
	}
	if len(sels) == 0 {
		return nil, nil
	}
	as, err := r.pcrs.Approvals(pcrpolicy.Node{EKHash: v.EKHash(), Attested: v.SealPCRs, Counter: node.Counter, Version: node.Version}, sels, node.Stored)
	if err != nil {
		return nil, err
	}
	out := make([]*pb.PCRApproval, len(as))
	for i, a := range as {
		out[i] = sealing.ApprovalToProto(a)
	}
	return out, nil
}
