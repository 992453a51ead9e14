package store

import "context"

// Nodes reads node records and the deny list, which Decisions.Record
// writes. Implementations are safe for concurrent use.
type Nodes interface {
	// GetNode returns the record of the node with this EK hash, or
	// ErrNotFound.
	GetNode(ctx context.Context, ekHash string) (NodeRecord, error)
	// ListNodes returns node records in EK hash order.
	ListNodes(ctx context.Context, opts ListNodesOpts) ([]NodeRecord, error)
	// NodeBySVIDSerial returns the record of the node whose last
	// attestation released the node X.509-SVID with this serial (lowercase
	// hex, as NodeSVID.Serial), or ErrNotFound: also for the SVIDs of an
	// earlier attestation, which the node's next attestation replaced.
	NodeBySVIDSerial(ctx context.Context, serial string) (NodeRecord, error)
	// GetDenial returns the deny-list entry of the node with this EK hash,
	// or ErrNotFound when the node is not on the deny list.
	GetDenial(ctx context.Context, ekHash string) (Denial, error)
}

// NodeHeads is implemented by the stores that can read a node record
// without its evidence, which is most of a record: a decision needs only the
// previous record's counters and bookkeeping (Bolt, Etcd).
type NodeHeads interface {
	// GetNodeHead is GetNode with the record's Evidence left zero.
	GetNodeHead(ctx context.Context, ekHash string) (NodeRecord, error)
}
