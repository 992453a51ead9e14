package broker

import (
	"context"

	"github.com/keybroker/keybroker/broker/store"
)

// NodeReader reads node records and the deny list: a store (store.Nodes),
// or the records a Vault auth method keeps (vaultrecords.Reader), which
// `keybroker nodes` shows alike.
type NodeReader interface {
	GetNode(ctx context.Context, ekHash string) (store.NodeRecord, error)
	ListNodes(ctx context.Context, opts store.ListNodesOpts) ([]store.NodeRecord, error)
	GetDenial(ctx context.Context, ekHash string) (store.Denial, error)
}

// ListNodeStatusFrom is ListNodeStatus reading r.
func ListNodeStatusFrom(ctx context.Context, r NodeReader, opts store.ListNodesOpts, withEvidence bool) ([]NodeStatus, error) {
	return listNodeStatus(ctx, r, opts, withEvidence)
}

// NodeStatusFrom is GetNodeStatus reading r.
func NodeStatusFrom(ctx context.Context, r NodeReader, ekRef string, withEvidence bool) (NodeStatus, error) {
	ref, err := parseEKHashRef(ekRef)
	if err != nil {
		return NodeStatus{}, err
	}
	return nodeStatus(ctx, r, ref, withEvidence)
}

// FindNode returns the record of the node ekRef names in r: its EK hash,
// or a unique prefix of at least MinEKHashPrefix hex digits.
func FindNode(ctx context.Context, r NodeReader, ekRef string) (store.NodeRecord, error) {
	return findNode(ctx, r, ekRef)
}
