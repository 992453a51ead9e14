package pcrpolicy

import (
	"context"
	"errors"
	"fmt"
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

// Approve approves state (bank, pcrs) for every node whose pcr_policy
// "authorized" releases cover those PCRs: stored under StateID, it reaches
// each node at its next attestation. Approving a state again updates its
// note; a revoked state is refused with ErrRevoked.
func Approve(ctx context.Context, st store.PCRApprovals, bank uint32, pcrs map[uint32][]byte, source, note string, now time.Time) (store.PCRApproval, error) {
	id, all, err := readState(ctx, st, bank, pcrs)
	if err != nil {
		return store.PCRApproval{}, err
	}
	a := store.PCRApproval{ID: id, Bank: bank, PCRs: pcrs, Source: source, Note: note, Created: now.UTC()}
	for _, old := range all {
		if old.ID != id {
			continue
		}
		if !old.Revoked.IsZero() {
			return store.PCRApproval{}, fmt.Errorf("state %s: %w at %s", id, ErrRevoked, old.Revoked.UTC().Format(time.RFC3339))
		}
		a.Created = old.Created
	}
	if revoked(bank, pcrs, all) {
		return store.PCRApproval{}, fmt.Errorf("state %s: %w (a revocation covers it)", id, ErrRevoked)
	}
	if err := st.PutPCRApproval(ctx, a); err != nil {
		return store.PCRApproval{}, err
	}
	return a, nil
}

// Revoke revokes the stored approval id: no node receives it again, and at
// each node's next attestation its counter passes every version signed
// before, so approvals it holds stop opening (see the package doc). It
// returns the record as stored.
func Revoke(ctx context.Context, st store.PCRApprovals, id, note string, now time.Time) (store.PCRApproval, error) {
	all, err := st.PCRApprovals(ctx)
	if err != nil {
		return store.PCRApproval{}, err
	}
	for _, a := range all {
		if a.ID != id {
			continue
		}
		if !a.Revoked.IsZero() {
			return a, nil
		}
		a.Revoked = now.UTC()
		if note != "" {
			a.Note = note
		}
		if err := st.PutPCRApproval(ctx, a); err != nil {
			return store.PCRApproval{}, err
		}
		return a, nil
	}
	return store.PCRApproval{}, fmt.Errorf("%w: %s", ErrUnknownApproval, id)
}

// RevokeState revokes state (bank, pcrs) whether or not it was approved
// through the store (an attested state, a policy's expected state): as
// Revoke, for every state that agrees with it on the PCRs they share.
func RevokeState(ctx context.Context, st store.PCRApprovals, bank uint32, pcrs map[uint32][]byte, source, note string, now time.Time) (store.PCRApproval, error) {
	id, all, err := readState(ctx, st, bank, pcrs)
	if err != nil {
		return store.PCRApproval{}, err
	}
	for _, a := range all {
		if a.ID == id {
			return Revoke(ctx, st, id, note, now)
		}
	}
	a := store.PCRApproval{ID: id, Bank: bank, PCRs: pcrs, Source: source, Note: note, Created: now.UTC(), Revoked: now.UTC()}
	if err := st.PutPCRApproval(ctx, a); err != nil {
		return store.PCRApproval{}, err
	}
	return a, nil
}

// readState checks state (bank, pcrs) and returns its ID and every stored
// record.
func readState(ctx context.Context, st store.PCRApprovals, bank uint32, pcrs map[uint32][]byte) (string, []store.PCRApproval, error) {
	if err := CheckState(bank, pcrs); err != nil {
		return "", nil, err
	}
	all, err := st.PCRApprovals(ctx)
	if err != nil {
		return "", nil, err
	}
	return StateID(bank, pcrs), all, nil
}
