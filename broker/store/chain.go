package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// The receipt chain. Every store keeps one chain of its receipts: Record
// gives each receipt the next sequence number of the store (Seq) and the
// hash of the receipt before it (Prev), in the transaction that writes it,
// so that the chain order is the store's own commit order (docs/receipts.md):
//
//   - Bolt: the single writer reads the head (bucket "chain", key "head")
//     at the start of each group commit, chains the decisions of the
//     commit in the order it applies them, and writes the new head in the
//     same bbolt transaction.
//   - Etcd: the head is one key (chain_head) written in every decision's
//     transaction, which compares the head's mod revision with the one the
//     writer read; a broker that lost the race to another reads the new
//     head and retries. etcd serializes transactions, so exactly one
//     decision moves the head from n to n+1: no gap, no fork.
//
// A receipt's stored bytes are its canonical encoding: the JSON that
// encoding/json writes for Receipt (compact, fields in declaration order,
// so beginning {"seq":N,"prev":"<hex>","id":...}). Its hash is the SHA-256
// of those bytes, in lowercase hex (ReceiptHash). "keybroker receipts
// export" writes receipts in the same encoding, one a line, so that an
// auditor recomputes every hash with sha256sum.

// GenesisHash is the Prev of the first receipt of a chain (Seq 1).
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// ChainHead is the newest receipt of a chain: its Seq and hash. The head
// of an empty chain is Seq 0 with GenesisHash.
type ChainHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// ReceiptHash is the hash of a receipt's canonical encoding: lowercase
// hex SHA-256.
func ReceiptHash(encoded []byte) string {
	sum := sha256.Sum256(encoded)
	return hex.EncodeToString(sum[:])
}

// EncodeReceipt returns the canonical encoding of r: the bytes a store
// holds for it, and over which ReceiptHash is computed.
func EncodeReceipt(r *Receipt) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("unable to encode receipt: %w", err)
	}
	// encoding/json writes an invalid UTF-8 byte as \ufffd, which decodes
	// to U+FFFD and encodes again as that character: encode what decoding
	// gives, so that decoding and encoding again reproduces the bytes.
	if bytes.Contains(b, []byte(`\ufffd`)) {
		var again Receipt
		if err := json.Unmarshal(b, &again); err != nil {
			return nil, fmt.Errorf("unable to encode receipt: %w", err)
		}
		if b, err = json.Marshal(&again); err != nil {
			return nil, fmt.Errorf("unable to encode receipt: %w", err)
		}
	}
	return b, nil
}

// chainReceipt returns the stored bytes of a receipt encoded (without Seq
// and Prev) as body, as receipt seq after the receipt whose hash is prev:
// the canonical encoding of the receipt with Seq and Prev set, which
// encoding/json writes first. Only this splice runs in the store's
// serialized commit; the receipt was encoded before.
func chainReceipt(body []byte, seq uint64, prev string) []byte {
	out := make([]byte, 0, len(body)+len(prev)+40)
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, seq, 10)
	out = append(out, `,"prev":"`...)
	out = append(out, prev...)
	out = append(out, `",`...)
	return append(out, body[1:]...)
}

// next chains the receipt r encoded as body after h: it sets r's Seq and
// Prev, moves h to it and returns its stored bytes.
func (h *ChainHead) next(r *Receipt, body []byte) []byte {
	val := chainReceipt(body, h.Seq+1, h.Hash)
	r.Seq, r.Prev = h.Seq+1, h.Hash
	h.Seq, h.Hash = h.Seq+1, ReceiptHash(val)
	return val
}

// decodeHead decodes a stored chain head; nil is the empty chain's.
func decodeHead(v []byte) (ChainHead, error) {
	if v == nil {
		return ChainHead{Hash: GenesisHash}, nil
	}
	var h ChainHead
	if err := json.Unmarshal(v, &h); err != nil || h.Seq == 0 || len(h.Hash) != len(GenesisHash) {
		return ChainHead{}, errors.New("unable to decode the receipt chain head")
	}
	return h, nil
}

func encodeHead(h ChainHead) []byte {
	b, _ := json.Marshal(h) // two plain fields: never fails
	return b
}
