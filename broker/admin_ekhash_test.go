package broker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// Three nodes: two whose EK hashes share their first 8 hex digits, one
// other.
var (
	prefixA = "abcdef01" + strings.Repeat("1", 56)
	prefixB = "abcdef01" + strings.Repeat("2", 56)
	prefixC = "12345678" + strings.Repeat("3", 56)
)

// storeWithNodes creates a store in dir holding records of prefixA, prefixB
// and prefixC, stored as attestations store them.
func storeWithNodes(t *testing.T, dir string) store.Backend {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(dir, BoltFile), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	for i, h := range []string{prefixA, prefixB, prefixC} {
		id := "challenge-" + string(rune('a'+i))
		d := &store.Decision{ChallengeID: id, ChallengeExpiry: now.Add(time.Minute),
			Receipt: &store.Receipt{EKHash: h, Allowed: true}, Node: &store.NodeRecord{EKHash: h, FirstSeen: now, LastSeen: now}}
		if err := st.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// TestGetNodeByEKHashPrefix names nodes by unique prefixes, ambiguous ones,
// short ones and unknown ones, through a running broker's admin socket and
// from the store file.
func TestGetNodeByEKHashPrefix(t *testing.T) {
	tests := []struct {
		name    string
		ref     string
		want    string // the EK hash found
		wantErr error
		wantMsg string
	}{
		{name: "full hash", ref: prefixA, want: prefixA},
		{name: "unique prefix of 9", ref: "abcdef011", want: prefixA},
		{name: "unique prefix in upper case", ref: "ABCDEF012", want: prefixB},
		{name: "unique prefix of 8", ref: "12345678", want: prefixC},
		{name: "ambiguous prefix", ref: "abcdef01", wantErr: ErrAmbiguousEKHash,
			wantMsg: "ambiguous EK hash prefix abcdef01: the EK hashes of more than one node start with it (" + prefixA + ", " + prefixB + "); give more digits"},
		{name: "prefix of 7", ref: "1234567", wantErr: ErrInvalidEKHash,
			wantMsg: "invalid EK hash: prefix 1234567 is shorter than 8 hex digits"},
		{name: "empty", ref: "", wantErr: ErrInvalidEKHash},
		{name: "not hex", ref: "abcdef0g", wantErr: ErrInvalidEKHash, wantMsg: `invalid EK hash: "abcdef0g" is not hex digits`},
		{name: "too long", ref: prefixA + "1", wantErr: ErrInvalidEKHash},
		{name: "unknown prefix", ref: "ffffffff", wantErr: store.ErrNotFound},
		{name: "unknown hash", ref: strings.Repeat("f", 64), wantErr: store.ErrNotFound},
	}
	dir := t.TempDir()
	st := storeWithNodes(t, dir)
	admin, err := serveAdmin(filepath.Join(dir, AdminSocket), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, how string) {
		for _, tc := range tests {
			t.Run(how+"/"+tc.name, func(t *testing.T) {
				n, err := GetNode(context.Background(), &Config{DataDir: dir}, tc.ref)
				if tc.wantErr == nil {
					if err != nil || n.EKHash != tc.want {
						t.Fatalf("GetNode(%q) = %s, %v; want %s", tc.ref, n.EKHash, err, tc.want)
					}
					return
				}
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("GetNode(%q) = %s, %v; want %v", tc.ref, n.EKHash, err, tc.wantErr)
				}
				if tc.wantMsg != "" && err.Error() != tc.wantMsg {
					t.Errorf("GetNode(%q): %v\nwant: %s", tc.ref, err, tc.wantMsg)
				}
			})
		}
	}
	run(t, "admin socket")

	// The admin API answers with the status of each refusal.
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, AdminSocket))
		},
	}}
	for ref, want := range map[string]int{"abcdef011": 200, "abcdef01": 409, "1234567": 400, "ffffffff": 404} {
		resp, err := client.Get("http://broker/v1/nodes/" + ref)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET /v1/nodes/%s: %s %s, want %d", ref, resp.Status, body, want)
		}
		if want == 409 && !strings.Contains(string(body), "ambiguous") {
			t.Errorf("GET /v1/nodes/%s answered %q, want it to say ambiguous", ref, body)
		}
	}

	admin.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	run(t, "store file")
}
