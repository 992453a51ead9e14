package store_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/store/storetest"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

func startEtcd(t *testing.T, opts etcdtest.Opts) *etcdtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("runs etcd; skipped with -short")
	}
	return etcdtest.Start(t, opts)
}

var unsafeKeyChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// openEtcd opens a store on c under a prefix of the test's own.
func openEtcd(t *testing.T, c *etcdtest.Cluster, opts store.EtcdOpts) *store.Etcd {
	t.Helper()
	opts.Endpoints = c.Endpoints()
	if opts.Prefix == "" {
		opts.Prefix = "/test/" + unsafeKeyChars.ReplaceAllString(t.Name(), "_") + "/"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := store.OpenEtcd(ctx, opts)
	if err != nil {
		t.Fatalf("OpenEtcd: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func TestEtcdContract(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	storetest.Run(t, func(t *testing.T) store.Backend { return openEtcd(t, c, store.EtcdOpts{}) })
}

// TestEtcdRaceAcrossClients answers one challenge 200 times at once through
// two stores, each with its own connection, as two broker replicas would.
func TestEtcdRaceAcrossClients(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	prefix := "/race/"
	replicas := []*store.Etcd{openEtcd(t, c, store.EtcdOpts{Prefix: prefix}), openEtcd(t, c, store.EtcdOpts{Prefix: prefix})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := storetest.WithSVIDs(storetest.Node("ek", uint64(i)), fmt.Sprintf("%x", 0x100+i))
			errs[i] = replicas[i%2].Record(ctx, storetest.Decide("one-challenge", "ek", &node))
		}()
	}
	wg.Wait()
	var won []int
	for i, err := range errs {
		switch {
		case err == nil:
			won = append(won, i)
		case !errors.Is(err, store.ErrConsumed):
			t.Errorf("Record %d: got %v, want ErrConsumed", i, err)
		}
	}
	if len(won) != 1 {
		t.Fatalf("%d Records succeeded (%v), want exactly 1", len(won), won)
	}
	rs, err := replicas[0].ListReceipts(ctx, store.ListOpts{})
	if err != nil || len(rs) != 1 {
		t.Fatalf("receipts = %d, %v; want 1", len(rs), err)
	}
	node, err := replicas[1].GetNode(ctx, "ek")
	if err != nil || node.Clock != uint64(won[0]) || node.LastReceiptID != rs[0].ID {
		t.Errorf("node record = clock %d receipt %s, %v; want the winner's (%d, %s)", node.Clock, node.LastReceiptID, err, won[0], rs[0].ID)
	}
	if got := countKeys(t, c, prefix+"node_svids/"); got != 1 {
		t.Errorf("node SVID index entries = %d, want 1 (only the winner's)", got)
	}
}

// TestEtcdUnavailable stops all of etcd: Record fails promptly with an
// error, and the same store works again once etcd is back.
func TestEtcdUnavailable(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	e := openEtcd(t, c, store.EtcdOpts{RequestTimeout: 2 * time.Second})
	ctx := context.Background()
	n := storetest.Node("ek", 1)
	if err := e.Record(ctx, storetest.Decide("before", "ek", &n)); err != nil {
		t.Fatal(err)
	}

	c.StopAll()
	start := time.Now()
	err := e.Record(ctx, storetest.Decide("during", "ek", &n))
	if err == nil || errors.Is(err, store.ErrConsumed) {
		t.Fatalf("Record with etcd stopped: got %v, want an unavailability error", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("Record took %v to fail with etcd stopped, want about the 2s request timeout", d)
	}
	t.Logf("Record with etcd stopped: %v", err)
	if _, err := e.GetNode(ctx, "ek"); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNode with etcd stopped: got %v, want an unavailability error", err)
	}

	c.StartAll()
	deadline := time.Now().Add(20 * time.Second)
	for err = e.Record(ctx, storetest.Decide("during", "ek", &n)); err != nil; err = e.Record(ctx, storetest.Decide("during", "ek", &n)) {
		if errors.Is(err, store.ErrConsumed) || time.Now().After(deadline) {
			t.Fatalf("Record after etcd came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	rs, err := e.ListReceipts(ctx, store.ListOpts{})
	if err != nil || len(rs) != 2 || rs[0].ChallengeID != "during" || rs[1].ChallengeID != "before" {
		t.Errorf("receipts after recovery = %+v, %v; want during's and before's", rs, err)
	}
}

// TestEtcdMarkerLease checks that a used challenge's marker expires with
// its lease, shared by the markers of one expiry second.
func TestEtcdMarkerLease(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	e := openEtcd(t, c, store.EtcdOpts{Prefix: "/lease/"})
	ctx := context.Background()
	exp := time.Now().Truncate(time.Second).Add(time.Second)
	for _, id := range []string{"a", "b"} {
		d := storetest.Decide(id, "ek", nil)
		d.ChallengeExpiry = exp.Add(100 * time.Millisecond)
		if err := e.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	cli := c.Client(t)
	resp, err := cli.Get(ctx, "/lease/consumed/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("markers = %v, %v; want 2", resp, err)
	}
	if l0, l1 := resp.Kvs[0].Lease, resp.Kvs[1].Lease; l0 == 0 || l0 != l1 {
		t.Errorf("marker leases = %x, %x; want one shared lease", l0, l1)
	}
	if err := e.Record(ctx, storetest.Decide("a", "ek", nil)); !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("Record on a used challenge before its lease ended: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for countKeys(t, c, "/lease/consumed/") > 0 {
		if time.Now().After(deadline) {
			t.Fatal("markers still there 15s after their challenges expired")
		}
		time.Sleep(250 * time.Millisecond)
	}
	if time.Now().Before(exp) {
		t.Errorf("markers gone before their challenges expired at %v", exp)
	}
	if n, err := e.PurgeConsumed(ctx, time.Now()); err != nil || n != 0 {
		t.Errorf("PurgeConsumed = %d, %v; want 0 (leases expire markers)", n, err)
	}
}

func countKeys(t *testing.T, c *etcdtest.Cluster, prefix string) int64 {
	t.Helper()
	resp, err := c.Client(t).Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("counting %s: %v", prefix, err)
	}
	return resp.Count
}
