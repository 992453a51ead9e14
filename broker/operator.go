package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

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
func resolveNode(ctx context.Context, st store.Nodes, ref string) (string, *store.NodeRecord, *store.Denial, error) {
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
