package vaultauth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
)

// receipts lists the auth method's receipts and reads each.
func (e *env) receipts() []map[string]any {
	e.t.Helper()
	resp, err := e.request(logical.ListOperation, "receipts/", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	keys, _ := resp.Data["keys"].([]string)
	var out []map[string]any
	for _, k := range keys {
		r, err := e.request(logical.ReadOperation, "receipts/"+k, nil)
		if err != nil || r == nil {
			e.t.Fatalf("read receipt %s: %v", k, err)
		}
		out = append(out, r.Data)
	}
	return out
}

// The auth method keeps what the broker keeps: a receipt per decision,
// the node's record with its evidence, and the deny list.
func TestLoginKeepsReceiptsEvidenceAndDenyList(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)

	if resp, err := e.login(n, "web"); err != nil || resp.Auth == nil {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	rs := e.receipts()
	if len(rs) != 1 || rs[0]["allowed"] != true || rs[0]["ek_hash"] != n.ekHash || rs[0]["check"] != "" ||
		rs[0]["policy_hash"] == "" || rs[0]["quote_digest"] == nil || rs[0]["deny_listed"] != false {
		t.Fatalf("receipts after an allowed login: %v", rs)
	}
	st := e.b.store(e.storage)
	rec, err := st.GetNode(t.Context(), n.ekHash)
	if err != nil || len(rec.Evidence.Quotes) == 0 || len(rec.Evidence.EKPublic) == 0 || rec.LastReceiptID != rs[0]["id"] {
		t.Fatalf("node record %+v, %v: want the evidence and the last receipt", rec, err)
	}

	n.extend(7)
	e.clock.add(time.Second) // receipt IDs begin with their time
	resp, err := e.login(n, "web")
	wantDenied(t, resp, err, msgPolicyDenied)
	rs = e.receipts()
	if len(rs) != 2 || rs[1]["allowed"] != false || rs[1]["check"] != "policy" || rs[1]["deny_listed"] != true {
		t.Fatalf("receipts after a refused login: %v", rs)
	}
	if d, err := st.GetDenial(t.Context(), n.ekHash); err != nil || d.Check != "policy" || d.ReceiptID != rs[1]["id"] {
		t.Fatalf("deny-list entry %+v, %v", d, err)
	}

	e.write("role/web", map[string]any{"policy": pcrPolicy(n.ekHash, n.pcr(7)), "token_policies": "web-secrets"})
	e.clock.add(time.Second)
	if resp, err := e.login(n, "web"); err != nil || resp.Auth == nil {
		t.Fatalf("login after the policy follows the PCR: %v %v", err, resp.Error())
	}
	if _, err := st.GetDenial(t.Context(), n.ekHash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an allowed login left the node deny-listed: %v", err)
	}
	if r, err := e.request(logical.ReadOperation, "receipts/nonexistent", nil); err != nil || r != nil {
		t.Fatalf("reading an unknown receipt: %v, %v", r, err)
	}
}

// failingStorage fails every write under prefix.
type failingStorage struct {
	logical.Storage
	prefix string
}

func (f failingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if strings.HasPrefix(e.Key, f.prefix) {
		return errors.New("storage unavailable")
	}
	return f.Storage.Put(ctx, e)
}

// A login whose receipt cannot be written issues no token, and its
// challenge stays used.
func TestNoTokenWithoutReceipt(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	failing := restart(t, failingStorage{Storage: e.storage, prefix: receiptPrefix}, e.clock)
	resp, err := failing.login(n, "web")
	if err == nil || (resp != nil && resp.Auth != nil) {
		t.Fatalf("login without a receipt: %v, %v", resp, err)
	}
	if keys, _ := e.storage.List(t.Context(), receiptPrefix); len(keys) != 0 {
		t.Fatalf("receipts %v", keys)
	}
	if keys, _ := e.storage.List(t.Context(), consumedPrefix); len(keys) != 1 {
		t.Fatalf("markers %v: the challenge must stay used", keys)
	}
}

// crashingStorage stands for the plugin process dying at the first write
// under prefix: the write does not happen and the login never returns.
type crashingStorage struct {
	logical.Storage
	prefix string
}

// errCrash is what crashingStorage panics with.
var errCrash = errors.New("the plugin process died")

func (c crashingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if strings.HasPrefix(e.Key, c.prefix) {
		panic(errCrash)
	}
	return c.Storage.Put(ctx, e)
}

// The plugin dies between the decision and its answer — after the receipt
// is durable, before the node record and the reply: no token is issued
// (Vault creates one only from a returned Auth), the receipt stays, and
// the challenge stays used, so that a retry of the same answer is refused.
func TestCrashAfterReceiptIssuesNoToken(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	data := n.answer(e.challenge(n), "web")
	crashing := restart(t, crashingStorage{Storage: e.storage, prefix: nodePrefix}, e.clock)
	var resp *logical.Response
	func() {
		defer func() {
			if r := recover(); r != errCrash {
				t.Fatalf("the login did not reach the node record write (recovered %v)", r)
			}
		}()
		resp, _ = crashing.request(logical.UpdateOperation, "login", data)
	}()
	if resp != nil {
		t.Fatalf("a login that died answered %v", resp)
	}
	if keys, _ := e.storage.List(t.Context(), receiptPrefix); len(keys) != 1 {
		t.Fatalf("receipts %v: the decision's receipt must be durable before anything is issued", keys)
	}
	// After a restart the same answer is a replay.
	again := restart(t, e.storage, e.clock)
	resp, err := again.request(logical.UpdateOperation, "login", data)
	if err == nil || (resp != nil && resp.Auth != nil) {
		t.Fatalf("the answer of a login that died was accepted again: %v %v", resp, err)
	}
}

// Event logs are kept apart, once per content, and put back on reading;
// records written before the auth method kept evidence still read.
func TestNodeRecordStorage(t *testing.T) {
	e := newEnv(t)
	st := e.b.store(e.storage)
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)
	for i, ek := range []string{"aa", "bb"} {
		d := &store.Decision{ChallengeID: "ch" + ek, ChallengeExpiry: exp, Receipt: &store.Receipt{EKHash: ek, Allowed: true},
			Node: &store.NodeRecord{EKHash: ek, LastSeen: time.Now(), Clock: uint64(i + 1),
				Evidence: attestation.Evidence{EKPublic: []byte{1}, EventLog: []byte("same log")}}}
		if err := st.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if keys, _ := e.storage.List(ctx, eventLogPrefix); len(keys) != 1 {
		t.Fatalf("event logs kept: %v, want one", keys)
	}
	n, err := st.GetNode(ctx, "bb")
	if err != nil || string(n.Evidence.EventLog) != "same log" || n.Clock != 2 {
		t.Fatalf("node record %+v, %v", n, err)
	}
	big := &store.Decision{ChallengeID: "chcc", ChallengeExpiry: exp, Receipt: &store.Receipt{EKHash: "cc", Allowed: true},
		Node: &store.NodeRecord{EKHash: "cc", LastSeen: time.Now(), Evidence: attestation.Evidence{EventLog: make([]byte, maxStoredEventLog+1)}}}
	if err := st.Record(ctx, big); err != nil {
		t.Fatal(err)
	}
	if n, err := st.GetNode(ctx, "cc"); err != nil || n.Evidence.EventLog != nil || n.Evidence.EventLogSHA256 == "" {
		t.Fatalf("a log too large to keep: record %+v, %v; want its digest only", n.Evidence, err)
	}
	old, err := logical.StorageEntryJSON(nodePrefix+"dd", map[string]any{"ek_hash": "dd", "clock": 7, "reset_count": 1, "ak_name": []byte{0, 11}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Put(ctx, old); err != nil {
		t.Fatal(err)
	}
	if n, err := st.GetNode(ctx, "dd"); err != nil || n.Clock != 7 || n.ResetCount != 1 || len(n.AKName) != 2 {
		t.Fatalf("a record of an earlier version: %+v, %v", n, err)
	}
}
