package pcrpolicy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/store"
)

// ErrRevoked is returned when approving a state that was revoked: a
// revocation is final (approving it again would take the broker's epoch
// back), approve another state instead.
var ErrRevoked = errors.New("the state was revoked")

// ErrUnknownApproval is returned when revoking an approval ID nothing is
// stored under.
var ErrUnknownApproval = errors.New("no such PCR approval")

// CheckState checks a PCR state as an operator gives it: a bank keybroker
// seals to (SHA-256, SHA-384, SHA-512), 1 to 24 PCRs 0..23, each value of
// the bank's size.
func CheckState(bank uint32, pcrs map[uint32][]byte) error {
	var size int
	switch tpm2.TPMAlgID(bank) {
	case tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512:
		h, _ := tpm2.TPMIAlgHash(bank).Hash()
		size = h.Size()
	default:
		return fmt.Errorf("PCR bank 0x%04x is not one keybroker seals to (sha256, sha384, sha512)", bank)
	}
	if len(pcrs) == 0 || len(pcrs) > store.MaxApprovedPCRs {
		return fmt.Errorf("a state gives 1 to %d PCR values, not %d", store.MaxApprovedPCRs, len(pcrs))
	}
	for i, v := range pcrs {
		switch {
		case i > 23:
			return fmt.Errorf("PCR %d is not a PCR index 0..23", i)
		case len(v) != size:
			return fmt.Errorf("PCR %d has %d bytes, want %d for its bank", i, len(v), size)
		}
	}
	return nil
}

// Approve approves state (bank, pcrs) for the pcr_policy "authorized"
// releases named in releases — every such release when releases is empty
// — of every node whose releases cover those PCRs: stored under StateID,
// it reaches each node at its next attestation. Approving a state again
// updates its scope and note; a revoked state, or one a revocation covers,
// is refused with ErrRevoked. The check and the write are one store
// update, so a concurrent revocation is never undone.
func Approve(ctx context.Context, st store.PCRApprovals, bank uint32, pcrs map[uint32][]byte, releases []string, source, note string, now time.Time) (store.PCRApproval, error) {
	if err := CheckState(bank, pcrs); err != nil {
		return store.PCRApproval{}, err
	}
	id := StateID(bank, pcrs)
	releases = slices.Compact(slices.Sorted(slices.Values(releases)))
	return st.UpdatePCRApproval(ctx, func(all []store.PCRApproval) (store.PCRApproval, error) {
		a := store.PCRApproval{ID: id, Bank: bank, PCRs: pcrs, Releases: releases, Source: source, Note: note, Created: now.UTC()}
		if old := find(all, id); old != nil {
			if !old.Revoked.IsZero() {
				return store.PCRApproval{}, fmt.Errorf("state %s: %w at %s", id, ErrRevoked, old.Revoked.UTC().Format(time.RFC3339))
			}
			a.Created = old.Created
		}
		if revoked(bank, pcrs, all) {
			return store.PCRApproval{}, fmt.Errorf("state %s: %w (a revocation covers it)", id, ErrRevoked)
		}
		return a, nil
	})
}

// Revoke revokes the stored approval id: no node receives it again, and at
// each node's next attestation its counter passes every version signed
// before, so approvals it holds stop opening (see the package doc). It
// returns the record as stored; revoking a revoked record changes nothing.
func Revoke(ctx context.Context, st store.PCRApprovals, id, note string, now time.Time) (store.PCRApproval, error) {
	return st.UpdatePCRApproval(ctx, func(all []store.PCRApproval) (store.PCRApproval, error) {
		old := find(all, id)
		if old == nil {
			return store.PCRApproval{}, fmt.Errorf("%w: %s", ErrUnknownApproval, id)
		}
		return revokeRecord(*old, note, now), nil
	})
}

// RevokeState revokes state (bank, pcrs) whether or not it was approved
// through the store (an attested state, a policy's expected state): as
// Revoke, for every state that agrees with it on the PCRs they share.
func RevokeState(ctx context.Context, st store.PCRApprovals, bank uint32, pcrs map[uint32][]byte, source, note string, now time.Time) (store.PCRApproval, error) {
	if err := CheckState(bank, pcrs); err != nil {
		return store.PCRApproval{}, err
	}
	id := StateID(bank, pcrs)
	return st.UpdatePCRApproval(ctx, func(all []store.PCRApproval) (store.PCRApproval, error) {
		if old := find(all, id); old != nil {
			return revokeRecord(*old, note, now), nil
		}
		return store.PCRApproval{ID: id, Bank: bank, PCRs: pcrs, Source: source, Note: note, Created: now.UTC(), Revoked: now.UTC()}, nil
	})
}

// revokeRecord is a revoked at now (unchanged if it already is), with note
// if given.
func revokeRecord(a store.PCRApproval, note string, now time.Time) store.PCRApproval {
	if !a.Revoked.IsZero() {
		return a
	}
	a.Revoked = now.UTC()
	if note != "" {
		a.Note = note
	}
	return a
}

// find returns the record of id in all, if any.
func find(all []store.PCRApproval, id string) *store.PCRApproval {
	for i := range all {
		if all[i].ID == id {
			return &all[i]
		}
	}
	return nil
}
