package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-tpm/tpm2"

	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/atomicfile"
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
// attestation opens anything — keeps the approvals for Open and, with a
// cache (cacheDir), writes them to its ApprovalsFile at once, before
// anything is opened.
func (n *Node) takeApprovals(resp *pb.AttestResponse, cacheDir string) error {
	if err := n.advanceCounter(resp.GetPolicyCounterMin()); err != nil {
		return err
	}
	n.approvals = resp.GetPcrApprovals()
	if cacheDir == "" {
		return nil
	}
	f, err := approvalsFile(cacheDir, resp)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return fmt.Errorf("unable to create %s: %w", cacheDir, err)
	}
	return atomicfile.WriteSet([]atomicfile.File{f})
}

// takeRefusal applies what a refused Attest (err) says of the policy
// counter: when the broker verified the node and refused it, the status
// details carry an AttestResponse with policy_counter_min; the agent then
// advances its counter to it — so approvals revoked since stop opening,
// also on a node the broker no longer releases to — and deletes the
// cache's ApprovalsFile. A refusal without it (the broker did not get as
// far) changes nothing.
func (n *Node) takeRefusal(err error, cacheDir string) error {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	var least uint64
	found := false
	for _, d := range st.Details() {
		if r, ok := d.(*pb.AttestResponse); ok {
			least, found = max(least, r.GetPolicyCounterMin()), true
		}
	}
	if !found {
		return nil
	}
	n.approvals = nil
	var errs []error
	if err := n.advanceCounter(least); err != nil {
		errs = append(errs, err)
	}
	if cacheDir != "" {
		if err := os.Remove(filepath.Join(cacheDir, ApprovalsFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unable to delete the PCR-policy approvals: %w", err))
		}
	}
	return errors.Join(errs...)
}

// advanceCounter advances the policy counter to least (0: nothing asked).
func (n *Node) advanceCounter(least uint64) error {
	if least == 0 {
		return nil
	}
	if n.counter == 0 {
		return fmt.Errorf("the broker asks for policy counter %d and this node has none", least)
	}
	_, err := sealing.AdvanceCounter(n.rw, tpm2.TPMHandle(n.counter), least)
	return err
}

// UseApprovals sets the PCR-policy approvals Open uses for pcr_policy
// "authorized" credentials (Reopen sets those of the cache).
func (n *Node) UseApprovals(approvals []*pb.PCRApproval) { n.approvals = approvals }
