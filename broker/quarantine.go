package broker

import (
	"context"
	"errors"
	"time"

	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/kube"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/policies"
)

// quarantineTimeout bounds the Kubernetes calls of one decision.
const quarantineTimeout = 10 * time.Second

// quarantine keeps the quarantine taint of the node's Kubernetes Node in
// step with the decision, before the decision is recorded, and notes what
// it did in rec: a refusal about the node itself (its TPM proved it
// answered the challenge: o.Refusal.Deny) taints the Node of the last
// kubelet credential released to it with quarantine; an allowed decision
// takes the taint off. A refusal that anyone knowing the node's public EK
// could cause changes nothing. The state is kept in the node record, which
// it returns (node itself, or, when the refusal came before the node had a
// new record, its previous record with the state changed); nil when the
// decision writes no node record. It also keeps each node to one bootstrap
// token: an allowed decision deletes the node's previous token when it
// releases a new one, a refusal about the node deletes the one it holds.
func (s *Server) quarantine(ctx context.Context, rec *store.Receipt, o *evidence.Outcome, node *store.NodeRecord, refused *refusal) *store.NodeRecord {
	if s.kube == nil || rec.EKHash == "" || o == nil {
		return node
	}
	deny := refused != nil && o.Refusal != nil && o.Refusal.Deny
	if refused != nil && !deny {
		// A fault, or a refusal not about the node: no change (a new record
		// carries the state over, evidence.NodeRecord).
		return node
	}
	// The state before this decision: a new record carries it over; a
	// refusal before the node had one reads the stored record.
	var prev store.NodeRecord
	if node != nil {
		prev = *node
	} else {
		p, err := s.nodes.GetNode(ctx, rec.EKHash)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return nil
		case err != nil:
			s.log.Error("quarantine: unable to read the node's record", "ek", rec.EKHash, "error", err)
			return nil
		}
		prev = p
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quarantineTimeout)
	defer cancel()
	if !deny && node != nil {
		s.retireBootstrapToken(ctx, rec, node, prev.BootstrapToken)
	}
	if !deny {
		// Allowed: the kubelet release (if any) names the node from now on,
		// and a quarantine ends.
		node.Kubelet, node.Quarantined = "", false
		for _, it := range rec.Released {
			if it.Type == policies.TypeKubelet && it.Quarantine {
				node.Kubelet = it.NodeName
			}
		}
		if prev.Quarantined && prev.Kubelet != "" {
			q := &store.Quarantine{Node: prev.Kubelet}
			if err := s.kube.Release(ctx, prev.Kubelet); err != nil && !errors.Is(err, kube.ErrNoNode) {
				q.Tainted, q.Error = true, err.Error()
				if node.Kubelet == prev.Kubelet || node.Kubelet == "" {
					node.Kubelet, node.Quarantined = prev.Kubelet, true // tried again next time
				}
				s.log.Error("quarantine: unable to take the taint off the node", "ek", rec.EKHash, "node", prev.Kubelet, "error", err)
			} else {
				s.log.Info("quarantine ended: the node attested", "ek", rec.EKHash, "node", prev.Kubelet, "receipt", rec.ID)
			}
			rec.Quarantine = q
		}
		return node
	}
	if prev.Kubelet == "" && prev.BootstrapToken == "" {
		return node
	}
	if node == nil {
		// Refused before the node had a new record (its event log, its TPM
		// counters): keep the previous one, without what only an allowed
		// attestation grants.
		kept := prev
		kept.SVIDs, kept.WorkloadEntries = nil, nil
		node = &kept
	}
	if prev.BootstrapToken != "" {
		// A refused node keeps no bootstrap token it has not used yet.
		if err := s.kube.DeleteBootstrapToken(ctx, prev.BootstrapToken); err != nil {
			s.log.Error("unable to delete the refused node's bootstrap token", "ek", rec.EKHash, "token_id", prev.BootstrapToken, "error", err)
		} else {
			node.BootstrapToken = ""
		}
	}
	if prev.Kubelet == "" {
		return node
	}
	node.Kubelet, node.Quarantined = prev.Kubelet, true
	q := &store.Quarantine{Node: prev.Kubelet, Tainted: true}
	if err := s.kube.Quarantine(ctx, prev.Kubelet); err != nil {
		q.Error = err.Error()
		s.log.Error("quarantine: unable to taint the node", "ek", rec.EKHash, "node", prev.Kubelet, "taint", s.kube.Taint().String(), "error", err)
	} else {
		s.log.Warn("node quarantined: refused after it was allowed", "ek", rec.EKHash, "node", prev.Kubelet, "taint", s.kube.Taint().String(), "receipt", rec.ID)
	}
	rec.Quarantine = q
	return node
}

// retireBootstrapToken records the bootstrap token an allowed decision
// released in node, and deletes the node's previous one (prev), so that a
// node re-running its bootstrap holds one token at a time.
func (s *Server) retireBootstrapToken(ctx context.Context, rec *store.Receipt, node *store.NodeRecord, prev string) {
	for _, it := range rec.Released {
		if it.Type == policies.TypeKubelet && it.BootstrapToken && it.Serial != "" {
			node.BootstrapToken = it.Serial
		}
	}
	if prev == "" || prev == node.BootstrapToken {
		return
	}
	if err := s.kube.DeleteBootstrapToken(ctx, prev); err != nil {
		s.log.Error("unable to delete the node's previous bootstrap token", "ek", rec.EKHash, "token_id", prev, "error", err)
		return
	}
	s.log.Info("previous bootstrap token deleted", "ek", rec.EKHash, "token_id", prev)
}
