package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// MaxApprovedPCRs bounds the PCR values of one approved state.
const MaxApprovedPCRs = 24

// maxApprovalNote bounds an approval's source, note and release names.
const maxApprovalNote = 256

// maxApprovalReleases bounds the releases an approval is scoped to.
const maxApprovalReleases = 32

// PCRApproval is a PCR state the operator approved (or revoked) for
// pcr_policy "authorized" releases. The store only keeps these records;
// which approvals a node receives, and what a revocation means, is decided
// above it (broker/pcrpolicy).
type PCRApproval struct {
	// ID names the state: lowercase hex, 8 to 64 digits (pcrpolicy derives
	// it from the bank and values, so approving a state twice is one
	// record).
	ID string `json:"id"`
	// Bank is the PCR bank as a TPM_ALG_ID (0x000B SHA-256, ...).
	Bank uint32 `json:"bank"`
	// PCRs are the approved values by PCR index.
	PCRs map[uint32][]byte `json:"pcrs"`
	// Releases, when set, scopes the approval to the pcr_policy
	// "authorized" releases of those names; empty: every such release.
	Releases []string `json:"releases,omitempty"`
	// Source says where the state came from ("node <EK hash>",
	// "explicit"); Note is the operator's comment.
	Source string `json:"source,omitempty"`
	Note   string `json:"note,omitempty"`
	// Created is when the state was approved; Revoked, when not zero, when
	// its approval was revoked. Revoked records are kept.
	Created time.Time `json:"created"`
	Revoked time.Time `json:"revoked,omitzero"`
}

// Validate checks that a can be stored.
func (a PCRApproval) Validate() error {
	var errs []error
	if len(a.ID) < 8 || len(a.ID) > 64 || !isLowerHex(a.ID) {
		errs = append(errs, errors.New("PCR approval id must be 8 to 64 lowercase hex digits"))
	}
	if a.Bank == 0 || a.Bank > 0xFFFF {
		errs = append(errs, errors.New("PCR approval bank must be a TPM_ALG_ID"))
	}
	if len(a.PCRs) == 0 || len(a.PCRs) > MaxApprovedPCRs {
		errs = append(errs, fmt.Errorf("PCR approval must name 1 to %d PCR values", MaxApprovedPCRs))
	}
	for i, v := range a.PCRs {
		if i > 23 || len(v) == 0 || len(v) > 64 {
			errs = append(errs, fmt.Errorf("PCR approval value of PCR %d is not a PCR value", i))
		}
	}
	if len(a.Releases) > maxApprovalReleases {
		errs = append(errs, fmt.Errorf("PCR approval must name at most %d releases", maxApprovalReleases))
	}
	for _, r := range a.Releases {
		if r == "" || len(r) > maxApprovalNote {
			errs = append(errs, fmt.Errorf("PCR approval release names must be 1 to %d bytes", maxApprovalNote))
			break
		}
	}
	if len(a.Source) > maxApprovalNote || len(a.Note) > maxApprovalNote {
		errs = append(errs, fmt.Errorf("PCR approval source and note must be at most %d bytes", maxApprovalNote))
	}
	if a.Created.IsZero() {
		errs = append(errs, errors.New("PCR approval creation time cannot be zero"))
	}
	return errors.Join(errs...)
}

// ErrUnrevoke is returned when an update would take back a revocation:
// a revoked record stays revoked, with its revocation time.
var ErrUnrevoke = errors.New("a revoked PCR approval cannot be approved again")

// PCRApprovals keeps the approved PCR states, shared by every replica.
// Implementations are safe for concurrent use, also across processes.
type PCRApprovals interface {
	// PCRApprovals returns every stored approval, revoked ones included,
	// oldest first, and the revocation epoch, read together.
	PCRApprovals(ctx context.Context) ([]PCRApproval, uint64, error)
	// UpdatePCRApproval stores the record fn returns, given every stored
	// record, as one atomic step: no other update lands between the read
	// and the write. An error from fn stores nothing and is returned. The
	// store refuses (ErrUnrevoke) a record that would clear or move the
	// revocation of a stored one, and when the record newly revokes, it
	// bumps the revocation epoch in the same step.
	UpdatePCRApproval(ctx context.Context, fn func(all []PCRApproval) (PCRApproval, error)) (PCRApproval, error)
}

// checkPCRApprovalUpdate checks that a may replace old (nil: none): valid,
// not taking back old's revocation. It reports whether a newly revokes.
func checkPCRApprovalUpdate(old *PCRApproval, a PCRApproval) (bool, error) {
	if err := a.Validate(); err != nil {
		return false, err
	}
	if old == nil {
		return !a.Revoked.IsZero(), nil
	}
	if !old.Revoked.IsZero() {
		if !a.Revoked.Equal(old.Revoked) {
			return false, fmt.Errorf("PCR approval %s: %w", a.ID, ErrUnrevoke)
		}
		return false, nil
	}
	return !a.Revoked.IsZero(), nil
}

// initialEpoch is the epoch of a store without a stored one: its number of
// revoked records.
func initialEpoch(all []PCRApproval) uint64 {
	var n uint64
	for _, a := range all {
		if !a.Revoked.IsZero() {
			n++
		}
	}
	return n
}

// findApproval returns the record of id in all, if any.
func findApproval(all []PCRApproval, id string) *PCRApproval {
	for i := range all {
		if all[i].ID == id {
			return &all[i]
		}
	}
	return nil
}

// sortOldestFirst orders approvals by creation time, oldest first (then by
// ID).
func sortOldestFirst(as []PCRApproval) {
	slices.SortFunc(as, func(a, b PCRApproval) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return compareStrings(a.ID, b.ID)
	})
}
