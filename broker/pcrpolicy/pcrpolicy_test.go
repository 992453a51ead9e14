package pcrpolicy_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/sealing"
)

func key(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestBound(t *testing.T) {
	tests := []struct {
		name                                  string
		prevBound, prevEpoch, epoch, reported uint64
		want                                  uint64
		wantErr                               string
	}{
		{name: "first attestation, nothing revoked: the counter as it is", reported: 5, want: 5},
		{name: "first attestation after revocations: above the counter", epoch: 3, reported: 5, want: 6},
		{name: "record forgotten: above the counter", prevBound: 0, prevEpoch: 0, epoch: 4, reported: 9, want: 10},
		{name: "nothing revoked: unchanged", prevBound: 5, prevEpoch: 3, epoch: 3, reported: 5, want: 5},
		{name: "counter moved on: follow it", prevBound: 5, prevEpoch: 3, epoch: 3, reported: 9, want: 9},
		{name: "revoked since: above every earlier version", prevBound: 5, prevEpoch: 3, epoch: 4, reported: 5, want: 6},
		{name: "revoked since, counter already above: above it too", prevBound: 5, prevEpoch: 3, epoch: 4, reported: 8, want: 9},
		{name: "epoch went back (store restored): raised", prevBound: 5, prevEpoch: 3, epoch: 1, reported: 5, want: 6},
		{name: "a node reporting less never lowers it", prevBound: 5, prevEpoch: 3, epoch: 3, reported: 1, want: 5},
		{name: "the most steps the agent advances", prevBound: 5, prevEpoch: 3, epoch: 3, reported: 5 + sealing.MaxCounterSteps, want: 5 + sealing.MaxCounterSteps},
		{name: "more steps than the agent advances: refused", prevBound: 5, prevEpoch: 3, epoch: 3, reported: 6 + sealing.MaxCounterSteps,
			wantErr: "policy counter refused: the node reports 70, more than 64 above the version 5"},
		{name: "overflow: refused", prevBound: math.MaxUint64, prevEpoch: 3, epoch: 4, reported: math.MaxUint64,
			wantErr: "the version cannot be raised past 18446744073709551615"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pcrpolicy.Bound(tt.prevBound, tt.prevEpoch, tt.epoch, tt.reported)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, pcrpolicy.ErrCounter) {
					t.Fatalf("Bound = %d, %v; want %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Bound = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestApprovals(t *testing.T) {
	v := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	attested := map[uint32][]byte{0: v(0), 7: v(1)}
	node := pcrpolicy.Node{
		EKHash: "ek",
		Attested: func(bank tpm2.TPMAlgID, pcrs []uint32) (*tpmpb.PCRs, error) {
			return &tpmpb.PCRs{Hash: tpmpb.HashAlgo(bank), Pcrs: attested}, nil
		},
		Counter: sealing.CounterPublic(sealing.DefaultCounterIndex),
		Version: 7,
	}
	s, err := pcrpolicy.NewSigner(key(t), key(t))
	if err != nil {
		t.Fatal(err)
	}
	sel := pcrpolicy.Selection{Release: "node-tls", Bank: tpm2.TPMAlgSHA256, PCRs: []uint32{0, 7},
		Expected: []map[uint32][]byte{{0: v(0), 7: v(2)}, {0: v(0), 7: v(1)}}}
	now := time.Now()
	stored := []store.PCRApproval{
		{ID: "01", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(3), 8: v(9)}, Created: now},                             // approved, more PCRs: restricted
		{ID: "02", Bank: 0x000b, PCRs: map[uint32][]byte{7: v(4)}, Created: now},                                               // approved, fewer PCRs: not enough
		{ID: "03", Bank: 0x000c, PCRs: map[uint32][]byte{0: v(0), 7: v(5)}, Created: now},                                      // another bank
		{ID: "04", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(6)}, Created: now, Revoked: now},                        // revoked, never approved
		{ID: "05", Bank: 0x000b, PCRs: map[uint32][]byte{7: v(2)}, Created: now, Revoked: now},                                 // revokes expected 7=2
		{ID: "06", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(6)}, Created: now.Add(time.Second)},                     // approved again after: still revoked
		{ID: "07", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(7)}, Releases: []string{"other"}, Created: now},         // scoped to another release
		{ID: "08", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(8)}, Releases: []string{"a", "node-tls"}, Created: now}, // scoped to this one
	}
	got, err := s.Approvals(node, []pcrpolicy.Selection{sel, sel}, stored)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	auth := s.Authorization(tpm2.TPMAlgSHA256, []uint32{0, 7}, "ek", node.Counter)
	otherNode := s.Authorization(tpm2.TPMAlgSHA256, []uint32{0, 7}, "ek2", node.Counter)
	otherCounter := s.Authorization(tpm2.TPMAlgSHA256, []uint32{0, 7}, "ek", sealing.CounterPublic(sealing.DefaultCounterIndex+1))
	for _, a := range got {
		if a.Version != 7 || len(a.PCRs.GetPcrs()) != 2 {
			t.Errorf("approval at version %d over %d PCRs", a.Version, len(a.PCRs.GetPcrs()))
		}
		// Signed by the current key (signer 0), for this node and its
		// counter, at the node's version.
		if i, err := auth.CheckApproval(a); err != nil || i != 0 {
			t.Errorf("CheckApproval = signer %d, %v; want the current key's signature", i, err)
		}
		if _, err := otherNode.CheckApproval(a); err == nil {
			t.Error("an approval for node ek checks for node ek2")
		}
		if _, err := otherCounter.CheckApproval(a); err == nil {
			t.Error("an approval over the node's counter checks for another counter index")
		}
		higher := *a
		higher.Version++
		if _, err := auth.CheckApproval(&higher); err == nil {
			t.Error("an approval checks at a version it was not signed at")
		}
		states = append(states, string(rune('0'+a.PCRs.GetPcrs()[7][0])))
	}
	slices.Sort(states)
	if got, want := strings.Join(states, ","), "1,3,8"; got != want {
		t.Errorf("approved states (PCR 7) = %s, want %s: attested and the stored approvals in scope, each once, no revoked, partial or other release's state", got, want)
	}
}

// Approve, Revoke and RevokeState on a real store: a revocation is final
// (approving the state again is refused, also of a state a revocation of
// fewer PCRs covers), each new revocation moves the epoch once, and a
// refused call stores nothing.
func TestApproveRevoke(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	v := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	s1 := map[uint32][]byte{0: v(0), 7: v(1)}
	a, err := pcrpolicy.Approve(ctx, st, 0x000b, s1, nil, "explicit", "first", now)
	if err != nil || a.ID != pcrpolicy.StateID(0x000b, s1) || !a.Revoked.IsZero() {
		t.Fatalf("Approve = %+v, %v", a, err)
	}
	again, err := pcrpolicy.Approve(ctx, st, 0x000b, s1, nil, "explicit", "second", now.Add(time.Hour))
	if err != nil || !again.Created.Equal(now) || again.Note != "second" {
		t.Fatalf("Approve again = %+v, %v; want the same record, created at first, note updated", again, err)
	}
	epoch := func() uint64 {
		_, e, err := st.PCRApprovals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	r, err := pcrpolicy.Revoke(ctx, st, a.ID, "bad", now.Add(2*time.Hour))
	if err != nil || r.Revoked.IsZero() || epoch() != 1 {
		t.Fatalf("Revoke = %+v, %v at epoch %d; want revoked at epoch 1", r, err, epoch())
	}
	if r2, err := pcrpolicy.Revoke(ctx, st, a.ID, "", now.Add(3*time.Hour)); err != nil || !r2.Revoked.Equal(r.Revoked) || epoch() != 1 {
		t.Fatalf("Revoke again = %+v, %v at epoch %d; want unchanged", r2, err, epoch())
	}
	if _, err := pcrpolicy.Approve(ctx, st, 0x000b, s1, nil, "explicit", "", now); !errors.Is(err, pcrpolicy.ErrRevoked) {
		t.Fatalf("Approve of a revoked state = %v; want ErrRevoked", err)
	}
	// A revocation of PCR 7 alone covers every state with that value.
	if _, err := pcrpolicy.RevokeState(ctx, st, 0x000b, map[uint32][]byte{7: v(2)}, "explicit", "", now); err != nil || epoch() != 2 {
		t.Fatalf("RevokeState = %v at epoch %d; want epoch 2", err, epoch())
	}
	if _, err := pcrpolicy.Approve(ctx, st, 0x000b, map[uint32][]byte{0: v(9), 7: v(2)}, nil, "explicit", "", now); !errors.Is(err, pcrpolicy.ErrRevoked) {
		t.Fatalf("Approve of a state a revocation covers = %v; want ErrRevoked", err)
	}
	if _, err := pcrpolicy.Revoke(ctx, st, "0123456789abcdef", "", now); !errors.Is(err, pcrpolicy.ErrUnknownApproval) {
		t.Fatalf("Revoke of an unknown ID = %v; want ErrUnknownApproval", err)
	}
	if _, err := pcrpolicy.Approve(ctx, st, 0x000b, map[uint32][]byte{7: {1, 2}}, nil, "explicit", "", now); err == nil {
		t.Fatal("Approve of a malformed state succeeded")
	}
	all, e, err := st.PCRApprovals(ctx)
	if err != nil || len(all) != 2 || e != 2 {
		t.Fatalf("stored %d records at epoch %d, %v; want the two revocations only", len(all), e, err)
	}
}

func TestNewSigner(t *testing.T) {
	k := key(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		current, next *ecdsa.PrivateKey
		wantErr       string
	}{
		{"no key", nil, nil, "no PCR-policy signing key"},
		{"next is current", k, k, "the next PCR-policy signing key is the current one"},
		{"P-384", p384, nil, "the PCR-policy signing key must be ECC P-256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := pcrpolicy.NewSigner(tt.current, tt.next); err == nil || err.Error() != tt.wantErr {
				t.Fatalf("NewSigner = %v, want %q", err, tt.wantErr)
			}
		})
	}
	s, err := pcrpolicy.NewSigner(k, key(t))
	if err != nil {
		t.Fatal(err)
	}
	if a := s.Authorization(tpm2.TPMAlgSHA256, []uint32{7}, "ek", nil); len(a.Signers) != 2 {
		t.Errorf("an authorization names %d signers, want the current and the next", len(a.Signers))
	}
	pems, err := s.PublicKeysPEM()
	if err != nil || bytes.Count(pems, []byte("BEGIN PUBLIC KEY")) != 2 {
		t.Errorf("PublicKeysPEM = %s, %v", pems, err)
	}
}
