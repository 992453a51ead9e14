package agent

import (
	"fmt"

	"github.com/google/go-tpm/tpm2"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// policyCounter returns the node's policy-version counter for the
// AttestRequest, defining it on first use (sealing.EnsureCounter); nil
// when NodeOpts.PolicyCounter is zero.
func (n *Node) policyCounter() (*pb.PolicyCounter, error) {
	if n.counter == 0 {
		return nil, nil
	}
	pub, value, err := sealing.EnsureCounter(n.rw, tpm2.TPMHandle(n.counter))
	if err != nil {
		return nil, fmt.Errorf("unable to use the policy counter 0x%08x (keybroker-agent --pcr-policy-counter none attests without one): %w", uint32(n.counter), err)
	}
	return &pb.PolicyCounter{NvPublic: tpm2.Marshal(pub), Value: value}, nil
}

// takeApprovals applies what an AttestResponse says of pcr_policy
// "authorized" releases: it advances the policy counter to
// policy_counter_min — after which no approval revoked since the last
// attestation opens anything — and keeps the approvals for Open.
func (n *Node) takeApprovals(resp *pb.AttestResponse) error {
	if least := resp.GetPolicyCounterMin(); least > 0 {
		if n.counter == 0 {
			return fmt.Errorf("the broker asks for policy counter %d and this node has none", least)
		}
		if _, err := sealing.AdvanceCounter(n.rw, tpm2.TPMHandle(n.counter), least); err != nil {
			return err
		}
	}
	n.approvals = resp.GetPcrApprovals()
	return nil
}

// UseApprovals sets the PCR-policy approvals Open uses for pcr_policy
// "authorized" credentials (Reopen sets those of the cache).
func (n *Node) UseApprovals(approvals []*pb.PCRApproval) { n.approvals = approvals }
