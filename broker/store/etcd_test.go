package store_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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

// TestEtcdPCRApprovalsAcrossClients approves and revokes the same records
// at once through two stores, each with its own connection, as two broker
// replicas would: their transactions conflict, and none undoes another's.
func TestEtcdPCRApprovalsAcrossClients(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	prefix := "/approvals/"
	storetest.PCRApprovalsConcurrent(t, openEtcd(t, c, store.EtcdOpts{Prefix: prefix}), openEtcd(t, c, store.EtcdOpts{Prefix: prefix}))
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
	// Whether the request waits out the timeout or the stopping etcd
	// resets its connection first, the error says so.
	if msg := err.Error(); !strings.Contains(msg, "etcd did not answer within 2s") && !strings.Contains(msg, "etcd is unavailable") {
		t.Errorf("Record with etcd stopped: error %q does not say etcd did not answer or is unavailable", err)
	}
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

// TestEtcdMarkerLease checks that a used challenge's marker has a lease,
// shared by the markers of one expiry second, that ends MarkerGrace after
// the challenge expires.
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
	// The lease ends MarkerGrace after the challenge's expiry, in whole
	// seconds: a replica whose clock lags still finds the marker.
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	want := time.Until(exp.Add(store.MarkerGrace)).Seconds()
	if got := float64(ttl.TTL); got < want-2 || got > want+3 {
		t.Errorf("marker lease TTL %vs; want about %.0fs (expiry + MarkerGrace)", got, want)
	}
	// A lease that ends takes its markers with it.
	short, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/lease/consumed/short", "x", clientv3.WithLease(short.ID)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for countKeys(t, c, "/lease/consumed/short") > 0 {
		if time.Now().After(deadline) {
			t.Fatal("a marker outlived its lease by 15s")
		}
		time.Sleep(250 * time.Millisecond)
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

// TestEtcdTLS opens a store on members that require client certificates.
func TestEtcdTLS(t *testing.T) {
	c := startEtcd(t, etcdtest.Opts{Members: 1, TLS: true})
	e := openEtcd(t, c, store.EtcdOpts{CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile})
	ctx := context.Background()
	d := storetest.Decide("c1", "ek", nil)
	if err := e.Record(ctx, d); err != nil {
		t.Fatalf("Record over TLS: %v", err)
	}
	if r, err := e.GetReceipt(ctx, d.Receipt.ID); err != nil || r.ChallengeID != "c1" {
		t.Fatalf("GetReceipt over TLS = %+v, %v", r, err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Without a client certificate the members refuse the store.
	start := time.Now()
	_, err := store.OpenEtcd(ctx, store.EtcdOpts{Endpoints: c.Endpoints(), CAFile: c.CAFile, DialTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "unable to reach etcd at") {
		t.Fatalf("OpenEtcd without a client certificate: got %v, want a refusal", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("OpenEtcd took %v to give up", d)
	}
}

func TestOpenEtcdErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A loopback port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	ep := []string{closed}
	tests := []struct {
		name    string
		opts    store.EtcdOpts
		wantErr string
	}{
		{"no endpoints", store.EtcdOpts{}, "unable to open etcd store: endpoints cannot be empty"},
		{"empty endpoint", store.EtcdOpts{Endpoints: []string{""}}, "an endpoint cannot be empty"},
		{"cert without key", store.EtcdOpts{Endpoints: ep, CertFile: "c.pem"}, "cert and key must be given together"},
		{"negative timeout", store.EtcdOpts{Endpoints: ep, DialTimeout: -1}, "timeouts cannot be negative"},
		{"missing ca", store.EtcdOpts{Endpoints: ep, CAFile: filepath.Join(dir, "missing.pem")}, "unable to read etcd ca_cert"},
		{"ca not pem", store.EtcdOpts{Endpoints: ep, CAFile: notPEM}, "holds no PEM certificate"},
		{"bad client key", store.EtcdOpts{Endpoints: ep, CertFile: notPEM, KeyFile: notPEM}, "unable to load etcd client certificate"},
		{"unreachable", store.EtcdOpts{Endpoints: ep, DialTimeout: 500 * time.Millisecond}, "unable to reach etcd at " + closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			e, err := store.OpenEtcd(context.Background(), tt.opts)
			if err == nil {
				e.Close()
				t.Fatalf("OpenEtcd succeeded, want %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("OpenEtcd error = %q, want %q", err, tt.wantErr)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("OpenEtcd took %v to fail", d)
			}
		})
	}
}
