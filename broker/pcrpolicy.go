package broker

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/broker/release"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// checkPolicyCounter checks the AttestRequest's policy counter, if any: a
// keybroker policy counter's TPMS_NV_PUBLIC (sealing.ParseCounterPublic).
func checkPolicyCounter(pc *pb.PolicyCounter) error {
	if pc == nil {
		return nil
	}
	if _, err := sealing.ParseCounterPublic(pc.GetNvPublic()); err != nil {
		return fmt.Errorf("policy_counter: %w", err)
	}
	return nil
}

// errCounterChanged refuses a node whose policy counter is not the one
// pinned in its record.
var errCounterChanged = errors.New("the node reports another policy counter than the one pinned in its record (forget the node — keybroker nodes forget — to bootstrap it again)")

// policyCounter is the node's policy counter as the broker takes it, for
// every attestation that verified, whatever the decision: nil when the
// node reported none.
type policyCounter struct {
	counter *tpm2.TPMSNVPublic
	// version is the bound its approvals are signed at, and the value the
	// agent must advance its counter to (policy_counter_min), also with a
	// refusal; stored the approvals read with the epoch.
	version uint64
	stored  []store.PCRApproval
}

// takePolicyCounter takes the node's reported counter pc into its new
// record rec, before the decision: it pins the counter's name on first use
// and refuses another, and raises the version over rec's previous bound
// (pcrpolicy.Bound with the store's revocation epoch), recording the version
// and the epoch in rec. So a node refused after a revocation still learns
// the version past every approval revoked.
func (s *Server) takePolicyCounter(ctx context.Context, pc *pb.PolicyCounter, rec *store.NodeRecord) (*policyCounter, error) {
	if pc == nil || rec == nil {
		return nil, nil
	}
	counter, err := sealing.ParseCounterPublic(pc.GetNvPublic()) // checked with the request
	if err != nil {
		return nil, err
	}
	name, err := tpm2.NVName(counter)
	if err != nil {
		return nil, fmt.Errorf("unable to name the policy counter: %w", err)
	}
	if len(rec.PolicyCounterName) > 0 && subtle.ConstantTimeCompare(rec.PolicyCounterName, name.Buffer) != 1 {
		return nil, errCounterChanged
	}
	stored, epoch, err := s.approvals.PCRApprovals(ctx)
	if err != nil {
		return nil, fmt.Errorf("unable to read the PCR-policy approvals: %w", err)
	}
	version, err := pcrpolicy.Bound(rec.PolicyCounterBound, rec.PolicyEpoch, epoch, pc.GetValue())
	if err != nil {
		return nil, err
	}
	rec.PolicyCounterBound, rec.PolicyEpoch, rec.PolicyCounterName = version, epoch, name.Buffer
	return &policyCounter{counter: counter, version: version, stored: stored}, nil
}

// policyNode is what the pcr_policy "authorized" releases of d are sealed
// with: nil when d has no such release or the node reported no counter
// (the release step refuses the latter).
func policyNode(pc *policyCounter, d policies.Decision) *release.PolicyNode {
	if !release.Authorized(d) || pc == nil {
		return nil
	}
	return &release.PolicyNode{Counter: pc.counter, Version: pc.version, Stored: pc.stored}
}
