package broker

import (
	"context"
	"fmt"

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

// policyNode is what the pcr_policy "authorized" releases of d are sealed
// with for the node whose new record is rec: its counter, the version its
// approvals are signed at (pcrpolicy.Bound over rec's previous bound) and
// the stored approvals. It records the version and the epoch in rec. Nil
// when d has no such release or the node reported no counter (the release
// step refuses the latter).
func (s *Server) policyNode(ctx context.Context, pc *pb.PolicyCounter, d policies.Decision, rec *store.NodeRecord) (*release.PolicyNode, error) {
	if !release.Authorized(d) || pc == nil {
		return nil, nil
	}
	counter, err := sealing.ParseCounterPublic(pc.GetNvPublic()) // checked with the request
	if err != nil {
		return nil, err
	}
	stored, err := s.approvals.PCRApprovals(ctx)
	if err != nil {
		return nil, err
	}
	epoch := pcrpolicy.Epoch(stored)
	version := pcrpolicy.Bound(rec.PolicyCounterBound, rec.PolicyEpoch, epoch, pc.GetValue())
	rec.PolicyCounterBound, rec.PolicyEpoch = version, epoch
	return &release.PolicyNode{Counter: counter, Version: version, Stored: stored}, nil
}
