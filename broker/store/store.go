package store

import (
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxIDLength bounds challenge and receipt IDs.
const MaxIDLength = 128

// Limits for ListReceipts and ListNodes.
const (
	// DefaultListLimit is used when ListOpts.Limit is zero.
	DefaultListLimit = 100
	// MaxListLimit is the largest number of receipts or node records one
	// call returns; larger limits are lowered to it.
	MaxListLimit = 1000
)

var (
	// ErrNotFound is returned for a receipt, node record or deny-list
	// entry that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConsumed is returned by Decisions.Record for a challenge another
	// decision already used up.
	ErrConsumed = errors.New("challenge already used")
	// ErrExists is returned when recording a receipt whose ID is taken.
	ErrExists = errors.New("already exists")
	// ErrConflict is returned by ChallengeKeys.AddChallengeKey when another
	// process added a key first.
	ErrConflict = errors.New("changed concurrently")
)

// maxEKHashLength bounds an EK hash, which is part of index keys.
const maxEKHashLength = 1024

// validateID returns an error completing "challenge id ..." or "receipt id ...".
func validateID(id string) error {
	switch {
	case id == "":
		return errors.New("cannot be empty")
	case len(id) > MaxIDLength:
		return fmt.Errorf("is longer than %d characters", MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		switch ch := id[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9', ch == '-', ch == '_', ch == '.':
		default:
			return errors.New("must contain only [A-Za-z0-9._-]")
		}
	}
	return nil
}

// Receipt records one attestation decision and what was released. Receipts
// are written before anything is released, and never changed afterwards.
type Receipt struct {
	// Seq is the receipt's place in its store's chain (1, 2, 3, ...) and
	// Prev the hash (ReceiptHash) of receipt Seq-1, GenesisHash for Seq 1:
	// Decisions.Record sets both when it commits (chain.go). Both are empty
	// on receipts written before receipts were chained.
	Seq  uint64 `json:"seq,omitempty"`
	Prev string `json:"prev,omitempty"`
	// ID is assigned by Decisions.Record when empty (NewReceiptID), so
	// that IDs sort in time order.
	ID string `json:"id"`
	// Time is when the decision was made; Decisions.Record sets it to the
	// current time when zero.
	Time        time.Time `json:"time"`
	ChallengeID string    `json:"challenge_id,omitempty"`
	EKHash      string    `json:"ek_hash,omitempty"`
	AKName      []byte    `json:"ak_name,omitempty"`
	QuoteDigest []byte    `json:"quote_digest,omitempty"`
	// IdentityLogSHA256 is the SHA-256 of the identity log the attestation
	// carried and that verified (package idlog), IdentityLogPCR the PCR
	// value it replayed to; empty without one (and on receipts written
	// before they existed: omitted, their encoding is unchanged).
	IdentityLogSHA256 []byte `json:"identity_log_sha256,omitempty"`
	IdentityLogPCR    []byte `json:"identity_log_pcr,omitempty"`
	Allowed           bool   `json:"allowed"`
	// Check names the failed check, or "policy" when policy denied; empty
	// when allowed.
	Check string `json:"check,omitempty"`
	// Failures lists every failed condition, for operators.
	Failures   []string       `json:"failures,omitempty"`
	Policies   []string       `json:"policies,omitempty"`
	PolicyHash string         `json:"policy_hash,omitempty"`
	Released   []ReleasedItem `json:"released,omitempty"`
	// DenyListed records that this refusal put the node (EKHash) on the
	// deny list (Decision.Deny is DenyAdd; Decisions.Record sets it).
	DenyListed bool `json:"deny_listed,omitempty"`
	// Action names an operator's action recorded as a decision of its own
	// ("nodes forget", "nodes allow"); empty for attestations. Reason and
	// Operator (an OS user name) say why and who.
	Action   string `json:"action,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Operator string `json:"operator,omitempty"`
	// Quarantine records what this decision did to the node's Kubernetes
	// Node object (a kubelet release with quarantine); nil: nothing.
	Quarantine *Quarantine `json:"quarantine,omitempty"`
}

// Quarantine is a decision's change to a node's quarantine taint.
type Quarantine struct {
	// Node is the Kubernetes node name.
	Node string `json:"node"`
	// Tainted: the decision (a refusal) put or kept the taint on the Node;
	// false: it (an allowed decision) removed it.
	Tainted bool `json:"tainted"`
	// Error says why the Node could not be changed; empty when it was.
	Error string `json:"error,omitempty"`
}

// ReleasedItem describes one credential released under a receipt. It never
// holds the credential itself: Serial names it (a certificate's serial, a
// vault_kv secret's version such as "v3", a vault_token's accessor).
type ReleasedItem struct {
	Name     string    `json:"name"`
	Type     string    `json:"type"`
	Mode     string    `json:"mode"`
	Serial   string    `json:"serial,omitempty"`
	NotAfter time.Time `json:"not_after,omitzero"`
	PCRBank  string    `json:"pcr_bank,omitempty"`
	PCRs     []uint32  `json:"pcrs,omitempty"`
	// SPIFFEID is the ID of an X.509-SVID.
	SPIFFEID spiffeid.ID `json:"spiffe_id,omitzero"`
	// NodeName is a kubelet credential's Kubernetes node name; Quarantine
	// its release's quarantine setting.
	NodeName   string `json:"node_name,omitempty"`
	Quarantine bool   `json:"quarantine,omitempty"`
	// BootstrapToken marks a kubelet release in bootstrap_token mode: Serial
	// is the token's ID.
	BootstrapToken bool `json:"bootstrap_token,omitempty"`
}

// ListOpts selects receipts for ListReceipts. The zero value returns the
// newest DefaultListLimit receipts.
type ListOpts struct {
	// Limit is the most receipts to return: 0 means DefaultListLimit, and
	// values above MaxListLimit are lowered to it. Negative is an error.
	Limit int
	// EKHash, when set, returns only receipts for this EK.
	EKHash string
	// Before, when set, returns only receipts whose ID sorts before it: pass
	// the last ID of one page to get the next.
	Before string
}

// listLimit applies the list limits: 0 means DefaultListLimit, more than
// MaxListLimit is lowered to it, a negative limit is an error.
func listLimit(limit int) (int, error) {
	switch {
	case limit < 0:
		return 0, errors.New("limit cannot be negative")
	case limit == 0:
		return DefaultListLimit, nil
	case limit > MaxListLimit:
		return MaxListLimit, nil
	}
	return limit, nil
}
