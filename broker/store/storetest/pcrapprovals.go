package storetest

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

func testPCRApprovals(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	if got, err := b.PCRApprovals(ctx); err != nil || len(got) != 0 {
		t.Fatalf("PCRApprovals of an empty store = %v, %v", got, err)
	}
	a1 := store.PCRApproval{ID: "aaaa0001", Bank: 0x000b, PCRs: map[uint32][]byte{0: bytes.Repeat([]byte{1}, 32), 7: bytes.Repeat([]byte{7}, 32)},
		Source: "node ab12", Note: "firmware 1.2", Created: T0.Add(time.Hour)}
	a2 := store.PCRApproval{ID: "aaaa0002", Bank: 0x000b, PCRs: map[uint32][]byte{7: bytes.Repeat([]byte{8}, 32)}, Source: "explicit", Created: T0}
	for _, a := range []store.PCRApproval{a1, a2} {
		if err := b.PutPCRApproval(ctx, a); err != nil {
			t.Fatalf("PutPCRApproval(%s): %v", a.ID, err)
		}
	}
	// Revoking is storing the record again with Revoked set: kept, not
	// deleted.
	a1.Revoked = T0.Add(2 * time.Hour)
	if err := b.PutPCRApproval(ctx, a1); err != nil {
		t.Fatalf("PutPCRApproval(revoked): %v", err)
	}
	got, err := b.PCRApprovals(ctx)
	if err != nil || len(got) != 2 {
		t.Fatalf("PCRApprovals = %v, %v; want 2", got, err)
	}
	if got[0].ID != a2.ID || got[1].ID != a1.ID {
		t.Errorf("PCRApprovals order = %s, %s; want oldest first", got[0].ID, got[1].ID)
	}
	if r := got[1]; !r.Revoked.Equal(a1.Revoked) || !bytes.Equal(r.PCRs[7], a1.PCRs[7]) || r.Note != a1.Note || r.Source != a1.Source {
		t.Errorf("stored %+v, want %+v", r, a1)
	}
	tests := []struct {
		name    string
		modify  func(a *store.PCRApproval)
		wantErr string
	}{
		{"short id", func(a *store.PCRApproval) { a.ID = "ab" }, "id must be 8 to 64 lowercase hex digits"},
		{"no values", func(a *store.PCRApproval) { a.PCRs = nil }, "must name 1 to 24 PCR values"},
		{"PCR 24", func(a *store.PCRApproval) { a.PCRs = map[uint32][]byte{24: {1}} }, "value of PCR 24 is not a PCR value"},
		{"no bank", func(a *store.PCRApproval) { a.Bank = 0 }, "bank must be a TPM_ALG_ID"},
		{"no time", func(a *store.PCRApproval) { a.Created = time.Time{} }, "creation time cannot be zero"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := a2
			a.ID = "bbbb0001"
			tt.modify(&a)
			if err := b.PutPCRApproval(ctx, a); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PutPCRApproval = %v; want %q", err, tt.wantErr)
			}
		})
	}
	if got, _ := b.PCRApprovals(ctx); len(got) != 2 {
		t.Errorf("refused approvals were stored: %d records", len(got))
	}
}
