package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

func testPCRApprovals(t *testing.T, b store.Backend) {
	ctx := ctxT(t)
	if got, epoch, err := b.PCRApprovals(ctx); err != nil || len(got) != 0 || epoch != 0 {
		t.Fatalf("PCRApprovals of an empty store = %v, %d, %v", got, epoch, err)
	}
	a1 := store.PCRApproval{ID: "aaaa0001", Bank: 0x000b, PCRs: map[uint32][]byte{0: bytes.Repeat([]byte{1}, 32), 7: bytes.Repeat([]byte{7}, 32)},
		Source: "node ab12", Note: "firmware 1.2", Created: T0.Add(time.Hour)}
	a2 := store.PCRApproval{ID: "aaaa0002", Bank: 0x000b, PCRs: map[uint32][]byte{7: bytes.Repeat([]byte{8}, 32)}, Source: "explicit", Created: T0}
	for _, a := range []store.PCRApproval{a1, a2} {
		if err := put(ctx, b, a); err != nil {
			t.Fatalf("UpdatePCRApproval(%s): %v", a.ID, err)
		}
	}
	// Revoking is storing the record again with Revoked set: kept, not
	// deleted, and the epoch moves by one.
	a1.Revoked = T0.Add(2 * time.Hour)
	if err := put(ctx, b, a1); err != nil {
		t.Fatalf("UpdatePCRApproval(revoked): %v", err)
	}
	got, epoch, err := b.PCRApprovals(ctx)
	if err != nil || len(got) != 2 || epoch != 1 {
		t.Fatalf("PCRApprovals = %v, %d, %v; want 2 records at epoch 1", got, epoch, err)
	}
	// Storing the revoked record again (a second revoke) does not move
	// the epoch; clearing or moving its revocation is refused.
	if err := put(ctx, b, a1); err != nil {
		t.Fatalf("UpdatePCRApproval(revoked again): %v", err)
	}
	for _, revoked := range []time.Time{{}, a1.Revoked.Add(time.Hour)} {
		un := a1
		un.Revoked = revoked
		if err := put(ctx, b, un); !errors.Is(err, store.ErrUnrevoke) {
			t.Errorf("UpdatePCRApproval(revoked %v) = %v; want ErrUnrevoke", revoked, err)
		}
	}
	// An error of fn stores nothing.
	refuse := errors.New("refused by fn")
	if _, err := b.UpdatePCRApproval(ctx, func([]store.PCRApproval) (store.PCRApproval, error) { return store.PCRApproval{}, refuse }); !errors.Is(err, refuse) {
		t.Errorf("UpdatePCRApproval(fn error) = %v; want fn's error", err)
	}
	if got, epoch, _ := b.PCRApprovals(ctx); len(got) != 2 || epoch != 1 || got[1].Revoked.IsZero() {
		t.Fatalf("after refused updates: %d records at epoch %d (revoked %v); want 2 at epoch 1, still revoked", len(got), epoch, got[1].Revoked)
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
			if err := put(ctx, b, a); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("UpdatePCRApproval = %v; want %q", err, tt.wantErr)
			}
		})
	}
	if got, _, _ := b.PCRApprovals(ctx); len(got) != 2 {
		t.Errorf("refused approvals were stored: %d records", len(got))
	}
	PCRApprovalsConcurrent(t, b)
}

// put stores a as it is.
func put(ctx context.Context, b store.Backend, a store.PCRApproval) error {
	_, err := b.UpdatePCRApproval(ctx, func([]store.PCRApproval) (store.PCRApproval, error) { return a, nil })
	return err
}

// PCRApprovalsConcurrent runs approvals that check "not revoked" and
// revocations of the same records at once, spread over bs (stores of one
// database, as replicas have): every update is atomic, so no approval
// lands over a revocation, and the epoch counts each record revoked
// exactly once.
func PCRApprovalsConcurrent(t *testing.T, bs ...store.Backend) {
	ctx := ctxT(t)
	b := bs[0]
	_, before, err := b.PCRApprovals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const records, rounds = 4, 6
	id := func(i int) string { return fmt.Sprintf("cccc%04d", i) }
	var wg sync.WaitGroup
	errs := make(chan error, records*rounds*2)
	for i := range records {
		for r := range rounds {
			wg.Add(2)
			approver, revoker := bs[(i+r)%len(bs)], bs[(i+r+1)%len(bs)]
			go func() { // approve unless revoked
				defer wg.Done()
				_, err := approver.UpdatePCRApproval(ctx, func(all []store.PCRApproval) (store.PCRApproval, error) {
					for _, a := range all {
						if a.ID == id(i) && !a.Revoked.IsZero() {
							return store.PCRApproval{}, errRevokedHere
						}
					}
					return store.PCRApproval{ID: id(i), Bank: 0x000b, PCRs: map[uint32][]byte{7: bytes.Repeat([]byte{byte(i)}, 32)}, Created: T0}, nil
				})
				if err != nil && !errors.Is(err, errRevokedHere) {
					errs <- err
				}
			}()
			go func() { // revoke
				defer wg.Done()
				_, err := revoker.UpdatePCRApproval(ctx, func(all []store.PCRApproval) (store.PCRApproval, error) {
					for _, a := range all {
						if a.ID == id(i) && !a.Revoked.IsZero() {
							return a, nil
						}
					}
					return store.PCRApproval{ID: id(i), Bank: 0x000b, PCRs: map[uint32][]byte{7: bytes.Repeat([]byte{byte(i)}, 32)}, Created: T0, Revoked: T0.Add(time.Minute)}, nil
				})
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent update: %v", err)
	}
	all, after, err := b.PCRApprovals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range records {
		var found bool
		for _, a := range all {
			if a.ID == id(i) {
				found = true
				if a.Revoked.IsZero() {
					t.Errorf("record %s: a concurrent approval undid its revocation", a.ID)
				}
			}
		}
		if !found {
			t.Errorf("record %s missing", id(i))
		}
	}
	if after-before != records {
		t.Errorf("epoch moved by %d, want %d (one per record revoked)", after-before, records)
	}
}

var errRevokedHere = errors.New("revoked")
