package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
)

// Operator actions, recorded as the Action of their receipts.
const (
	ActionForget = "nodes forget"
	ActionAllow  = "nodes allow"
)

// Bounds on what an operator records with an action.
const (
	MaxReasonLength   = 1024
	MaxOperatorLength = 256
)

var (
	// ErrInvalidAction is returned for an operator action without a reason,
	// or with a reason or operator name out of bounds.
	ErrInvalidAction = errors.New("invalid operator action")
	// ErrNotDenied is returned by AllowNode for a node that is not on the
	// deny list.
	ErrNotDenied = errors.New("not on the deny list")
)

// OperatorAction is who takes an action on a node, and why: the body of
// the admin socket's POST /v1/nodes/{ekhash}/forget and /allow.
type OperatorAction struct {
	Reason   string `json:"reason"`
	Operator string `json:"operator"`
}

// validate checks a's bounds: a reason is required.
func (a OperatorAction) validate() error {
	switch {
	case a.Reason == "":
		return fmt.Errorf("%w: a reason is required", ErrInvalidAction)
	case len(a.Reason) > MaxReasonLength:
		return fmt.Errorf("%w: the reason is longer than %d bytes", ErrInvalidAction, MaxReasonLength)
	case len(a.Operator) > MaxOperatorLength:
		return fmt.Errorf("%w: the operator name is longer than %d bytes", ErrInvalidAction, MaxOperatorLength)
	case !utf8.ValidString(a.Reason) || !utf8.ValidString(a.Operator):
		return fmt.Errorf("%w: the reason and operator must be UTF-8", ErrInvalidAction)
	}
	return nil
}

// CheckEKHashRef checks that ref names a node as an operator may: an EK
// hash or a prefix of at least MinEKHashPrefix hex digits. The error wraps
// ErrInvalidEKHash.
func CheckEKHashRef(ref string) error {
	_, err := parseEKHashRef(ref)
	return err
}

// ForgetNode deletes the record of the node named by ekRef (its EK hash, or
// a unique prefix of at least MinEKHashPrefix hex digits) — its counters,
// evidence and SVID index entries — and its deny-list entry, and records
// the action as a receipt of its own, in one transaction. Its next
// attestation is a first one (history reset), as after a TPM2_Clear. A
// running bolt broker does it through its admin socket; otherwise the store
// is opened and written directly (always for etcd). A node only on the deny
// list must be named by its full EK hash.
func ForgetNode(ctx context.Context, cfg *Config, ekRef, reason, operator string) (store.Receipt, error) {
	return operate(ctx, cfg, "forget", ekRef, OperatorAction{Reason: reason, Operator: operator})
}

// AllowNode takes the node named by ekRef, as ForgetNode names it, off the
// deny list, and records the action as a receipt of its own. It returns an
// error wrapping ErrNotDenied, and writes nothing, for a node not on it.
func AllowNode(ctx context.Context, cfg *Config, ekRef, reason, operator string) (store.Receipt, error) {
	return operate(ctx, cfg, "allow", ekRef, OperatorAction{Reason: reason, Operator: operator})
}

// operate runs the action verb ("forget" or "allow") on the running
// broker, or on the store when none runs.
func operate(ctx context.Context, cfg *Config, verb, ekRef string, a OperatorAction) (store.Receipt, error) {
	var rec store.Receipt
	ref, err := parseEKHashRef(ekRef)
	if err != nil {
		return rec, err
	}
	if err := a.validate(); err != nil {
		return rec, err
	}
	if sock, ok := liveSocket(cfg); ok {
		err := postViaSocket(ctx, sock, "/v1/nodes/"+ref+"/"+verb, a, &rec)
		return rec, err
	}
	st, err := OpenStore(ctx, cfg, StoreOpts{LockTimeout: 2 * time.Second})
	if err != nil {
		return rec, err
	}
	defer st.Close()
	return operateOn(ctx, st, verb, ref, a)
}

// operateOn runs the action verb on st.
func operateOn(ctx context.Context, st store.Backend, verb, ref string, a OperatorAction) (store.Receipt, error) {
	if err := a.validate(); err != nil {
		return store.Receipt{}, err
	}
	switch verb {
	case "forget":
		return forgetNode(ctx, st, ref, a)
	case "allow":
		return allowNode(ctx, st, ref, a)
	}
	return store.Receipt{}, fmt.Errorf("unknown operator action %q", verb)
}

func forgetNode(ctx context.Context, st store.Backend, ref string, a OperatorAction) (store.Receipt, error) {
	ek, _, _, err := resolveNode(ctx, st, ref)
	if err != nil {
		return store.Receipt{}, err
	}
	rec := &store.Receipt{EKHash: ek, Action: ActionForget, Reason: a.Reason, Operator: a.Operator}
	if err := st.Record(ctx, &store.Decision{Receipt: rec, ForgetNode: ek, Deny: store.DenyRemove}); err != nil {
		return store.Receipt{}, fmt.Errorf("unable to forget node %s: %w", ek, err)
	}
	return *rec, nil
}

func allowNode(ctx context.Context, st store.Backend, ref string, a OperatorAction) (store.Receipt, error) {
	ek, _, denial, err := resolveNode(ctx, st, ref)
	if err != nil {
		return store.Receipt{}, err
	}
	if denial == nil {
		return store.Receipt{}, fmt.Errorf("node %s is %w; nothing to allow", ek, ErrNotDenied)
	}
	rec := &store.Receipt{EKHash: ek, Action: ActionAllow, Reason: a.Reason, Operator: a.Operator}
	if err := st.Record(ctx, &store.Decision{Receipt: rec, Deny: store.DenyRemove}); err != nil {
		return store.Receipt{}, fmt.Errorf("unable to allow node %s: %w", ek, err)
	}
	return *rec, nil
}

// resolveNode returns the EK hash ref names, with the node's record and
// deny-list entry (nil when it has none). A full EK hash names a node that
// has a record, a deny-list entry or both; a prefix names a node by its
// record only (findNode).
func resolveNode(ctx context.Context, st NodeReader, ref string) (string, *store.NodeRecord, *store.Denial, error) {
	n, err := findNode(ctx, st, ref)
	var rec *store.NodeRecord
	switch {
	case err == nil:
		rec = &n
	case errors.Is(err, store.ErrNotFound) && len(ref) == ekHashLen:
	default:
		return "", nil, nil, err
	}
	ek := ref
	if rec != nil {
		ek = rec.EKHash
	}
	d, err := st.GetDenial(ctx, ek)
	switch {
	case err == nil:
		return ek, rec, &d, nil
	case !errors.Is(err, store.ErrNotFound):
		return "", nil, nil, fmt.Errorf("unable to read the deny list: %w", err)
	case rec == nil:
		return "", nil, nil, fmt.Errorf("no record or deny-list entry of node %s: %w", ek, store.ErrNotFound)
	}
	return ek, rec, nil, nil
}

// NodeStatus is what `keybroker nodes` shows of a node: its record, with
// its evidence only when asked for, and its deny-list entry.
type NodeStatus struct {
	store.NodeRecord
	// Evidence shadows the record's evidence, which is bulky: nil unless
	// asked for.
	Evidence *attestation.Evidence `json:"evidence,omitempty"`
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

func listNodeStatus(ctx context.Context, st NodeReader, opts store.ListNodesOpts, withEvidence bool) ([]NodeStatus, error) {
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

func nodeStatus(ctx context.Context, st NodeReader, ref string, withEvidence bool) (NodeStatus, error) {
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
	s.NodeRecord.Evidence, s.NodeRecord.EarlierIdentityLogs = attestation.Evidence{}, nil
	if withEvidence {
		s.NodeRecord.EarlierIdentityLogs = n.EarlierIdentityLogs
		ev := n.Evidence
		s.Evidence = &ev
	}
	return s
}
