package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/attestation"
	storev1 "github.com/keybroker/keybroker/proto/keybroker/store/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func openTemp(t testing.TB) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "broker.db")
	b, err := OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b, path
}

// decide returns a decision on challenge id for ekHash, expiring at exp.
func decide(id, ekHash string, exp time.Time) *Decision {
	return &Decision{ChallengeID: id, ChallengeExpiry: exp, Receipt: &Receipt{ChallengeID: id, EKHash: ekHash}}
}

func TestReopenKeepsReceipts(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	b, err := OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	d := decide("survives", "ek", time.Now().Add(time.Hour))
	d.Receipt.Check, d.Receipt.Failures = "quote", []string{"bad signature"}
	d.Node = &NodeRecord{EKHash: "ek", LastSeen: t0, Evidence: attestation.Evidence{EventLog: []byte("log")}}
	if err := b.Record(ctx, d); err != nil {
		t.Fatal(err)
	}
	r := d.Receipt
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	b, err = OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got, err := b.ListReceipts(ctx, ListOpts{EKHash: "ek"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0], *r) {
		t.Fatalf("after reopen ListReceipts = %+v, want [%+v]", got, *r)
	}
	if err := b.Record(ctx, decide("survives", "ek", time.Now().Add(time.Hour))); !errors.Is(err, ErrConsumed) {
		t.Fatalf("a used challenge after reopen: got %v, want ErrConsumed", err)
	}
	if n, err := b.GetNode(ctx, "ek"); err != nil || n.LastReceiptID != r.ID || string(n.Evidence.EventLog) != "log" {
		t.Fatalf("node record after reopen = %+v, %v", n, err)
	}
}

func TestLocked(t *testing.T) {
	ctx := context.Background()
	b, path := openTemp(t)
	if err := b.Record(ctx, decide("", "ek", time.Time{})); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{true, false} {
		start := time.Now()
		_, err := OpenBolt(path, BoltOpts{ReadOnly: ro, Timeout: 200 * time.Millisecond})
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("OpenBolt(ReadOnly=%v) while held: got %v, want ErrLocked", ro, err)
		}
		if want := fmt.Sprintf("store %s is locked by another process", path); err.Error() != want {
			t.Errorf("error = %q, want %q", err, want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("OpenBolt took %v to give up", d)
		}
	}

	// Once released, a read-only open can read but not write.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenBolt(path, BoltOpts{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got, err := ro.ListReceipts(ctx, ListOpts{}); err != nil || len(got) != 1 {
		t.Errorf("read-only ListReceipts = %d receipts, %v; want 1", len(got), err)
	}
	if err := ro.Record(ctx, decide("c1", "ek", time.Now().Add(time.Hour))); err == nil {
		t.Errorf("read-only Record succeeded")
	}
	// Two readers may share the file.
	ro2, err := OpenBolt(path, BoltOpts{ReadOnly: true, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("second read-only open: %v", err)
	}
	ro2.Close()
}

// TestLockedAcrossProcesses holds the store in a child process (this test
// binary re-run as a helper) and checks that this process is refused.
func TestLockedAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHoldStore$")
	cmd.Env = append(os.Environ(), "KEYBROKER_STORE_HELPER="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "held" {
		t.Fatalf("helper did not take the store: %q, %v", line, err)
	}
	_, err = OpenBolt(path, BoltOpts{ReadOnly: true, Timeout: 200 * time.Millisecond})
	if want := fmt.Sprintf("store %s is locked by another process", path); err == nil || err.Error() != want {
		t.Fatalf("OpenBolt while another process holds it: got %v, want %q", err, want)
	}
}

func TestHelperHoldStore(t *testing.T) {
	path := os.Getenv("KEYBROKER_STORE_HELPER")
	if path == "" {
		t.Skip("helper for TestLockedAcrossProcesses")
	}
	b, err := OpenBolt(path, BoltOpts{})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("held")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	b.Close()
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	path := filepath.Join(dir, "broker.db")
	b, err := OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	assertMode(t, path, 0o600)
	assertMode(t, dir, 0o700)

	// A writable open tightens a file someone loosened.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err = OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	assertMode(t, path, 0o600)
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "not-a-db")
	if err := os.WriteFile(notDB, []byte(strings.Repeat("x", 8192)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		opts    BoltOpts
		wantErr string
	}{
		{name: "empty path", path: "", wantErr: "unable to open store: path cannot be empty"},
		{name: "negative timeout", path: filepath.Join(dir, "a.db"), opts: BoltOpts{Timeout: -1}, wantErr: "lock timeout cannot be negative"},
		{name: "read-only missing file", path: filepath.Join(dir, "missing.db"), opts: BoltOpts{ReadOnly: true}, wantErr: "unable to open store"},
		{name: "not a database", path: notDB, wantErr: "unable to open store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := OpenBolt(tt.path, tt.opts)
			if err == nil {
				b.Close()
				t.Fatalf("OpenBolt succeeded, want error %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("OpenBolt error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %#o, want %#o", path, got, want)
	}
}

// TestPurgeConsumed checks that purging deletes exactly the markers expired
// more than MarkerGrace ago and the undecodable ones: their challenges could
// be answered again (every replica refuses them as expired by then), the
// others not.
func TestPurgeConsumed(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	now := time.Now()
	for i, exp := range []time.Duration{-time.Hour, -time.Second, 0, time.Second, time.Hour} {
		if err := b.Record(ctx, decide(fmt.Sprintf("c%d", i), "ek", now.Add(exp))); err != nil {
			t.Fatal(err)
		}
	}
	err := b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketConsumed).Put([]byte("junk"), []byte("x")) })
	if err != nil {
		t.Fatal(err)
	}
	// Markers are kept MarkerGrace past their expiry: now, only the one
	// expired an hour ago goes (and the undecodable one).
	n, err := b.PurgeConsumed(ctx, now)
	if err != nil || n != 2 {
		t.Fatalf("PurgeConsumed = %d, %v; want 2 (1 expired more than MarkerGrace ago, 1 undecodable)", n, err)
	}
	later := now.Add(MarkerGrace)
	if n, err := b.PurgeConsumed(ctx, later); err != nil || n != 2 {
		t.Fatalf("PurgeConsumed MarkerGrace later = %d, %v; want 2 more", n, err)
	}
	for i := range 5 {
		err := b.Record(ctx, decide(fmt.Sprintf("c%d", i), "ek", now.Add(time.Hour)))
		if gotUsed, wantUsed := errors.Is(err, ErrConsumed), i >= 3; gotUsed != wantUsed || (!wantUsed && err != nil) {
			t.Errorf("challenge %d after the purge: Record = %v, want used=%v", i, err, wantUsed)
		}
	}
	if n, err := b.PurgeConsumed(ctx, later); err != nil || n != 0 {
		t.Errorf("second PurgeConsumed = %d, %v; want 0", n, err)
	}
}

// TestEventLogStoredOnce checks that nodes with one event log share one
// stored copy.
func TestEventLogStoredOnce(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	for i := range 3 {
		d := decide(fmt.Sprintf("c%d", i), fmt.Sprintf("ek-%d", i), time.Now().Add(time.Hour))
		d.Node = &NodeRecord{EKHash: d.Receipt.EKHash, Evidence: attestation.Evidence{EventLog: []byte("same log")}}
		if err := b.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if got := countKeys(t, b, bucketEventLogs); got != 1 {
		t.Errorf("event logs stored = %d, want 1", got)
	}
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNodes).Get([]byte("ek-1"))
		var raw storev1.NodeRecord
		if len(v) == 0 || v[0] != nodeRecordV1 {
			return fmt.Errorf("node record %x is not in the compact form", v)
		}
		if err := proto.Unmarshal(v[1:], &raw); err != nil {
			return err
		}
		if len(raw.GetEvidence().GetEventLog()) != 0 || raw.GetEvidence().GetEventLogSha256() == "" {
			return errors.New("the node record holds the event log itself")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestDeleteReceiptsIndex checks that deleting receipts deletes their EK
// index entries.
func TestDeleteReceiptsIndex(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	for i := range 4 {
		d := decide("", fmt.Sprintf("ek-%d", i%2), time.Time{})
		d.Receipt.Time = t0.Add(time.Duration(i) * time.Second)
		if err := b.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.DeleteReceiptsBefore(ctx, t0.Add(3*time.Second), 100, testSeal); err != nil || n != 3 {
		t.Fatalf("DeleteReceiptsBefore = %d, %v; want 3", n, err)
	}
	if got := countKeys(t, b, bucketReceiptsByEK); got != 1 {
		t.Errorf("EK index entries = %d, want 1", got)
	}
}

// testSeal seals with a placeholder signature: the store keeps it
// unchecked.
func testSeal(h ChainHead) (Checkpoint, error) {
	return Checkpoint{Seq: h.Seq, Head: h.Hash, Time: t0, KeyID: "test", Signature: []byte("sig")}, nil
}

func countKeys(t *testing.T, b *Bolt, bucket []byte) int {
	t.Helper()
	var n int
	err := b.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucket).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestNodesInOldStore reads, read-only, a store written before node
// records, deny list and challenge keys existed.
func TestNodesInOldStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketReceipts, bucketReceiptsByEK} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	ro, err := OpenBolt(path, BoltOpts{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	ctx := context.Background()
	if _, err := ro.GetNode(ctx, "ek"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetNode in an old store: got %v, want ErrNotFound", err)
	}
	if ns, err := ro.ListNodes(ctx, ListNodesOpts{}); err != nil || len(ns) != 0 {
		t.Errorf("ListNodes in an old store = %v, %v; want none", ns, err)
	}
	if _, err := ro.GetDenial(ctx, "ek"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDenial in an old store: got %v, want ErrNotFound", err)
	}
	if keys, err := ro.ChallengeKeys(ctx); err != nil || len(keys) != 0 {
		t.Errorf("ChallengeKeys in an old store = %v, %v; want none", keys, err)
	}
}
