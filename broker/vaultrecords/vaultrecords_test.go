package vaultrecords_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/vaultrecords"
)

// fakeVault answers Vault's API for the paths in data (under /v1/),
// lists from keys, and 403 for the paths in forbidden (or "METHOD path"). The Vault auth
// method's own answers are tested in plugins/vaultauth and, through a real
// Vault, in e2e/vault; this tests the reader's side.
type fakeVault struct {
	data      map[string]any
	keys      map[string][]string
	forbidden map[string]bool
	raw       map[string]string // answered as is
}

func (f *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	if r.Header.Get("X-Vault-Token") != "t0ken" || f.forbidden[path] || f.forbidden[r.Method+" "+path] {
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"errors":["permission denied"]}`))
		return
	}
	if raw, ok := f.raw[path]; ok {
		w.Write([]byte(raw))
		return
	}
	var body any
	if r.Method == "LIST" || r.URL.Query().Get("list") == "true" {
		if keys, ok := f.keys[path]; ok {
			body = map[string]any{"data": map[string]any{"keys": keys}}
		}
	} else if d, ok := f.data[path]; ok {
		body = map[string]any{"data": d}
	}
	if body == nil {
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"errors":[]}`))
		return
	}
	json.NewEncoder(w).Encode(body)
}

func newReader(t *testing.T, f *fakeVault) *vaultrecords.Reader {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	r, err := vaultrecords.New(vaultrecords.Opts{Address: srv.URL, Token: "t0ken", Mount: "tpm"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const (
	ekA = "aa00000000000000000000000000000000000000000000000000000000000000"
	ekB = "bb00000000000000000000000000000000000000000000000000000000000000"
	ekC = "cc00000000000000000000000000000000000000000000000000000000000000"
)

func recordData(t *testing.T, n store.NodeRecord) map[string]any {
	t.Helper()
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{"ek_hash": n.EKHash, "record": base64.StdEncoding.EncodeToString(b)}
}

func TestReader(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 5, 12, 0, 0, 123, time.UTC)
	nodeA := store.NodeRecord{EKHash: ekA, LastSeen: now, Clock: 1<<63 + 1, AKName: []byte{0, 0xb, 1}, LastReceiptID: "r2"}
	nodeA.Evidence.EKPublic = []byte{1, 2, 3}
	f := &fakeVault{
		data: map[string]any{
			"auth/tpm/receipts/r1": map[string]any{"id": "r1", "time": now.Format(time.RFC3339Nano), "ek_hash": ekA, "allowed": true,
				"policies": []string{"boot"}, "quote_digest": "0a0b"},
			"auth/tpm/receipts/r2": map[string]any{"id": "r2", "time": now.Add(time.Second).Format(time.RFC3339Nano), "ek_hash": ekB,
				"allowed": false, "check": "policy", "failures": []string{"x is false"}, "deny_listed": true},
			"auth/tpm/nodes/" + ekA: recordData(t, nodeA),
			"auth/tpm/nodes/" + ekB: recordData(t, store.NodeRecord{EKHash: ekA}),
			"auth/tpm/nodes/" + ekC: func() map[string]any {
				d := recordData(t, store.NodeRecord{EKHash: ekC})
				d["denial"] = map[string]any{"check": "policy", "receipt_id": "r9", "time": now.Format(time.RFC3339Nano)}
				return d
			}(),
			"auth/tpm/config": map[string]any{"ek_allow": []string{ekA}, "ek_ca": map[string]any{}, "allow_sha1": true,
				"pcr_banks": []string{"sha256"}},
		},
		keys: map[string][]string{
			"auth/tpm/receipts": {"r1", "r2"},
			"auth/tpm/nodes":    {ekB, ekA},
		},
	}
	r := newReader(t, f)

	rs, err := r.ListReceipts(ctx, store.ListOpts{})
	if err != nil || len(rs) != 2 || rs[0].ID != "r2" || rs[1].ID != "r1" {
		t.Fatalf("ListReceipts = %+v, %v; want r2, r1", rs, err)
	}
	if !rs[1].Time.Equal(now) || string(rs[1].QuoteDigest) != "\x0a\x0b" || rs[1].Policies[0] != "boot" ||
		rs[0].Check != "policy" || !rs[0].DenyListed || rs[0].Failures[0] != "x is false" {
		t.Errorf("receipts = %+v", rs)
	}
	if rs, err := r.ListReceipts(ctx, store.ListOpts{EKHash: ekA}); err != nil || len(rs) != 1 || rs[0].ID != "r1" {
		t.Errorf("ListReceipts of %s = %+v, %v", ekA, rs, err)
	}
	if rs, err := r.ListReceipts(ctx, store.ListOpts{Limit: 1}); err != nil || len(rs) != 1 || rs[0].ID != "r2" {
		t.Errorf("ListReceipts limit 1 = %+v, %v", rs, err)
	}

	got, err := r.GetNode(ctx, ekA)
	if err != nil || got.Clock != nodeA.Clock || !got.LastSeen.Equal(now) || string(got.Evidence.EKPublic) != "\x01\x02\x03" {
		t.Errorf("GetNode = %+v, %v; want the record unchanged", got, err)
	}
	if _, err := r.GetNode(ctx, ekB); err == nil || !strings.Contains(err.Error(), "the record read is of node") {
		t.Errorf("a record of another node: %v", err)
	}
	if _, err := r.GetNode(ctx, strings.Repeat("c", 64)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("an unknown node: %v, want not found", err)
	}
	if _, err := r.GetNode(ctx, "../config"); err == nil {
		t.Error("a path for an EK hash was read")
	}
	if ns, err := r.ListNodes(ctx, store.ListNodesOpts{}); err == nil || !strings.Contains(err.Error(), "the record read is of node") {
		t.Errorf("ListNodes with a bad record = %v, %v", ns, err)
	}
	if ns, err := r.ListNodes(ctx, store.ListNodesOpts{Limit: 1}); err != nil || len(ns) != 1 || ns[0].EKHash != ekA {
		t.Errorf("ListNodes limit 1 = %v, %v; want %s first", ns, err, ekA)
	}

	if d, err := r.GetDenial(ctx, ekC); err != nil || d.Check != "policy" || d.ReceiptID != "r9" || !d.Time.Equal(now) || d.EKHash != ekC {
		t.Errorf("GetDenial of a deny-listed node = %+v, %v", d, err)
	}
	if _, err := r.GetDenial(ctx, ekA); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDenial of a node not on the list: %v, want not found", err)
	}

	opts, err := r.VerifyOpts(ctx)
	if err != nil || !opts.AllowSHA1 || len(opts.Banks) != 1 || opts.Banks[0] != tpm2.TPMAlgSHA256 || opts.Trust.EKHashes[0] != ekA {
		t.Errorf("VerifyOpts = %+v, %v", opts, err)
	}
}

func TestReaderRefusals(t *testing.T) {
	ctx := context.Background()
	f := &fakeVault{
		forbidden: map[string]bool{"auth/tpm/receipts": true, "auth/tpm/config": true},
		raw:       map[string]string{"auth/tpm/nodes/" + ekA: `{"data":{"record":"` + strings.Repeat("A", vaultrecords.MaxResponseBytes) + `"}}`},
		data:      map[string]any{"auth/tpm/nodes/" + ekB: map[string]any{"record": "not base64!"}},
	}
	r := newReader(t, f)
	if _, err := r.ListReceipts(ctx, store.ListOpts{}); err == nil || err.Error() != "Vault refused: token lacks list on auth/tpm/receipts/ (403)" {
		t.Errorf("forbidden list: %v", err)
	}
	if _, err := r.VerifyOpts(ctx); err == nil || err.Error() != "Vault refused: token lacks read on auth/tpm/config (403)" {
		t.Errorf("forbidden read: %v", err)
	}
	if _, err := r.GetNode(ctx, ekA); err == nil || !strings.Contains(err.Error(), "larger than 8 MiB") {
		t.Errorf("an answer over the limit: %v", err)
	}
	if _, err := r.GetNode(ctx, ekB); err == nil || !strings.Contains(err.Error(), "holds no base64 record") {
		t.Errorf("a record that is not base64: %v", err)
	}
	if _, err := vaultrecords.New(vaultrecords.Opts{Address: "http://127.0.0.1:1", Token: "t"}); err == nil {
		t.Error("no mount accepted")
	}
}

// chainData is a chain of n receipts as the auth method answers them
// (receipts/<id> with encoded), a receipt from before the chain, and a
// signed checkpoint of seq through.
func chainData(t *testing.T, n int, through uint64) (*fakeVault, receiptchain.Keys) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := receiptchain.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeVault{data: map[string]any{}, keys: map[string][]string{}}
	at := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	f.data["auth/tpm/receipts/r00"] = map[string]any{"id": "r00", "time": at.Format(time.RFC3339Nano), "ek_hash": ekA, "allowed": true}
	f.keys["auth/tpm/receipts"] = []string{"r00"}
	head := store.ChainHead{Hash: store.GenesisHash}
	for i := 1; i <= n; i++ {
		rec := store.Receipt{Seq: uint64(i), Prev: head.Hash, ID: fmt.Sprintf("r%02d", i), Time: at.Add(time.Duration(i) * time.Second), EKHash: ekB, Check: "policy"}
		enc, err := store.EncodeReceipt(&rec)
		if err != nil {
			t.Fatal(err)
		}
		f.data["auth/tpm/receipts/"+rec.ID] = map[string]any{"id": rec.ID, "seq": fmt.Sprint(i), "prev": rec.Prev,
			"encoded": base64.StdEncoding.EncodeToString(enc)}
		f.keys["auth/tpm/receipts"] = append(f.keys["auth/tpm/receipts"], rec.ID)
		head = store.ChainHead{Seq: uint64(i), Hash: store.ReceiptHash(enc)}
		if head.Seq == through {
			c, err := signer.Seal(head)
			if err != nil {
				t.Fatal(err)
			}
			seq := fmt.Sprintf("%020d", c.Seq)
			f.data["auth/tpm/checkpoints/"+seq] = map[string]any{"seq": fmt.Sprint(c.Seq), "head": c.Head,
				"time": c.Time.Format(time.RFC3339Nano), "key_id": c.KeyID, "signature": c.Signature}
			f.keys["auth/tpm/checkpoints"] = []string{seq}
		}
	}
	pemKey, err := signer.PublicKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	f.data["auth/tpm/checkpoint-key"] = map[string]any{"public_key": string(pemKey), "key_id": signer.KeyID()}
	keys := receiptchain.Keys{}
	if err := receiptchain.ParseKeys(pemKey, keys); err != nil {
		t.Fatal(err)
	}
	return f, keys
}

// export runs ExportChain into a verifier.
func export(t *testing.T, r *vaultrecords.Reader, keys receiptchain.Keys) (int, receiptchain.Report) {
	t.Helper()
	v := receiptchain.NewVerifier(keys)
	n, err := r.ExportChain(context.Background(), func(b []byte) error { v.Add(b); return nil },
		func(c store.Checkpoint) error { v.AddCheckpoint(c); return nil })
	if err != nil {
		t.Fatalf("ExportChain: %v", err)
	}
	return n, v.Report()
}

// ExportChain exports the stored bytes of each chained receipt, up to the
// newest checkpoint, and the checkpoints: the export verifies; a receipt
// whose stored bytes changed is named.
func TestExportChain(t *testing.T) {
	f, keys := chainData(t, 5, 4)
	f.forbidden = map[string]bool{"PUT auth/tpm/checkpoints": true} // the head is not signed on request
	r := newReader(t, f)
	n, rep := export(t, r, keys)
	if n != 5 || !rep.OK() || rep.Receipts != 4 || rep.Unchained != 1 || rep.Covered != 4 {
		t.Fatalf("exported %d, report %+v (%v); want the unchained one and seq 1-4 verified", n, rep, rep.Problems)
	}
	if pemKey, err := r.CheckpointKey(context.Background()); err != nil || !strings.Contains(string(pemKey), "PUBLIC KEY") {
		t.Errorf("CheckpointKey = %q, %v", pemKey, err)
	}
	if rs, err := r.ListReceipts(context.Background(), store.ListOpts{Limit: 1}); err != nil || len(rs) != 1 || rs[0].Seq != 5 || rs[0].Check != "policy" {
		t.Errorf("ListReceipts of a chained receipt = %+v, %v", rs, err)
	}

	d := f.data["auth/tpm/receipts/r02"].(map[string]any)
	enc, _ := base64.StdEncoding.DecodeString(d["encoded"].(string))
	d["encoded"] = base64.StdEncoding.EncodeToString([]byte(strings.Replace(string(enc), `"policy"`, `"polica"`, 1)))
	if _, rep := export(t, r, keys); rep.OK() || !strings.HasPrefix(rep.Problems[0].String(), "receipt seq 2 (r02)") {
		t.Errorf("a changed receipt: problems %v, want seq 2 named first", rep.Problems)
	}

	// The head signed on request; a token that may not list the
	// checkpoints exports nothing.
	f.forbidden = nil
	f.data["auth/tpm/checkpoints"] = map[string]any{"seq": "4", "head": "x"}
	if n, _ := export(t, r, keys); n != 5 {
		t.Errorf("exported %d receipts after signing the head, want 5", n)
	}
	stop := errors.New("disk full")
	if n, err := r.ExportChain(context.Background(), func([]byte) error { return stop }, func(store.Checkpoint) error { return nil }); !errors.Is(err, stop) || n != 0 {
		t.Errorf("ExportChain whose writer fails = %d, %v; want 0, the writer's error", n, err)
	}
	f.forbidden = map[string]bool{"GET auth/tpm/checkpoints": true}
	emitted := 0
	_, err := r.ExportChain(context.Background(), func([]byte) error { emitted++; return nil }, func(store.Checkpoint) error { return nil })
	if want := "token lacks list on auth/tpm/checkpoints/"; err == nil || !strings.Contains(err.Error(), want) || emitted != 0 {
		t.Errorf("ExportChain without list on checkpoints: %v, %d receipts; want none and %q", err, emitted, want)
	}
}
