package vaultauth

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/store"
)

// nodes/ lists the node records and nodes/<ek_hash> reads one with its
// evidence, exactly as stored; the deny-list entry comes with it.
func TestNodePaths(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)

	resp, err := e.request(logical.ListOperation, "nodes/", nil)
	if err != nil || resp == nil || len(resp.Data) > 0 && resp.Data["keys"] != nil {
		t.Fatalf("nodes/ before any login: %v, %v", resp, err)
	}
	if resp, err := e.login(n, "web"); err != nil || resp.Auth == nil {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	resp, err = e.request(logical.ListOperation, "nodes/", nil)
	if err != nil || !reflect.DeepEqual(resp.Data["keys"], []string{n.ekHash}) {
		t.Fatalf("nodes/ = %v, %v; want [%s]", resp.Data, err, n.ekHash)
	}

	read := func() (map[string]any, store.NodeRecord) {
		t.Helper()
		resp, err := e.request(logical.ReadOperation, "nodes/"+n.ekHash, nil)
		if err != nil || resp == nil {
			t.Fatalf("read nodes/%s: %v, %v", n.ekHash, resp, err)
		}
		raw, err := base64.StdEncoding.DecodeString(resp.Data["record"].(string))
		if err != nil {
			t.Fatalf("record is not base64: %v", err)
		}
		var rec store.NodeRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			t.Fatalf("record is not a node record: %v", err)
		}
		return resp.Data, rec
	}
	data, rec := read()
	stored, err := e.b.store(e.storage).GetNode(t.Context(), n.ekHash)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec, stored) || len(rec.Evidence.Quotes) == 0 || len(rec.Evidence.AKPublic) == 0 {
		t.Fatalf("record read = %+v\nstored = %+v", rec, stored)
	}
	rs := e.receipts()
	if data["ek_hash"] != n.ekHash || data["last_receipt_id"] != rs[0]["id"] || data["deny_listed"] != false ||
		data["last_seen"] != stored.LastSeen.UTC().Format(time.RFC3339Nano) || data["denial"] != nil {
		t.Errorf("summary = %v", data)
	}

	// Denied by the role's policy: the record is replaced (the evidence of
	// the denied login) and the node is deny-listed.
	n.extend(7)
	e.clock.add(time.Second)
	resp, err = e.login(n, "web")
	wantDenied(t, resp, err, msgPolicyDenied)
	data, rec2 := read()
	denial, _ := data["denial"].(map[string]any)
	if data["deny_listed"] != true || denial["check"] != "policy" || denial["receipt_id"] != data["last_receipt_id"] {
		t.Errorf("after a denial: %v", data)
	}
	if reflect.DeepEqual(rec2.Evidence.Quotes, rec.Evidence.Quotes) || rec2.Clock < rec.Clock {
		t.Error("the record still holds the first login's evidence")
	}

	if resp, err := e.request(logical.ReadOperation, "nodes/"+strings.Repeat("0", 64), nil); err != nil || resp != nil {
		t.Errorf("unknown node: %v, %v", resp, err)
	}
	if _, err := e.request(logical.ReadOperation, "nodes/"+strings.ToUpper(n.ekHash), nil); err == nil {
		t.Error("an upper-case EK hash was read")
	}
}
