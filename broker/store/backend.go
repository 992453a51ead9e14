package store

import "io"

// Backend is one store holding everything: the embedded Bolt file, or an
// etcd cluster shared by broker replicas. Callers take the small interfaces
// they need; Backend is what opening a store returns.
type Backend interface {
	Decisions
	Receipts
	Checkpoints
	Nodes
	ChallengeKeys
	PCRApprovals
	io.Closer
}
