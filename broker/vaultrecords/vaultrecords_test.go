package vaultrecords_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/vaultrecords"
)

// fakeVault answers Vault's API for the paths in data (under /v1/),
// lists from keys, and 403 for the paths in forbidden. The Vault auth
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
	if r.Header.Get("X-Vault-Token") != "t0ken" || f.forbidden[path] {
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
