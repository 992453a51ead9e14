package store

import (
	"errors"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/internal/workloadentry"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxNodeRecordBytes bounds the stored (JSON) form of a NodeRecord. The
// broker's API limits (a 1 MiB event log, four quotes, 64 KiB of EK and AK
// material) keep the evidence of any accepted request well below it.
const MaxNodeRecordBytes = 5 << 19 // 2.5 MiB

// NodeRecord is what the broker keeps about a node (an EK) between
// attestations: the TPM counters of its last verified quote, to compare the
// next one with, and the evidence of that attestation, so that a policy can
// be tried against it later (after verifying it again: stored evidence is
// never trusted as is).
type NodeRecord struct {
	// EKHash identifies the node (verify.EKHash); it is the record's key.
	EKHash string `json:"ek_hash"`
	// FirstSeen is the time of the node's first verified attestation;
	// ConsumeChallenge sets it to LastSeen when zero.
	FirstSeen time.Time `json:"first_seen"`
	// LastSeen is the time of its last verified attestation.
	LastSeen time.Time `json:"last_seen"`
	// AKName is the TPM name of the AK that signed the last quote. The
	// counters below can only be compared with a quote by the same AK.
	AKName []byte `json:"ak_name,omitempty"`
	// Clock, ResetCount and RestartCount are the TPM counters of the last
	// verified quote, as reported.
	Clock        uint64 `json:"clock"`
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
	// LastReceiptID is the receipt of the last verified attestation;
	// ConsumeChallenge sets it.
	LastReceiptID string `json:"last_receipt_id,omitempty"`
	// Evidence is what the node presented in its last verified attestation.
	Evidence attestation.Evidence `json:"evidence"`
	// SVIDs are the node X.509-SVIDs its last attestation released (none
	// when it was refused); each authenticates the node for workload SVIDs
	// until it expires or the node's next attestation replaces the record.
	SVIDs []NodeSVID `json:"svids,omitempty"`
	// WorkloadEntries are the workload entries of the policies that
	// allowed the node's last attestation (none when it was refused): the
	// only SPIFFE IDs the broker signs workload SVIDs for, for this node.
	WorkloadEntries []WorkloadEntry `json:"workload_entries,omitempty"`
	// Kubelet is the Kubernetes node name of the last kubelet credential
	// released to the node with quarantine; empty if none.
	Kubelet string `json:"kubelet,omitempty"`
	// Quarantined reports that the node's Node object (Kubelet) was given
	// the quarantine taint and has not been released from it.
	Quarantined bool `json:"quarantined,omitempty"`
	// BootstrapToken is the ID of the last Kubernetes bootstrap token
	// released to the node (kubelet_auth bootstrap_token): the broker
	// deletes it when it releases the next one, or refuses the node.
	BootstrapToken string `json:"bootstrap_token,omitempty"`
	// PolicyCounterBound is the version the broker signs this node's
	// PCR-policy approvals at (pcr_policy "authorized"): its policy counter
	// must not exceed it. PolicyEpoch is the broker's revocation epoch
	// when the bound was set (broker/pcrpolicy).
	PolicyCounterBound uint64 `json:"policy_counter_bound,omitempty"`
	PolicyEpoch        uint64 `json:"policy_epoch,omitempty"`
	// PolicyCounterName is the TPM name of the policy counter the node
	// first reported, pinned: a node reporting another counter is refused
	// until an operator forgets it (its counter decides what revocation
	// means for it).
	PolicyCounterName []byte `json:"policy_counter_name,omitempty"`
	// EarlierIdentityLogs are the node's records of issued identities of
	// earlier boots (package idlog), newest first, each as the last
	// attestation of its boot carried and verified it, with that
	// attestation's receipt; the current boot's is in Evidence. The
	// decision pipeline (broker/evidence.NodeRecord) bounds them.
	EarlierIdentityLogs []IdentityLog `json:"earlier_identity_logs,omitempty"`
}

// IdentityLog is a record of issued identities a verified attestation
// carried, and that attestation's receipt.
type IdentityLog struct {
	ReceiptID string `json:"receipt_id"`
	Log       []byte `json:"log"`
	// Dropped counts the older logs that no longer fit, on the oldest
	// entry kept; DroppedSHA256 chains their digests, oldest first: each
	// drop makes it SHA-256(DroppedSHA256 || SHA-256(log dropped)), from
	// 32 zero bytes. Each dropped log's SHA-256 is in the receipt that
	// verified it (Receipt.IdentityLogSHA256), so the chain can be checked
	// against the receipts.
	Dropped       uint64 `json:"dropped,omitempty"`
	DroppedSHA256 []byte `json:"dropped_sha256,omitempty"`
}

// NodeSVID identifies a node X.509-SVID the broker released.
type NodeSVID struct {
	// Serial is the certificate's serial number, lowercase hex without
	// leading zeros (fmt "%x" of the big.Int), at most MaxSerialLength.
	Serial   string      `json:"serial"`
	ID       spiffeid.ID `json:"spiffe_id"`
	NotAfter time.Time   `json:"not_after"`
}

// MaxSerialLength bounds NodeSVID.Serial: 20 bytes as hex (RFC 5280).
const MaxSerialLength = 40

// WorkloadEntry is a workload entry as the node received it: the type
// policies parse (policies.WorkloadEntry) and the agent matches callers
// against (agent/workload.Entry). Its JSON fields are name, spiffe_id,
// selectors (each type and value) and ttl (nanoseconds).
type WorkloadEntry = workloadentry.Entry

// Selector is one selector of a workload entry, such as type "unix",
// value "uid:1000".
type Selector = workloadentry.Selector

// Denial is a node's entry on the deny list: the refused attestation that
// put it there. While a node is on the list, the broker issues it no
// workload SVID; its next allowed attestation removes it.
type Denial struct {
	EKHash    string    `json:"ek_hash"`
	Time      time.Time `json:"time"`
	ReceiptID string    `json:"receipt_id"`
	// Check is the refused check, as in the receipt.
	Check string `json:"check,omitempty"`
}

// Counters returns the record's counters.
func (n NodeRecord) Counters() attestation.Counters {
	return attestation.Counters{AKName: n.AKName, Clock: n.Clock, ResetCount: n.ResetCount, RestartCount: n.RestartCount}
}

// ListNodesOpts selects node records for ListNodes. The zero value returns
// the first DefaultListLimit records in EK hash order.
type ListNodesOpts struct {
	// Limit is the most records to return: 0 means DefaultListLimit, and
	// values above MaxListLimit are lowered to it. Negative is an error.
	Limit int
	// After, when set, returns only records whose EK hash sorts after it:
	// pass the last EK hash of one page to get the next.
	After string
}

// validateNode checks n's key and SVID serials.
func validateNode(n *NodeRecord) error {
	switch {
	case n.EKHash == "":
		return errors.New("node record ek hash cannot be empty")
	case len(n.EKHash) > maxEKHashLength:
		return fmt.Errorf("node record ek hash is longer than %d bytes", maxEKHashLength)
	}
	for _, s := range n.SVIDs {
		if !validSerial(s.Serial) {
			return fmt.Errorf("node record svid serial %q is not lowercase hex of at most %d digits", s.Serial, MaxSerialLength)
		}
	}
	return nil
}

// encodeNode validates n and returns its stored form, at most
// MaxNodeRecordBytes.
func encodeNode(n NodeRecord) ([]byte, error) {
	if err := validateNode(&n); err != nil {
		return nil, err
	}
	val, err := marshalNode(&n)
	if err != nil {
		return nil, fmt.Errorf("unable to encode node record: %w", err)
	}
	if len(val) > MaxNodeRecordBytes {
		return nil, fmt.Errorf("node record holds %d bytes, at most %d allowed", len(val), MaxNodeRecordBytes)
	}
	return val, nil
}

func decodeNode(ekHash string, v []byte) (NodeRecord, error) {
	n, err := unmarshalNode(v)
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to decode node record %s: %w", ekHash, err)
	}
	return n, nil
}

// decodeNodeHead is decodeNode without the evidence (unmarshalNodeHead).
func decodeNodeHead(ekHash string, v []byte) (NodeRecord, error) {
	n, err := unmarshalNodeHead(v)
	if err != nil {
		return NodeRecord{}, fmt.Errorf("unable to decode node record %s: %w", ekHash, err)
	}
	return n, nil
}

// validSerial reports whether s is a serial as NodeSVID.Serial holds it.
func validSerial(s string) bool {
	if s == "" || len(s) > MaxSerialLength || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
