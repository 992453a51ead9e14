package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/store/storetest"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// TestEtcdLayout checks the keys the store writes: each family under the
// prefix, event logs once by content hash and outside the node records,
// and no index entry left behind by deleted receipts.
func TestEtcdLayout(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	const p = "/layout/"
	e := openEtcd(t, c, store.EtcdOpts{Prefix: "/layout"}) // the trailing "/" is added
	ctx := context.Background()
	log := []byte("the fleet's event log")
	sum := sha256.Sum256(log)
	for i := range 3 {
		n := storetest.WithSVIDs(storetest.Node(fmt.Sprintf("ek/%d", i), 1), fmt.Sprintf("a%d", i))
		n.Evidence.EventLog = log
		d := storetest.Decide(fmt.Sprintf("c%d", i), n.EKHash, &n)
		d.Receipt.Time = storetest.T0.Add(time.Duration(i) * time.Second)
		d.Receipt.Check, d.Deny = "policy", store.DenyAdd
		if err := e.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.AddChallengeKey(ctx, store.ChallengeKey{ID: "0123abcd", Secret: make([]byte, 32), Created: storetest.T0}, "", time.Time{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		p + "consumed/c0":   1,
		p + "nodes/ek/0":    1,
		p + "node_svids/a0": 1,
		p + "denied/ek/1":   1,
		p + "event_logs/" + hex.EncodeToString(sum[:]): 1,
		p + "event_logs/":             1, // the one log of the three nodes
		p + "receipts/":               3,
		p + "receipts_by_ek/ek%2F2/":  1, // path-escaped: no EK hash is a prefix of another
		p + "challenge_keys/0123abcd": 1,
	}
	for k, n := range want {
		if got := countKeys(t, c, k); got != n {
			t.Errorf("keys under %s = %d, want %d", k, got, n)
		}
	}
	resp, err := c.Client(t).Get(ctx, p+"nodes/ek/1")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("node record: %v", err)
	}
	if v := string(resp.Kvs[0].Value); strings.Contains(v, `"event_log":`) || !strings.Contains(v, hex.EncodeToString(sum[:])) {
		t.Errorf("stored node record holds its event log or lacks its hash: %s", v)
	}

	if n, err := e.DeleteReceiptsBefore(ctx, storetest.T0.Add(2*time.Second), 10, storetest.Seal); err != nil || n != 2 {
		t.Fatalf("DeleteReceiptsBefore = %d, %v; want 2", n, err)
	}
	if got := countKeys(t, c, p+"receipts_by_ek/"); got != 1 {
		t.Errorf("EK index entries after deleting 2 of 3 receipts = %d, want 1", got)
	}
	if got := countKeys(t, c, p+"receipts/"); got != 1 {
		t.Errorf("receipts left = %d, want 1", got)
	}
	all, err := c.Client(t).Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range all.Kvs {
		if fam, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), p), "/"); !strings.Contains(
			" consumed receipts receipts_by_ek receipts_by_seq nodes node_svids denied event_logs challenge_keys chain_head checkpoints pcr_approvals ", " "+fam+" ") {
			t.Errorf("unexpected key %s", kv.Key)
		}
	}
}

// TestEtcdDeleteReceiptsBatches deletes more receipts than one transaction
// may hold.
func TestEtcdDeleteReceiptsBatches(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	e := openEtcd(t, c, store.EtcdOpts{Prefix: "/batches/"})
	ctx := context.Background()
	const total = 250
	for i := range total {
		d := storetest.Decide("", "ek", nil)
		d.Receipt.Time = storetest.T0.Add(time.Duration(i) * time.Millisecond)
		if err := e.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := e.DeleteReceiptsBefore(ctx, storetest.T0.Add(time.Hour), 230, storetest.Seal); err != nil || n != 230 {
		t.Fatalf("DeleteReceiptsBefore = %d, %v; want 230", n, err)
	}
	if got := countKeys(t, c, "/batches/receipts_by_ek/"); got != total-230 {
		t.Errorf("EK index entries = %d, want %d", got, total-230)
	}
	rs, err := e.ListReceipts(ctx, store.ListOpts{EKHash: "ek"})
	if err != nil || len(rs) != total-230 || !rs[len(rs)-1].Time.Equal(storetest.T0.Add(230*time.Millisecond)) {
		t.Errorf("receipts left = %d, %v; want the newest %d", len(rs), err, total-230)
	}
}
