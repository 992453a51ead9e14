package store

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func openTemp(t *testing.T) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "broker.db")
	b, err := OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b, path
}

func testChallenge(id string) Challenge {
	return Challenge{
		ID:              id,
		EKPublic:        []byte("ek-public"),
		EKCertificate:   []byte("ek-cert"),
		EKIntermediates: [][]byte{[]byte("int-1"), []byte("int-2")},
		AKPublic:        []byte("ak-public"),
		SecretHash:      sha256.Sum256([]byte("secret " + id)),
		ExpiresAt:       t0.Add(time.Minute),
	}
}

func TestPutGetConsumeOnce(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	want := testChallenge("abcdefghijklmnopqrstuvwxyz012345")
	if err := b.PutChallenge(ctx, want); err != nil {
		t.Fatalf("PutChallenge: %v", err)
	}
	if err := b.PutChallenge(ctx, want); !errors.Is(err, ErrExists) {
		t.Fatalf("PutChallenge twice: got %v, want ErrExists", err)
	}
	// GetChallenge only reads: asking twice returns the challenge twice.
	for i := range 2 {
		got, err := b.GetChallenge(ctx, want.ID, t0)
		if err != nil {
			t.Fatalf("GetChallenge #%d: %v", i+1, err)
		}
		if !got.ExpiresAt.Equal(want.ExpiresAt) {
			t.Errorf("ExpiresAt = %v, want %v", got.ExpiresAt, want.ExpiresAt)
		}
		got.ExpiresAt = want.ExpiresAt
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GetChallenge = %+v, want %+v", got, want)
		}
	}

	r := &Receipt{ChallengeID: want.ID, EKHash: "ek", Allowed: true}
	before := time.Now()
	if err := b.ConsumeChallenge(ctx, want.ID, r, nil); err != nil {
		t.Fatalf("ConsumeChallenge: %v", err)
	}
	if !receiptIDPattern.MatchString(r.ID) {
		t.Errorf("receipt ID %q does not match %v", r.ID, receiptIDPattern)
	}
	if r.Time.Before(before.Add(-time.Second)) || r.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("receipt Time %v not set to now", r.Time)
	}
	got, err := b.GetReceipt(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetReceipt after ConsumeChallenge: %v", err)
	}
	if !reflect.DeepEqual(got, *r) {
		t.Errorf("GetReceipt = %+v, want %+v", got, *r)
	}
	if byEK, err := b.ListReceipts(ctx, ListOpts{EKHash: "ek"}); err != nil || len(byEK) != 1 || byEK[0].ID != r.ID {
		t.Errorf("ListReceipts by EK = %+v, %v; want the consumed challenge's receipt", byEK, err)
	}

	_, err = b.GetChallenge(ctx, want.ID, t0)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetChallenge after consume: got %v, want ErrNotFound", err)
	}
	if errors.Is(err, ErrExpired) {
		t.Fatalf("ErrNotFound and ErrExpired must be distinct")
	}
	again := &Receipt{ChallengeID: want.ID, EKHash: "ek"}
	if err := b.ConsumeChallenge(ctx, want.ID, again, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second ConsumeChallenge: got %v, want ErrNotFound", err)
	}
	if again.ID != "" || !again.Time.IsZero() {
		t.Errorf("refused ConsumeChallenge set ID %q, Time %v", again.ID, again.Time)
	}
	if all, err := b.ListReceipts(ctx, ListOpts{}); err != nil || len(all) != 1 {
		t.Errorf("after a refused ConsumeChallenge ListReceipts = %d receipts, %v; want 1", len(all), err)
	}

	for _, id := range []string{"never-stored", "not/a valid id", ""} {
		if _, err := b.GetChallenge(ctx, id, t0); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetChallenge(%q): got %v, want ErrNotFound", id, err)
		}
		if err := b.ConsumeChallenge(ctx, id, &Receipt{}, nil); !errors.Is(err, ErrNotFound) {
			t.Errorf("ConsumeChallenge(%q): got %v, want ErrNotFound", id, err)
		}
	}
}

func TestGetExpired(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	c := testChallenge("expired")
	if err := b.PutChallenge(ctx, c); err != nil {
		t.Fatal(err)
	}
	// Expiry is exclusive: at ExpiresAt the challenge is already expired.
	_, err := b.GetChallenge(ctx, c.ID, c.ExpiresAt)
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("GetChallenge after expiry: got %v, want ErrExpired", err)
	}
	// An expired challenge is left for PurgeExpired.
	if _, err := b.GetChallenge(ctx, c.ID, t0); err != nil {
		t.Fatalf("GetChallenge deleted the expired challenge: %v", err)
	}
	if n, err := b.PurgeExpired(ctx, c.ExpiresAt); err != nil || n != 1 {
		t.Fatalf("PurgeExpired = %d, %v; want 1", n, err)
	}
	if _, err := b.GetChallenge(ctx, c.ID, t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purged challenge: got %v, want ErrNotFound", err)
	}
}

// TestConsumeChallengeAtomic checks that a receipt the store refuses leaves
// the challenge in place: consume and receipt commit together or not at all.
func TestConsumeChallengeAtomic(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	taken := &Receipt{EKHash: "ek"}
	if err := b.PutReceipt(ctx, taken); err != nil {
		t.Fatal(err)
	}
	c := testChallenge("atomic")
	if err := b.PutChallenge(ctx, c); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		r       *Receipt
		wantErr string
	}{
		{name: "nil receipt", r: nil, wantErr: "unable to consume challenge: receipt cannot be nil"},
		{name: "malformed receipt id", r: &Receipt{ID: "a/b"}, wantErr: "unable to consume challenge: receipt id must contain only [A-Za-z0-9._-]"},
		{name: "existing receipt id", r: &Receipt{ID: taken.ID}, wantErr: "unable to consume challenge: receipt id already exists"},
		{name: "long ek hash", r: &Receipt{EKHash: strings.Repeat("e", maxEKHashLength+1)}, wantErr: "unable to consume challenge: ek hash is longer than 1024 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := b.ConsumeChallenge(ctx, c.ID, tt.r, nil)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("ConsumeChallenge error = %v, want %q", err, tt.wantErr)
			}
			if _, err := b.GetChallenge(ctx, c.ID, t0); err != nil {
				t.Fatalf("a refused receipt consumed the challenge: %v", err)
			}
		})
	}
	if all, err := b.ListReceipts(ctx, ListOpts{}); err != nil || len(all) != 1 {
		t.Errorf("ListReceipts = %d receipts, %v; want only the first", len(all), err)
	}
}

// TestConsumeConcurrent races ConsumeChallenge for one challenge: exactly one
// call succeeds and exactly one receipt is stored.
func TestConsumeConcurrent(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	const rounds, workers = 10, 16
	for round := range rounds {
		id := fmt.Sprintf("concurrent-%d", round)
		ek := fmt.Sprintf("ek-%d", round)
		if err := b.PutChallenge(ctx, testChallenge(id)); err != nil {
			t.Fatal(err)
		}
		var (
			wg                 sync.WaitGroup
			mu                 sync.Mutex
			successes, missing int
			winner             string
			start              = make(chan struct{})
		)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r := &Receipt{ChallengeID: id, EKHash: ek}
				err := b.ConsumeChallenge(ctx, id, r, nil)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					successes++
					winner = r.ID
				case errors.Is(err, ErrNotFound):
					missing++
					if r.ID != "" {
						t.Errorf("refused ConsumeChallenge set receipt ID %q", r.ID)
					}
				default:
					t.Errorf("ConsumeChallenge: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if successes != 1 || missing != workers-1 {
			t.Fatalf("round %d: %d successes and %d not found, want 1 and %d", round, successes, missing, workers-1)
		}
		got, err := b.ListReceipts(ctx, ListOpts{EKHash: ek})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].ID != winner || got[0].ChallengeID != id {
			t.Fatalf("round %d: receipts %+v, want exactly the winner's %s", round, got, winner)
		}
	}
}

func TestChallengeValidate(t *testing.T) {
	big := func(n int) []byte { return make([]byte, n) }
	tests := []struct {
		name    string
		mutate  func(*Challenge)
		wantErr string
	}{
		{name: "ok", mutate: func(*Challenge) {}},
		{name: "exactly at limit", mutate: func(c *Challenge) {
			c.EKPublic, c.EKCertificate, c.AKPublic = big(MaxChallengeBytes-2), nil, big(1)
			c.EKIntermediates = [][]byte{big(1)}
		}},
		{name: "empty id", mutate: func(c *Challenge) { c.ID = "" }, wantErr: "challenge id cannot be empty"},
		{name: "id with slash", mutate: func(c *Challenge) { c.ID = "a/b" }, wantErr: "challenge id must contain only [A-Za-z0-9._-]"},
		{name: "long id", mutate: func(c *Challenge) { c.ID = strings.Repeat("a", MaxIDLength+1) }, wantErr: "challenge id is longer than 128 characters"},
		{name: "no expiry", mutate: func(c *Challenge) { c.ExpiresAt = time.Time{} }, wantErr: "challenge expiry cannot be zero"},
		{name: "too big", mutate: func(c *Challenge) {
			c.EKPublic, c.EKCertificate, c.AKPublic = big(MaxChallengeBytes-2), nil, big(1)
			c.EKIntermediates = [][]byte{big(2)}
		}, wantErr: "challenge holds 65537 bytes, at most 65536 allowed"},
		{name: "too many intermediates", mutate: func(c *Challenge) {
			c.EKIntermediates = make([][]byte, MaxIntermediates+1)
		}, wantErr: "challenge has 17 ek intermediates, at most 16 allowed"},
	}
	ctx := context.Background()
	b, _ := openTemp(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testChallenge(fmt.Sprintf("validate-%d", i))
			tt.mutate(&c)
			err := b.PutChallenge(ctx, c)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("PutChallenge: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PutChallenge error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestPurgeExpired(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	for i := range 5 {
		c := testChallenge(fmt.Sprintf("purge-%d", i))
		c.ExpiresAt = t0.Add(time.Duration(i) * time.Minute)
		if err := b.PutChallenge(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	n, err := b.PurgeExpired(ctx, t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("PurgeExpired = %d, want 3", n)
	}
	for i := range 5 {
		_, err := b.GetChallenge(ctx, fmt.Sprintf("purge-%d", i), t0)
		if gotGone, wantGone := errors.Is(err, ErrNotFound), i <= 2; gotGone != wantGone {
			t.Errorf("challenge %d: GetChallenge err = %v, want gone=%v", i, err, wantGone)
		}
	}
}

var receiptIDPattern = regexp.MustCompile(`^\d{8}T\d{6}\.\d{9}Z-[0-9a-f]{8}$`)

func TestPutReceiptAssignsID(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	r := &Receipt{EKHash: "ek1", Allowed: true, Policies: []string{"p"}}
	before := time.Now()
	if err := b.PutReceipt(ctx, r); err != nil {
		t.Fatal(err)
	}
	if !receiptIDPattern.MatchString(r.ID) {
		t.Errorf("receipt ID %q does not match %v", r.ID, receiptIDPattern)
	}
	if r.Time.Before(before.Add(-time.Second)) || r.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("receipt Time %v not set to now", r.Time)
	}
	got, err := b.GetReceipt(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, *r) {
		t.Errorf("GetReceipt = %+v, want %+v", got, *r)
	}
	dup := &Receipt{ID: r.ID}
	if err := b.PutReceipt(ctx, dup); !errors.Is(err, ErrExists) {
		t.Errorf("PutReceipt with existing ID: got %v, want ErrExists", err)
	}
	if _, err := b.GetReceipt(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetReceipt(missing): got %v, want ErrNotFound", err)
	}
}

func TestListReceipts(t *testing.T) {
	ctx := context.Background()
	b, _ := openTemp(t)
	// Insert out of time order; listing is by time (ID), newest first.
	var all []Receipt
	for _, i := range []int{3, 0, 4, 1, 5, 2} {
		r := &Receipt{
			Time:    t0.Add(time.Duration(i) * time.Second),
			EKHash:  []string{"ek-a", "ek-b"}[i%2],
			Allowed: i%3 != 0,
			Released: []ReleasedItem{{
				Name: "tls", Type: "x509", Mode: "TPM_BOUND", Serial: fmt.Sprint(i),
				NotAfter: t0.Add(time.Hour), PCRBank: "sha256", PCRs: []uint32{0, 7},
			}},
		}
		if !r.Allowed {
			r.Check, r.Failures = "policy", []string{"pcr 7 mismatch"}
		}
		if err := b.PutReceipt(ctx, r); err != nil {
			t.Fatal(err)
		}
		all = append(all, *r)
	}
	serials := func(rs []Receipt) string {
		var s []string
		for _, r := range rs {
			s = append(s, r.Released[0].Serial)
		}
		return strings.Join(s, ",")
	}
	tests := []struct {
		name    string
		opts    ListOpts
		want    string
		wantErr string
	}{
		{name: "all", opts: ListOpts{}, want: "5,4,3,2,1,0"},
		{name: "limit", opts: ListOpts{Limit: 2}, want: "5,4"},
		{name: "filter", opts: ListOpts{EKHash: "ek-a"}, want: "4,2,0"},
		{name: "filter and limit", opts: ListOpts{EKHash: "ek-b", Limit: 2}, want: "5,3"},
		{name: "unknown ek", opts: ListOpts{EKHash: "ek-c"}, want: ""},
		{name: "prefix of an ek is not a match", opts: ListOpts{EKHash: "ek-"}, want: ""},
		{name: "negative limit", opts: ListOpts{Limit: -1}, wantErr: "limit cannot be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.ListReceipts(ctx, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ListReceipts error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := serials(got); s != tt.want {
				t.Errorf("ListReceipts(%+v) = %s, want %s", tt.opts, s, tt.want)
			}
		})
	}

	// Paging with Before walks every receipt exactly once.
	for _, ek := range []string{"", "ek-a"} {
		var pages []string
		var before string
		for {
			page, err := b.ListReceipts(ctx, ListOpts{Limit: 2, EKHash: ek, Before: before})
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			pages = append(pages, serials(page))
			before = page[len(page)-1].ID
		}
		want := map[string]string{"": "5,4|3,2|1,0", "ek-a": "4,2|0"}[ek]
		if got := strings.Join(pages, "|"); got != want {
			t.Errorf("pages for %q = %s, want %s", ek, got, want)
		}
	}

	got, err := b.ListReceipts(ctx, ListOpts{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if want := all[4]; !reflect.DeepEqual(got[0], want) {
		t.Errorf("newest receipt = %+v, want %+v", got[0], want)
	}
}

func TestReopenKeepsReceipts(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	b, err := OpenBolt(path, BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	r := &Receipt{EKHash: "ek", Allowed: false, Check: "quote", Failures: []string{"bad signature"}}
	if err := b.PutReceipt(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := b.PutChallenge(ctx, testChallenge("survives")); err != nil {
		t.Fatal(err)
	}
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
	if _, err := b.GetChallenge(ctx, "survives", t0); err != nil {
		t.Fatalf("challenge lost across reopen: %v", err)
	}
}

func TestLocked(t *testing.T) {
	ctx := context.Background()
	b, path := openTemp(t)
	if err := b.PutReceipt(ctx, &Receipt{EKHash: "ek"}); err != nil {
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
	if err := ro.PutReceipt(ctx, &Receipt{}); err == nil {
		t.Errorf("read-only PutReceipt succeeded")
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

func TestCanceledContext(t *testing.T) {
	b, _ := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.PutChallenge(ctx, testChallenge("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("PutChallenge: got %v, want context.Canceled", err)
	}
	if err := b.PutReceipt(ctx, &Receipt{}); !errors.Is(err, context.Canceled) {
		t.Errorf("PutReceipt: got %v, want context.Canceled", err)
	}
	if _, err := b.GetChallenge(ctx, "x", t0); !errors.Is(err, context.Canceled) {
		t.Errorf("GetChallenge: got %v, want context.Canceled", err)
	}
	if err := b.ConsumeChallenge(ctx, "x", &Receipt{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("ConsumeChallenge: got %v, want context.Canceled", err)
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
