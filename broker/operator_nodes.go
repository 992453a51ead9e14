package broker

import (
	"context"
	"net/url"
	"strconv"

	"github.com/keybroker/keybroker/broker/store"
)

// NodeStatus is what `keybroker nodes` shows of a node: its record, with
// its evidence only when asked for, and its deny-list entry.
type NodeStatus struct {
	store.NodeRecord
	// Evidence shadows the record's evidence, which is bulky: nil unless
	// asked for.
	Evidence *store.Evidence `json:"evidence,omitempty"`
	// NoRecord is set for a node that is on the deny list but has no
	// record (only EKHash is set then).
	NoRecord bool `json:"no_record,omitempty"`
	// Denial is the node's deny-list entry; nil when it is not on the list.
	Denial *store.Denial `json:"denial,omitempty"`
}

// ListNodeStatus returns the status of node records in EK hash order, as
// ListNodes does, with their evidence only when withEvidence is set.
func ListNodeStatus(ctx context.Context, cfg *Config, opts store.ListNodesOpts, withEvidence bool) ([]NodeStatus, error) {
	var out []NodeStatus
	q := url.Values{"limit": {strconv.Itoa(opts.Limit)}, "after": {opts.After}, "evidence": {strconv.FormatBool(withEvidence)}}
	err := query(ctx, cfg, "/v1/node-status?"+q.Encode(), &out, func(st store.Backend) (err error) {
		out, err = listNodeStatus(ctx, st, opts, withEvidence)
		return err
	})
	return out, err
}

// GetNodeStatus returns the status of the node named by ekRef (its EK
// hash, or a unique prefix of at least MinEKHashPrefix hex digits; a node
// only on the deny list by its full EK hash), with its evidence only when
// withEvidence is set. Errors are those of GetNode.
func GetNodeStatus(ctx context.Context, cfg *Config, ekRef string, withEvidence bool) (NodeStatus, error) {
	var out NodeStatus
	ref, err := parseEKHashRef(ekRef)
	if err != nil {
		return out, err
	}
	q := url.Values{"evidence": {strconv.FormatBool(withEvidence)}}
	err = query(ctx, cfg, "/v1/node-status/"+ref+"?"+q.Encode(), &out, func(st store.Backend) (err error) {
		out, err = nodeStatus(ctx, st, ref, withEvidence)
		return err
	})
	return out, err
}

func listNodeStatus(ctx context.Context, st store.Nodes, opts store.ListNodesOpts, withEvidence bool) ([]NodeStatus, error) {
	ns, err := st.ListNodes(ctx, opts)
	if err != nil {
		return nil, err
	}
	out := make([]NodeStatus, 0, len(ns))
	for i := range ns {
		s := statusOf(&ns[i], withEvidence)
		d, err := st.GetDenial(ctx, s.EKHash)
		switch {
		case err == nil:
			s.Denial = &d
		case !isNotFound(err):
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func nodeStatus(ctx context.Context, st store.Nodes, ref string, withEvidence bool) (NodeStatus, error) {
	ek, rec, denial, err := resolveNode(ctx, st, ref)
	if err != nil {
		return NodeStatus{}, err
	}
	s := NodeStatus{NodeRecord: store.NodeRecord{EKHash: ek}, NoRecord: true}
	if rec != nil {
		s = statusOf(rec, withEvidence)
	}
	s.Denial = denial
	return s, nil
}

// statusOf returns n's status without its deny-list entry.
func statusOf(n *store.NodeRecord, withEvidence bool) NodeStatus {
	s := NodeStatus{NodeRecord: *n}
	s.NodeRecord.Evidence = store.Evidence{}
	if withEvidence {
		ev := n.Evidence
		s.Evidence = &ev
	}
	return s
}
