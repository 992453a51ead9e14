package store_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/store/storetest"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// TestSizing's fleet is sizingNodes nodes (KEYBROKER_SIZING_NODES) that
// attest sizingAttestations times each; the broker's Records run
// sizingConcurrency at a time.
const (
	sizingNodes        = 10_000
	sizingAttestations = 10
	sizingConcurrency  = 16
)

// sizingLogs are the boot images of the fleet: real event logs of 30-60 KB,
// each booted by a fifth of the nodes.
var sizingLogs = []string{"coreos-36-shielded-vm-no-secure-boot.bin", "cos-125-intel-tdx-secure-boot.bin",
	"rhel8-uefi.bin", "ubuntu-2404-amd-sevsnp.bin", "ubuntu-2404-intel-tdx.bin"}

// The fleet's first receipt is written at sizingT0, the next ones one
// sizingStep apart.
var sizingT0, sizingStep = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 10 * time.Second

// fleet makes the records a broker writes for a fleet of nodes: synthetic
// TPM material of the sizes an RSA-2048 TPM produces, deterministic per
// node, and real event logs shared by the nodes booting one image.
type fleet struct {
	nodes int
	logs  [][]byte
}

func newFleet(t *testing.T, nodes int) *fleet {
	f := &fleet{nodes: nodes}
	for _, name := range sizingLogs {
		b, err := os.ReadFile(filepath.Join("..", "verify", "testdata", "eventlogs", name))
		must(t, err)
		f.logs = append(f.logs, b)
	}
	return f
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func nodeRand(i int, salt uint64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(i), salt))
}

// ekHash is node i's EK hash: the hex SHA-256 verify.EKHash makes.
func (f *fleet) ekHash(i int) string { return hex.EncodeToString(randBytes(nodeRand(i, 1), 32)) }

// node returns node i's record as an allowed attestation at t writes it.
func (f *fleet) node(i int, t time.Time) *store.NodeRecord {
	r := nodeRand(i, 2)
	ek := f.ekHash(i)
	akName := append([]byte{0x00, 0x0b}, randBytes(r, 32)...)
	quote := func(bank uint16, size int) attestation.Quote {
		pcrs := make(map[uint32][]byte, 24)
		for p := range uint32(24) {
			pcrs[p] = randBytes(r, size)
		}
		// TPMS_ATTEST of a quote of 24 PCRs; TPMT_SIGNATURE, RSASSA.
		return attestation.Quote{Attest: randBytes(r, 130), Signature: randBytes(r, 6+256), Bank: bank, PCRs: pcrs}
	}
	clock := uint64(t.Sub(sizingT0).Milliseconds()) + 123456789
	return &store.NodeRecord{
		EKHash: ek, FirstSeen: sizingT0.Add(time.Duration(i) * sizingStep), LastSeen: t, AKName: akName,
		Clock: clock, ResetCount: 12, RestartCount: 3,
		Evidence: attestation.Evidence{
			Time:          t,
			ChallengeID:   challengeID(i, 0),
			EKPublic:      randBytes(r, 314), // TPMT_PUBLIC, RSA-2048 EK template
			EKCertificate: randBytes(r, 1200),
			AKPublic:      randBytes(r, 280),
			SecretHash:    [32]byte(randBytes(r, 32)),
			Quotes:        []attestation.Quote{quote(0x000b, 32), quote(0x000c, 48)},
			EventLog:      f.logs[i%len(f.logs)],
			Previous:      &attestation.Counters{AKName: akName, Clock: clock - 3_600_000, ResetCount: 12, RestartCount: 3},
		},
		SVIDs: []store.NodeSVID{{
			Serial:   hex.EncodeToString(append([]byte{0x40}, randBytes(r, 15)...)),
			ID:       spiffeid.RequireFromString("spiffe://prod.example.com/keybroker/node/" + ek),
			NotAfter: t.Add(24 * time.Hour),
		}},
		WorkloadEntries: []store.WorkloadEntry{
			workloadEntry("web", "uid:1000"), workloadEntry("metrics-exporter", "uid:65534"),
		},
	}
}

func workloadEntry(name, uid string) store.WorkloadEntry {
	return store.WorkloadEntry{
		Name: name, ID: spiffeid.RequireFromString("spiffe://prod.example.com/workload/" + name),
		Selectors: []store.Selector{{Type: "unix", Value: uid}, {Type: "unix", Value: "path:/usr/bin/" + name}},
		TTL:       time.Hour,
	}
}

// challengeID is the ID of node i's k-th challenge, as long as the
// broker's (22 characters).
func challengeID(i, k int) string {
	return base64.RawURLEncoding.EncodeToString(randBytes(nodeRand(i, uint64(k)+1000), 16))
}

// receipt returns the k-th receipt of the fleet, for node k % nodes at t:
// each node's first allowed, then nine in ten allowed with a TLS
// certificate and a node SVID released, the others refused by policy and
// deny-listing the node.
func (f *fleet) receipt(k int, t time.Time) (*store.Receipt, store.DenyChange) {
	i := k % f.nodes
	r := nodeRand(k, 3)
	rec := &store.Receipt{
		Time: t, ChallengeID: challengeID(i, k), EKHash: f.ekHash(i),
		AKName:      append([]byte{0x00, 0x0b}, randBytes(r, 32)...),
		QuoteDigest: randBytes(r, 32),
		Allowed:     k < f.nodes || k%10 != 0,
		Policies:    []string{"fleet-baseline", "web-tier"},
		PolicyHash:  hex.EncodeToString(randBytes(r, 32)),
	}
	if !rec.Allowed {
		rec.Check, rec.Policies = "policy", nil
		rec.Failures = []string{
			"fleet-baseline: pcr 7 (sha256) is " + hex.EncodeToString(randBytes(r, 32)) + ", not an allowed value",
			"web-tier: event log: secure boot is disabled",
		}
		return rec, store.DenyAdd
	}
	rec.Released = []store.ReleasedItem{
		{Name: "web-tls", Type: "tls_certificate", Mode: "pcr_sealed",
			Serial: hex.EncodeToString(append([]byte{0x51}, randBytes(r, 15)...)), NotAfter: t.Add(24 * time.Hour),
			PCRBank: "sha256", PCRs: []uint32{0, 2, 4, 7}},
		{Name: "node-svid", Type: "x509_svid", Mode: "tpm_bound",
			Serial: hex.EncodeToString(append([]byte{0x40}, randBytes(r, 15)...)), NotAfter: t.Add(24 * time.Hour),
			SPIFFEID: spiffeid.RequireFromString("spiffe://prod.example.com/keybroker/node/" + rec.EKHash)},
	}
	return rec, store.DenyRemove
}

// recordAll records decisions first..last-1 of the fleet, made by
// decision, sizingConcurrency at a time, one Record call each.
func recordAll(t *testing.T, b store.Backend, first, last int, decision func(k int) *store.Decision) {
	var next, failed atomic.Int64
	next.Store(int64(first))
	var wg sync.WaitGroup
	for range sizingConcurrency {
		wg.Go(func() {
			for k := int(next.Add(1) - 1); k < last && failed.Load() == 0; k = int(next.Add(1) - 1) {
				if err := b.Record(context.Background(), decision(k)); err != nil {
					failed.Add(1)
					t.Errorf("decision %d: %v", k, err)
				}
			}
		})
	}
	if wg.Wait(); t.Failed() {
		t.FailNow()
	}
}

// decision is the fleet's k-th verified attestation, of node k % nodes,
// as the broker records it: the receipt, the node's new record (also when
// policy refused) and the deny-list change. The first of each node is
// allowed.
func (f *fleet) decision(k int) *store.Decision {
	t := sizingT0.Add(time.Duration(k) * sizingStep)
	rec, deny := f.receipt(k, t)
	n := f.node(k%f.nodes, t)
	if !rec.Allowed {
		n.SVIDs, n.WorkloadEntries = nil, nil
	}
	return &store.Decision{ChallengeID: rec.ChallengeID, ChallengeExpiry: time.Now().Add(5 * time.Minute),
		Receipt: rec, Node: n, Deny: deny}
}

// usage is what a backend takes after one phase: the file or database
// size, the part of it in use, and key count and value bytes per family.
type usage struct {
	size, inUse       int64
	compacted, cInUse int64 // etcd after Compact + Defragment
	keys, values      map[string]int64
}

// sizingTarget is a backend under measurement: measure may reopen b.
type sizingTarget struct {
	name    string
	b       store.Backend
	measure func(t *testing.T) usage // after every challenge marker expired
}

var sizingFamilies = []string{"nodes", "receipts", "receipts_by_ek", "node_svids", "event_logs", "denied", "consumed"}

// TestSizing writes a fleet's node records and receipts to each backend
// and prints the space they take. It is a measurement, run by `make
// sizing`; it checks only that the store holds what was written.
func TestSizing(t *testing.T) {
	if os.Getenv("KEYBROKER_SIZING") != "1" {
		t.Skip("a measurement of several minutes: run it with `make sizing` (KEYBROKER_SIZING=1)")
	}
	nodes := sizingNodes
	if v := os.Getenv("KEYBROKER_SIZING_NODES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("KEYBROKER_SIZING_NODES=%q: want a positive count", v)
		}
		nodes = n
	}
	receipts := nodes * sizingAttestations
	f := newFleet(t, nodes)
	fmt.Printf("fleet: %d nodes (%d boot images), %d receipts; %d CPUs; %s\n",
		nodes, len(f.logs), receipts, runtime.NumCPU(), time.Now().UTC().Format(time.DateOnly))
	for _, target := range []*sizingTarget{boltTarget(t), etcdTarget(t)} {
		t.Run(target.name, func(t *testing.T) { measureFleet(t, f, target, receipts) })
	}
}

// measureFleet writes each node's first attestation, then the other
// attestations up to receipts, then deletes the older half of the
// receipts, measuring the backend after each phase.
func measureFleet(t *testing.T, f *fleet, target *sizingTarget, receipts int) {
	var us []usage
	fmt.Printf("\n%s %-10s %11s %11s %11s %11s %6s  keys/value bytes: %s\n", target.name, "phase", "size",
		"in use", "compacted", "(in use)", "time", strings.Join(sizingFamilies, " "))
	row := func(phase string, start time.Time) {
		u := target.measure(t)
		fmt.Printf("%s %-10s %11d %11d %11d %11d %6s  values:", target.name, phase, u.size, u.inUse,
			u.compacted, u.cInUse, time.Since(start).Round(time.Second))
		for _, fam := range sizingFamilies {
			fmt.Printf(" %d/%d", u.keys[fam], u.values[fam])
		}
		fmt.Println()
		us = append(us, u)
	}
	row("empty", time.Now())
	start := time.Now()
	recordAll(t, target.b, 0, f.nodes, f.decision)
	row("nodes", start)
	start = time.Now()
	recordAll(t, target.b, f.nodes, receipts, f.decision)
	row("receipts", start)
	start = time.Now()
	for cut := sizingT0.Add(time.Duration(receipts/2) * sizingStep); ; {
		n, err := target.b.DeleteReceiptsBefore(context.Background(), cut, 1000, storetest.Seal)
		must(t, err)
		if n == 0 {
			break
		}
	}
	row("retention", start)

	all, half := us[2], us[3]
	if all.keys["nodes"] != int64(f.nodes) || all.keys["event_logs"] != int64(len(f.logs)) {
		t.Errorf("%d node records and %d event logs stored, want %d and %d", all.keys["nodes"], all.keys["event_logs"], f.nodes, len(f.logs))
	}
	// Retention deletes in chain order: a receipt chained before an
	// older one (concurrent writers) holds that one back.
	if left := half.keys["receipts"]; all.keys["receipts"] != int64(receipts) ||
		left < int64(receipts-receipts/2) || left > int64(receipts-receipts/2+sizingConcurrency) {
		t.Errorf("receipts = %d, then %d after retention; want %d, then %d (+ up to %d held back by chain order)",
			all.keys["receipts"], left, receipts, receipts-receipts/2, sizingConcurrency)
	}
	per := func(name string, v func(usage) int64) {
		fmt.Printf("%s per node (its first attestation) / per later attestation, %-9s %7.0f / %5.0f bytes\n", target.name, name+":",
			float64(v(us[1])-v(us[0]))/float64(f.nodes), float64(v(us[2])-v(us[1]))/float64(receipts-f.nodes))
	}
	per("size", func(u usage) int64 { return u.size })
	per("in use", func(u usage) int64 { return u.inUse })
	if all.compacted > 0 {
		per("compacted", func(u usage) int64 { return u.compacted })
	}
	per("values", func(u usage) int64 { v := u.values; return v["nodes"] + v["node_svids"] + v["receipts"] + v["denied"] })
}

// boltTarget measures a bbolt file: its size, and the pages in use (the
// high-water mark less the free pages).
func boltTarget(t *testing.T) *sizingTarget {
	path := filepath.Join(t.TempDir(), "store.db")
	open := func() store.Backend {
		b, err := store.OpenBolt(path, store.BoltOpts{})
		must(t, err)
		return b
	}
	target := &sizingTarget{name: "bolt", b: open()}
	t.Cleanup(func() { _ = target.b.Close() })
	target.measure = func(t *testing.T) usage {
		_, err := target.b.PurgeConsumed(context.Background(), time.Now().Add(time.Hour))
		must(t, err)
		must(t, target.b.Close())
		defer func() { target.b = open() }()
		db, err := bolt.Open(path, 0o600, nil) // read-write: a read-only open has no freelist
		must(t, err)
		defer db.Close()
		fi, err := os.Stat(path)
		must(t, err)
		u := usage{size: fi.Size(), keys: map[string]int64{}, values: map[string]int64{}}
		must(t, db.View(func(tx *bolt.Tx) error {
			free := int64(db.Stats().FreePageN+db.Stats().PendingPageN) * int64(db.Info().PageSize)
			u.inUse = tx.Size() - free
			for _, fam := range sizingFamilies {
				_ = tx.Bucket([]byte(fam)).ForEach(func(_, v []byte) error {
					u.keys[fam]++
					u.values[fam] += int64(len(v))
					return nil
				})
			}
			return nil
		}))
		return u
	}
	return target
}

// etcdTarget measures one etcd member's database from its Status (dbSize
// and dbSizeInUse), before and after Compact + Defragment.
func etcdTarget(t *testing.T) *sizingTarget {
	c := startEtcd(t, etcdtest.Opts{Members: 1})
	cli := c.Client(t)
	ctx := context.Background()
	const prefix = "/keybroker/"
	open := func() store.Backend {
		e, err := store.OpenEtcd(ctx, store.EtcdOpts{Endpoints: c.Endpoints(), Prefix: prefix})
		must(t, err)
		return e
	}
	target := &sizingTarget{name: "etcd", b: open()}
	t.Cleanup(func() { _ = target.b.Close() })
	expire := func(t *testing.T) { // revoke the markers' leases, as their expiry does
		leases, err := cli.Leases(ctx)
		must(t, err)
		for _, l := range leases.Leases {
			_, err := cli.Revoke(ctx, l.ID)
			must(t, err)
		}
		_ = target.b.Close()
		target.b = open() // without the revoked leases cached
	}
	ep := c.Endpoints()[0]
	status := func(t *testing.T) *clientv3.StatusResponse {
		st, err := cli.Status(ctx, ep)
		must(t, err)
		return st
	}
	fmt.Printf("etcd server %s, one member\n", status(t).Version)
	target.measure = func(t *testing.T) usage {
		expire(t)
		st := status(t)
		u := usage{size: st.DbSize, inUse: st.DbSizeInUse, keys: map[string]int64{}, values: map[string]int64{}}
		for _, fam := range sizingFamilies {
			u.keys[fam], u.values[fam] = etcdValues(t, cli, prefix+fam+"/")
		}
		_, err := cli.Compact(ctx, st.Header.Revision, clientv3.WithCompactPhysical())
		must(t, err)
		_, err = cli.Defragment(ctx, ep)
		must(t, err)
		st = status(t)
		u.compacted, u.cInUse = st.DbSize, st.DbSizeInUse
		return u
	}
	return target
}

// etcdValues returns the number of keys under prefix and their value bytes.
func etcdValues(t *testing.T, cli *clientv3.Client, prefix string) (keys, values int64) {
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	must(t, err)
	for _, kv := range resp.Kvs {
		values += int64(len(kv.Value))
	}
	return resp.Count, values
}

// must fails t on err.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
