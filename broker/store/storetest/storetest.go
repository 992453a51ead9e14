// Package storetest is the contract every store.Backend keeps: one suite of
// tests that the embedded Bolt store and the etcd store both pass.
//
//	func TestBoltContract(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Backend {
//			b, err := store.OpenBolt(filepath.Join(t.TempDir(), "broker.db"), store.BoltOpts{})
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { b.Close() })
//			return b
//		})
//	}
//
// open must return an empty backend of its own for each sub-test and close
// it when the sub-test ends.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
)

// Run runs every contract test as a sub-test, each on a backend of its own
// from open.
func Run(t *testing.T, open func(t *testing.T) store.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b store.Backend)
	}{
		{"ReceiptIDAndTime", testReceiptIDAndTime},
		{"ReceiptIDTaken", testReceiptIDTaken},
		{"ListReceipts", testListReceipts},
		{"DeleteReceiptsBefore", testDeleteReceiptsBefore},
		{"ChainConcurrent", testChainConcurrent},
		{"Checkpoints", testCheckpoints},
		{"SingleUse", testSingleUse},
		{"ConcurrentSingleUse", testConcurrentSingleUse},
		{"ConcurrentNodeUpdates", testConcurrentNodeUpdates},
		{"InvalidDecision", testInvalidDecision},
		{"InvalidNodeRecord", testInvalidNodeRecord},
		{"PurgeConsumed", testPurgeConsumed},
		{"NodeWrittenWithDecision", testNodeWrittenWithDecision},
		{"ListNodes", testListNodes},
		{"NodeBySVIDSerial", testNodeBySVIDSerial},
		{"SharedEventLog", testSharedEventLog},
		{"ForgetNode", testForgetNode},
		{"DenyList", testDenyList},
		{"ChallengeKeys", testChallengeKeys},
		{"PCRApprovals", testPCRApprovals},
		{"CanceledContext", testCanceledContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

// T0 is the time the tests' fixed timestamps start from.
var T0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// ctxT is a context for one test, bounded so that a hung backend fails the
// test instead of the whole run.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Decide returns a decision on challenge id (none when empty) for ekHash,
// expiring an hour from now, writing node (nil: none).
func Decide(id, ekHash string, node *store.NodeRecord) *store.Decision {
	d := &store.Decision{ChallengeID: id, Receipt: &store.Receipt{ChallengeID: id, EKHash: ekHash}, Node: node}
	if id != "" {
		d.ChallengeExpiry = time.Now().Add(time.Hour)
	}
	return d
}

// record records d and fails the test on error.
func record(t *testing.T, b store.Backend, d *store.Decision) *store.Receipt {
	t.Helper()
	if err := b.Record(ctxT(t), d); err != nil {
		t.Fatalf("Record: %v", err)
	}
	return d.Receipt
}

// Node returns a node record with every field set and an event log.
func Node(ekHash string, clock uint64) store.NodeRecord {
	return store.NodeRecord{
		EKHash:       ekHash,
		FirstSeen:    T0,
		LastSeen:     T0.Add(time.Duration(clock) * time.Millisecond),
		AKName:       []byte("ak-name"),
		Clock:        clock,
		ResetCount:   7,
		RestartCount: 3,
		Evidence: attestation.Evidence{
			Time:            T0,
			ChallengeID:     "challenge",
			EKPublic:        []byte("ek-public"),
			EKCertificate:   []byte("ek-cert"),
			EKIntermediates: [][]byte{[]byte("int-1")},
			AKPublic:        []byte("ak-public"),
			SecretHash:      [32]byte{1, 2, 3, 31: 0xff},
			Quotes: []attestation.Quote{{
				Attest:    []byte("attest"),
				Signature: []byte("signature"),
				Bank:      0x000b,
				PCRs:      map[uint32][]byte{0: bytes.Repeat([]byte{0}, 32), 7: bytes.Repeat([]byte{7}, 32)},
			}},
			EventLog:    []byte("event log of " + ekHash),
			IdentityLog: []byte("identity log of " + ekHash + "\n"),
			Previous:    &attestation.Counters{AKName: []byte("ak-name"), Clock: 1, ResetCount: 7, RestartCount: 3},
		},
	}
}

// WithSVIDs returns n with node SVIDs of these serials and one workload
// entry.
func WithSVIDs(n store.NodeRecord, serials ...string) store.NodeRecord {
	n.SVIDs = nil
	for _, s := range serials {
		n.SVIDs = append(n.SVIDs, store.NodeSVID{Serial: s,
			ID: spiffeid.RequireFromString("spiffe://example.org/node/" + n.EKHash), NotAfter: T0.Add(time.Hour)})
	}
	n.WorkloadEntries = []store.WorkloadEntry{{
		Name:      "web",
		ID:        spiffeid.RequireFromString("spiffe://example.org/web"),
		Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}},
		TTL:       time.Hour,
	}}
	return n
}

// asRead is n as a backend gives it back: with its event log and the log's
// SHA-256 (hex).
func asRead(n store.NodeRecord) store.NodeRecord {
	if log := n.Evidence.EventLog; len(log) > 0 {
		sum := sha256.Sum256(log)
		n.Evidence.EventLogSHA256 = hex.EncodeToString(sum[:])
	}
	return n
}

// assertEmpty fails the test unless b holds no receipt, node record or
// deny-list entry of ekHash.
func assertEmpty(t *testing.T, b store.Backend, ekHash string) {
	t.Helper()
	ctx := ctxT(t)
	if rs, err := b.ListReceipts(ctx, store.ListOpts{}); err != nil || len(rs) != 0 {
		t.Errorf("ListReceipts = %d receipts, %v; want none", len(rs), err)
	}
	if ns, err := b.ListNodes(ctx, store.ListNodesOpts{}); err != nil || len(ns) != 0 {
		t.Errorf("ListNodes = %d records, %v; want none", len(ns), err)
	}
	if ekHash == "" {
		return
	}
	if _, err := b.GetDenial(ctx, ekHash); !isNotFound(err) {
		t.Errorf("GetDenial(%s) = %v; want ErrNotFound", ekHash, err)
	}
}
