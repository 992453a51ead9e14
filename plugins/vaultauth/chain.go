package vaultauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/store"
)

// The auth method's receipt chain (docs/receipts.md): each receipt gets the
// next sequence number (Seq) and the hash of the receipt before it (Prev),
// and is stored as its canonical encoding (store.EncodeReceipt), the bytes
// "keybroker receipts export" writes and store.ReceiptHash hashes. Vault
// storage has no transactions, so a receipt is chained in three writes,
// under the chain lock, in this order:
//
//  1. chainSeqPrefix<seq> → receipt ID: the seq index entry, claiming the
//     seq for the receipt;
//  2. receiptPrefix<ID> → the receipt's canonical encoding;
//  3. chainHeadPath → {"seq":N,"hash":"…"}: the new head.
//
// Whoever chains next starts from the stored head and rolls it forward
// (rolledHead): while the index holds an entry for head.Seq+1 whose
// receipt exists with that Seq, that receipt is the head (its head write
// was lost); an entry whose receipt was never written is a seq nobody
// took, and the next receipt takes it (its index write replaces the
// entry). So whichever write fails or is cut off by a crash, every seq is
// held by at most one stored receipt (no fork) and the stored receipts
// hold 1 … n without a gap. The receipt is written before the login
// answers (Record), so no token exists without its chained receipt.
//
// The chain lock is a mutex of the backend: "login" runs on the active
// node only (performance standbys forward it), so it covers the cluster.
// Receipts are local storage: each cluster keeps its own chain.
const (
	chainHeadPath  = "chain/head"
	chainSeqPrefix = "chain/seq/"
)

// chain is the backend's receipt chain lock.
type chain struct{ mu sync.Mutex }

// seqKey is the index key of seq: 20 digits, so that keys list in seq
// order.
func seqKey(prefix string, seq uint64) string { return fmt.Sprintf("%s%020d", prefix, seq) }

// appendReceipt chains r: it sets r's Seq and Prev, writes the index
// entry, the receipt and the head, in this order, and returns the new
// head. On an error r may or may not be stored and chained (the next
// append or rolledHead tells), and the caller issues nothing.
func (v *vaultStore) appendReceipt(ctx context.Context, r *store.Receipt) (store.ChainHead, error) {
	v.chain.mu.Lock()
	defer v.chain.mu.Unlock()
	head, err := v.rolledHead(ctx)
	if err != nil {
		return store.ChainHead{}, err
	}
	r.Seq, r.Prev = head.Seq+1, head.Hash
	val, err := store.EncodeReceipt(r)
	if err != nil {
		return store.ChainHead{}, err
	}
	if err := v.s.Put(ctx, &logical.StorageEntry{Key: seqKey(chainSeqPrefix, r.Seq), Value: []byte(r.ID)}); err != nil {
		return store.ChainHead{}, fmt.Errorf("unable to write the receipt's seq index entry: %w", err)
	}
	if err := v.s.Put(ctx, &logical.StorageEntry{Key: receiptPrefix + r.ID, Value: val}); err != nil {
		return store.ChainHead{}, fmt.Errorf("unable to write the receipt: %w", err)
	}
	next := store.ChainHead{Seq: r.Seq, Hash: store.ReceiptHash(val)}
	if err := v.putJSON(ctx, chainHeadPath, next); err != nil {
		return store.ChainHead{}, fmt.Errorf("unable to write the receipt chain head: %w", err)
	}
	return next, nil
}

// ChainHead implements store.Checkpoints: the stored head rolled forward
// over receipts whose head write was lost.
func (v *vaultStore) ChainHead(ctx context.Context) (store.ChainHead, error) {
	v.chain.mu.Lock()
	defer v.chain.mu.Unlock()
	return v.rolledHead(ctx)
}

// rolledHead reads the stored head and rolls it forward. The caller holds
// the chain lock.
func (v *vaultStore) rolledHead(ctx context.Context) (store.ChainHead, error) {
	head := store.ChainHead{Hash: store.GenesisHash}
	raw, err := v.s.Get(ctx, chainHeadPath)
	if err != nil {
		return store.ChainHead{}, err
	}
	if raw != nil {
		if err := json.Unmarshal(raw.Value, &head); err != nil || head.Seq == 0 || len(head.Hash) != len(store.GenesisHash) {
			return store.ChainHead{}, errors.New("unable to decode the receipt chain head")
		}
	}
	for {
		next := head.Seq + 1
		idx, err := v.s.Get(ctx, seqKey(chainSeqPrefix, next))
		if err != nil || idx == nil {
			return head, err
		}
		val, r, err := v.receipt(ctx, string(idx.Value))
		switch {
		case errors.Is(err, store.ErrNotFound):
			return head, nil // seq next was claimed, its receipt never written
		case err != nil:
			return store.ChainHead{}, err
		case r.Seq != next:
			return store.ChainHead{}, fmt.Errorf("receipt %s, indexed as seq %d, holds seq %d", r.ID, next, r.Seq)
		}
		head = store.ChainHead{Seq: next, Hash: store.ReceiptHash(val)}
	}
}
