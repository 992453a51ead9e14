package pcrpolicy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
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

// ErrCounter is wrapped by Bound's refusals: the node's reported policy
// counter cannot be taken as it is.
var ErrCounter = errors.New("policy counter refused")

// Bound is the version to sign a node's approvals at, from the version of
// its record (prevBound, set at revocation epoch prevEpoch; both 0 for a
// node without one), the store's revocation epoch now and the counter value
// the node reported: never below either, and one above both whenever the
// epoch is not the one of the record (a revocation since, or a record
// forgotten), so that the node's counter, advanced to it, stops every
// approval signed before.
//
// The reported value is not certified by the TPM, so it is bounded: a
// node with a record cannot report more than sealing.MaxCounterSteps above
// its bound (signing at a version its counter never reaches would make its
// approvals unrevocable: the agent advances at most that many steps), and a
// version past the counter's range is refused.
func Bound(prevBound, prevEpoch, epoch, reported uint64) (uint64, error) {
	if prevBound > 0 && reported > prevBound && reported-prevBound > sealing.MaxCounterSteps {
		return 0, fmt.Errorf("%w: the node reports %d, more than %d above the version %d its approvals are signed at", ErrCounter, reported, sealing.MaxCounterSteps, prevBound)
	}
	b := max(prevBound, reported)
	if epoch != prevEpoch {
		if b == math.MaxUint64 {
			return 0, fmt.Errorf("%w: the version cannot be raised past %d", ErrCounter, b)
		}
		b++
	}
	return b, nil
}

// Selection is one authorized release's PCR selection and the states its
// policy expects.
type Selection struct {
	// Release is the release's name: stored approvals scoped to other
	// releases do not apply to it.
	Release  string
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
// stored approvals of its bank, in scope for its release, that give all
// its PCRs — except the states
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
			if a.Revoked.IsZero() && a.Bank == uint32(sel.Bank) && inScope(a, sel.Release) {
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

// inScope reports whether the stored approval a applies to release: it
// names no releases, or names it.
func inScope(a store.PCRApproval, release string) bool {
	return len(a.Releases) == 0 || slices.Contains(a.Releases, release)
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
