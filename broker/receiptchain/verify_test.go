package receiptchain_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newSigner(t *testing.T) *receiptchain.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := receiptchain.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func keysOf(t *testing.T, signers ...*receiptchain.Signer) receiptchain.Keys {
	t.Helper()
	keys := receiptchain.Keys{}
	for _, s := range signers {
		pemKey, err := s.PublicKeyPEM()
		if err != nil {
			t.Fatal(err)
		}
		if err := receiptchain.ParseKeys(pemKey, keys); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// chain is an export: receipt lines of seq 1..n (index i holds seq i+1)
// and the hash of each.
type chain struct {
	lines  [][]byte
	hashes []string
}

func buildChain(t *testing.T, n int) *chain {
	t.Helper()
	c := &chain{}
	prev := store.GenesisHash
	for i := range n {
		r := store.Receipt{Seq: uint64(i + 1), Prev: prev, ID: fmt.Sprintf("20260102T030405.%09dZ-00", i), Time: t0,
			EKHash: fmt.Sprintf("ek-%d", i%3), Allowed: i%2 == 0, Policies: []string{"p"}}
		enc, err := store.EncodeReceipt(&r)
		if err != nil {
			t.Fatal(err)
		}
		prev = store.ReceiptHash(enc)
		c.lines, c.hashes = append(c.lines, enc), append(c.hashes, prev)
	}
	return c
}

func (c *chain) checkpoint(t *testing.T, s *receiptchain.Signer, seq int) []byte {
	t.Helper()
	cp, err := s.Seal(store.ChainHead{Seq: uint64(seq), Hash: c.hashes[seq-1]})
	if err != nil {
		t.Fatal(err)
	}
	line, err := receiptchain.CheckpointLine(cp)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

func report(keys receiptchain.Keys, lines ...[]byte) receiptchain.Report {
	v := receiptchain.NewVerifier(keys)
	for _, l := range lines {
		v.Add(l)
	}
	return v.Report()
}

func TestVerify(t *testing.T) {
	signer, other := newSigner(t), newSigner(t)
	keys := keysOf(t, signer)
	c := buildChain(t, 6)
	cp3, cp6 := c.checkpoint(t, signer, 3), c.checkpoint(t, signer, 6)
	flip := func(line []byte, from, to string) []byte {
		out := bytes.Replace(line, []byte(from), []byte(to), 1)
		if bytes.Equal(out, line) {
			t.Fatalf("%q not in %s", from, line)
		}
		return out
	}
	legacy := []byte(`{"id":"20250101T000000.000000000Z-00","time":"2025-01-01T00:00:00Z","allowed":true}`)
	lateLegacy := []byte(`{"id":"20270101T000000.000000000Z-00","time":"2027-01-01T00:00:00Z","allowed":true}`)
	tests := []struct {
		name  string
		lines [][]byte
		// wantFirst is the first problem; empty: the chain verifies.
		wantFirst string
	}{
		{name: "intact, lines in any order", lines: [][]byte{cp6, c.lines[5], c.lines[0], c.lines[2], c.lines[1], c.lines[4], c.lines[3], cp3}},
		{name: "receipts before chaining", lines: [][]byte{legacy, c.lines[0], c.lines[1], c.lines[2], cp3}},
		{name: "one byte changed", lines: [][]byte{c.lines[0], flip(c.lines[1], `"ek-1"`, `"ek-X"`), c.lines[2], c.lines[3], c.lines[4], c.lines[5], cp6},
			wantFirst: "receipt seq 2 (20260102T030405.000000001Z-00): was changed"},
		{name: "changed receipt under a checkpoint", lines: [][]byte{c.lines[0], c.lines[1], flip(c.lines[2], `"ek-2"`, `"ek-0"`), c.lines[3], c.lines[4], c.lines[5], cp3, cp6},
			wantFirst: "receipt seq 3 (20260102T030405.000000002Z-00): was changed: its hash or prev does not match"},
		{name: "prev changed after a vouched receipt", lines: [][]byte{c.lines[0], c.lines[1], c.lines[2], flip(c.lines[3], c.hashes[2], c.hashes[1]), c.lines[4], c.lines[5], cp3, cp6},
			wantFirst: "receipt seq 4 (20260102T030405.000000003Z-00): was changed: its hash or prev does not match"},
		{name: "one deleted", lines: [][]byte{c.lines[0], c.lines[1], c.lines[3], c.lines[4], c.lines[5], cp6},
			wantFirst: "receipt seq 3: missing: receipts seq 3 to 3 are not there"},
		{name: "reordered", lines: [][]byte{c.lines[0], flip(flip(c.lines[1], `"seq":2`, `"seq":3`), c.hashes[0], c.hashes[1]),
			flip(flip(c.lines[2], `"seq":3`, `"seq":2`), c.hashes[1], c.hashes[0]), c.lines[3], c.lines[4], c.lines[5], cp6},
			wantFirst: "receipt seq 2 (20260102T030405.000000002Z-00): was changed"},
		{name: "newest deleted", lines: [][]byte{c.lines[0], c.lines[1], c.lines[2], c.lines[3], c.lines[4], cp6},
			wantFirst: "receipt seq 6: missing: a signed checkpoint covers seq 6, but the chain ends at seq 5"},
		{name: "oldest deleted", lines: [][]byte{c.lines[1], c.lines[2], cp3},
			wantFirst: "receipt seq 2 (20260102T030405.000000001Z-00): the chain starts here but no signed checkpoint of seq 1 anchors it"},
		{name: "start anchored by a checkpoint (after a purge)", lines: [][]byte{c.lines[3], c.lines[4], c.lines[5], cp3, cp6}},
		{name: "every receipt past retention", lines: [][]byte{cp6}},
		{name: "tail not covered", lines: [][]byte{c.lines[0], c.lines[1], c.lines[2], c.lines[3], cp3},
			wantFirst: "receipt seq 4: receipts up to seq 4 are not covered by a signed checkpoint (the newest covers seq 3)"},
		{name: "checkpoint by another key refused", lines: [][]byte{c.lines[0], c.lines[1], c.lines[2], c.checkpoint(t, other, 3)},
			wantFirst: "receipt seq 1: receipts up to seq 3 are not covered"},
		{name: "checkpoint with a changed head refused", lines: [][]byte{c.lines[0], c.lines[1], c.lines[2], flip(cp3, `"seq":3`, `"seq":2`)},
			wantFirst: "receipt seq 1: receipts up to seq 3 are not covered"},
		{name: "receipt without chain fields slipped in", lines: [][]byte{c.lines[0], lateLegacy, c.lines[1], c.lines[2], cp3},
			wantFirst: "receipt 20270101T000000.000000000Z-00: has no chain fields but was made after the chain began"},
		{name: "undecodable line", lines: [][]byte{c.lines[0], []byte(`{"seq":2,`), cp3},
			wantFirst: "receipt seq 2: missing: a signed checkpoint covers seq 3, but the chain ends at seq 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := report(keys, tt.lines...)
			if tt.wantFirst == "" {
				if !rep.OK() {
					t.Fatalf("problems: %v", rep.Problems)
				}
				return
			}
			if rep.OK() {
				t.Fatalf("verified, want %q", tt.wantFirst)
			}
			if got := rep.Problems[0].String(); !strings.HasPrefix(got, tt.wantFirst) {
				t.Errorf("first problem = %q\nwant prefix  %q\nall: %v", got, tt.wantFirst, rep.Problems)
			}
		})
	}
}

func TestVerifyRefusedCheckpointNamed(t *testing.T) {
	signer, other := newSigner(t), newSigner(t)
	c := buildChain(t, 2)
	rep := report(keysOf(t, signer), c.lines[0], c.lines[1], c.checkpoint(t, other, 2))
	var found bool
	for _, p := range rep.Problems {
		if strings.Contains(p.String(), "checkpoint of seq 2 refused: signed by key "+other.KeyID()) {
			found = true
		}
	}
	if !found || rep.Checkpoints != 0 {
		t.Errorf("problems = %v, checkpoints = %d; want the checkpoint refused by key", rep.Problems, rep.Checkpoints)
	}
	// Both keys given (two brokers on one etcd): it verifies.
	if rep := report(keysOf(t, signer, other), c.lines[0], c.lines[1], c.checkpoint(t, other, 2)); !rep.OK() {
		t.Errorf("with both keys: %v", rep.Problems)
	}
}

func TestParseKeys(t *testing.T) {
	for _, tt := range []struct {
		name, pem, wantErr string
	}{
		{"empty", "", "no pem public key found"},
		{"not pem", "hello", "data that is not a pem block"},
		{"private key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", `unexpected pem block "PRIVATE KEY"`},
		{"garbage key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "unable to parse public key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := receiptchain.ParseKeys([]byte(tt.pem), receiptchain.Keys{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseKeys = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func ExampleVerifier() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := receiptchain.NewSigner(key)
	pemKey, _ := signer.PublicKeyPEM()
	keys := receiptchain.Keys{}
	_ = receiptchain.ParseKeys(pemKey, keys)

	r := store.Receipt{Seq: 1, Prev: store.GenesisHash, ID: "20260102T030405.000000000Z-00", Allowed: true}
	line, _ := store.EncodeReceipt(&r)
	cp, _ := signer.Seal(store.ChainHead{Seq: 1, Hash: store.ReceiptHash(line)})
	cpLine, _ := receiptchain.CheckpointLine(cp)

	v := receiptchain.NewVerifier(keys)
	v.Add(line)
	v.Add(cpLine)
	rep := v.Report()
	fmt.Println(rep.OK(), rep.Receipts, rep.Covered)
	// Output: true 1 1
}
