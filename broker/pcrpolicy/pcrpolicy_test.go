package pcrpolicy_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"math"
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
	sel := pcrpolicy.Selection{Bank: tpm2.TPMAlgSHA256, PCRs: []uint32{0, 7},
		Expected: []map[uint32][]byte{{0: v(0), 7: v(2)}, {0: v(0), 7: v(1)}}}
	now := time.Now()
	stored := []store.PCRApproval{
		{ID: "01", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(3), 8: v(9)}, Created: now},         // approved, more PCRs: restricted
		{ID: "02", Bank: 0x000b, PCRs: map[uint32][]byte{7: v(4)}, Created: now},                           // approved, fewer PCRs: not enough
		{ID: "03", Bank: 0x000c, PCRs: map[uint32][]byte{0: v(0), 7: v(5)}, Created: now},                  // another bank
		{ID: "04", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(6)}, Created: now, Revoked: now},    // revoked, never approved
		{ID: "05", Bank: 0x000b, PCRs: map[uint32][]byte{7: v(2)}, Created: now, Revoked: now},             // revokes expected 7=2
		{ID: "06", Bank: 0x000b, PCRs: map[uint32][]byte{0: v(0), 7: v(6)}, Created: now.Add(time.Second)}, // approved again after: still revoked
	}
	got, err := s.Approvals(node, []pcrpolicy.Selection{sel, sel}, stored)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, a := range got {
		if a.Version != 7 || len(a.PCRs.GetPcrs()) != 2 {
			t.Errorf("approval at version %d over %d PCRs", a.Version, len(a.PCRs.GetPcrs()))
		}
		states = append(states, string(rune('0'+a.PCRs.GetPcrs()[7][0])))
	}
	slices.Sort(states)
	if got, want := strings.Join(states, ","), "1,3"; got != want {
		t.Errorf("approved states (PCR 7) = %s, want %s: attested and the stored approval, each once, no revoked or partial state", got, want)
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
