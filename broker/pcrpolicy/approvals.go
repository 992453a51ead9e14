package pcrpolicy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/sealing"
)

// StateID names a PCR state: 16 lowercase hex digits of the SHA-256 of the
// bank and the values in index order. Approving a state twice names the
// same record.
func StateID(bank uint32, pcrs map[uint32][]byte) string {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint16(nil, uint16(bank)))
	for _, i := range slices.Sorted(maps.Keys(pcrs)) {
		h.Write([]byte{byte(i)})
		h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(pcrs[i]))))
		h.Write(pcrs[i])
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Epoch is the broker's revocation epoch: the number of revoked approvals
// in stored. Records are never deleted, so it only grows, and every
// replica reading the same records agrees on it.
func Epoch(stored []store.PCRApproval) uint64 {
	var n uint64
	for _, a := range stored {
		if !a.Revoked.IsZero() {
			n++
		}
	}
	return n
}

// Bound is the version to sign a node's approvals at, from the version of
// its record (prevBound, set at epoch prevEpoch), the broker's epoch now and
// the counter value the node reported: never below either, and above
// prevBound when something was revoked since, so that the node's counter,
// advanced to it, stops every approval signed before.
func Bound(prevBound, prevEpoch, epoch, reported uint64) uint64 {
	b := max(prevBound, reported)
	if epoch > prevEpoch && prevBound > 0 && b <= prevBound {
		b = prevBound + 1
	}
	return b
}

// Selection is one authorized release's PCR selection and the states its
// policy expects.
type Selection struct {
	Bank     tpm2.TPMAlgID
	PCRs     []uint32
	Expected []map[uint32][]byte
}

// Node is what a node's approvals are made from.
type Node struct {
	// EKHash names the node; its approvals are for it alone.
	EKHash string
	// Attested returns the values the node attested for bank and pcrs
	// (verify.Verified.SealPCRs).
	Attested func(bank tpm2.TPMAlgID, pcrs []uint32) (*tpmpb.PCRs, error)
	// Counter is the node's policy counter; Version the bound its
	// approvals are signed at.
	Counter *tpm2.TPMSNVPublic
	Version uint64
}

// Approvals signs, with the current key, an approval of every state each
// selection may open in: the attested state, its expected states and the
// stored approvals of its bank that give all its PCRs — except the states
// a revocation covers (see revoked) — each once, at most
// sealing.MaxApprovals in all.
func (s *Signer) Approvals(n Node, sels []Selection, stored []store.PCRApproval) ([]*sealing.Approval, error) {
	var out []*sealing.Approval
	seen := map[string]bool{}
	for _, sel := range sels {
		attested, err := n.Attested(sel.Bank, sel.PCRs)
		if err != nil {
			return nil, err
		}
		states := []map[uint32][]byte{attested.GetPcrs()}
		states = append(states, sel.Expected...)
		for _, a := range stored {
			if a.Revoked.IsZero() && a.Bank == uint32(sel.Bank) {
				if st, ok := restrict(a.PCRs, sel.PCRs); ok {
					states = append(states, st)
				}
			}
		}
		for _, st := range states {
			id := StateID(uint32(sel.Bank), st)
			if seen[id] || revoked(uint32(sel.Bank), st, stored) {
				continue
			}
			seen[id] = true
			if len(out) == sealing.MaxApprovals {
				return nil, fmt.Errorf("more than %d approved PCR states for one node", sealing.MaxApprovals)
			}
			a, err := sealing.SignApproval(s.current, &tpmpb.PCRs{Hash: tpmpb.HashAlgo(sel.Bank), Pcrs: st}, []byte(n.EKHash), n.Counter, n.Version)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
	}
	return out, nil
}

// restrict returns state's values of pcrs, if it gives them all.
func restrict(state map[uint32][]byte, pcrs []uint32) (map[uint32][]byte, bool) {
	out := make(map[uint32][]byte, len(pcrs))
	for _, i := range pcrs {
		v, ok := state[i]
		if !ok {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

// revoked reports whether a revocation in stored covers state: same bank,
// at least one PCR in common, and the same value for every PCR in common.
// A revocation naming fewer PCRs than a selection revokes every state that
// agrees with it; one naming more revokes the states of fewer PCRs it
// contains, since their approval would open in it.
func revoked(bank uint32, state map[uint32][]byte, stored []store.PCRApproval) bool {
	for _, r := range stored {
		if r.Revoked.IsZero() || r.Bank != bank {
			continue
		}
		common, agree := 0, true
		for i, v := range state {
			if rv, ok := r.PCRs[i]; ok {
				common++
				agree = agree && bytes.Equal(rv, v)
			}
		}
		if common > 0 && agree {
			return true
		}
	}
	return false
}
