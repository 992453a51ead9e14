package workload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/issue"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	webID = spiffeid.RequireFromString("spiffe://example.org/web")
	dbID  = spiffeid.RequireFromString("spiffe://example.org/db")
)

// fakeSource is a Source whose snapshots the test sets, with SVIDs from a
// real SPIFFE authority.
type fakeSource struct {
	t  testing.TB
	ca *issue.SPIFFE

	mu      sync.Mutex
	snap    *Snapshot
	changed chan struct{}
	jwtErr  error
}

func newFakeSource(t testing.TB) *fakeSource {
	t.Helper()
	ca, err := issue.LoadOrCreateSPIFFE(t.TempDir(), td.Name(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeSource{t: t, ca: ca, changed: make(chan struct{})}
}

func (f *fakeSource) Snapshot() (*Snapshot, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap, f.changed
}

func (f *fakeSource) set(s *Snapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snap = s
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeSource) FetchJWTSVID(_ context.Context, id spiffeid.ID, audience []string) (*jwtsvid.SVID, error) {
	f.mu.Lock()
	err := f.jwtErr
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	token, _, err := f.ca.IssueJWTSVID(id, audience, time.Minute)
	if err != nil {
		return nil, err
	}
	return jwtsvid.ParseAndValidate(token, f.ca.Bundle(), audience)
}

// svid issues an X.509-SVID for id valid for ttl.
func (f *fakeSource) svid(id spiffeid.ID, ttl time.Duration) *x509svid.SVID {
	f.t.Helper()
	s, err := f.ca.IssueX509SVID(id, ttl)
	if err != nil {
		f.t.Fatal(err)
	}
	svid, err := x509svid.Parse(issue.CertificatesPEM(s.Chain), s.KeyPEM)
	if err != nil {
		f.t.Fatal(err)
	}
	return svid
}

// snapshot makes a snapshot of entries with a fresh SVID per ID, lapsing
// in an hour.
func (f *fakeSource) snapshot(entries ...Entry) *Snapshot {
	s := &Snapshot{Entries: entries, X509SVIDs: map[spiffeid.ID]*x509svid.SVID{}, Bundle: f.ca.Bundle(), Lapse: time.Now().Add(time.Hour)}
	for _, e := range entries {
		if s.X509SVIDs[e.ID] == nil {
			s.X509SVIDs[e.ID] = f.svid(e.ID, time.Hour)
		}
	}
	return s
}

// self returns this process's selectors: uid, path and sha256.
func self(t testing.TB) (uid, path, sum Selector) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	return Selector{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())},
		Selector{Type: "unix", Value: "path:" + exe},
		Selector{Type: "unix", Value: "sha256:" + hex.EncodeToString(h[:])}
}

// socketDir is a short directory for sockets (sun_path holds 108 bytes).
func socketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kbwl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serve starts a Server for src on a fresh socket and returns its address
// as SPIFFE_ENDPOINT_SOCKET would hold it.
func serve(t testing.TB, src Source, opts ...Option) string {
	t.Helper()
	path := filepath.Join(socketDir(t), "agent.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	opts = append([]Option{WithLogger(quietLog())}, opts...)
	go func() { done <- NewServer(src, opts...).Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "unix://" + path
}

// rawClient is a Workload API client that sends the security header only
// if header is set.
func rawClient(t testing.TB, addr string) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, HeaderKey, HeaderValue)
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if s, _ := status.FromError(err); s.Code() != code || !strings.Contains(s.Message(), msg) {
		t.Fatalf("error %v; want %s %q", err, code, msg)
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestWorkloadAPI(t *testing.T) {
	src := newFakeSource(t)
	uid, path, sum := self(t)
	src.set(src.snapshot(
		Entry{Name: "web", ID: webID, Selectors: []Selector{uid}},
		Entry{Name: "other", ID: spiffeid.RequireFromString("spiffe://example.org/other"), Selectors: []Selector{{Type: "unix", Value: "uid:4294967294"}}},
		Entry{Name: "web-again", ID: webID, Selectors: []Selector{path}},
		Entry{Name: "db", ID: dbID, Selectors: []Selector{uid, path, sum}},
	))
	addr := serve(t, src)
	ctx := testContext(t)
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	t.Run("FetchX509SVID", func(t *testing.T) {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != webID {
			t.Errorf("default SVID %s, want %s (the first matching entry)", svid.ID, webID)
		}
		if id, _, err := x509svid.Verify(svid.Certificates, src.ca.Bundle()); err != nil || id != webID {
			t.Errorf("SVID does not verify: %v", err)
		}
	})
	t.Run("FetchX509SVIDs: one per ID, in entry order", func(t *testing.T) {
		svids, err := client.FetchX509SVIDs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(svids) != 2 || svids[0].ID != webID || svids[1].ID != dbID {
			t.Errorf("SVIDs %v, want web then db", svids)
		}
	})
	t.Run("FetchX509Context bundle", func(t *testing.T) {
		x, err := client.FetchX509Context(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := x.Bundles.GetX509BundleForTrustDomain(td)
		if err != nil || !b.Equal(src.ca.Bundle().X509Bundle()) {
			t.Errorf("X.509 bundle %v, %v; want the authority's", b, err)
		}
	})
	t.Run("FetchX509Bundles", func(t *testing.T) {
		set, err := client.FetchX509Bundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := set.GetX509BundleForTrustDomain(td)
		if err != nil || !b.Equal(src.ca.Bundle().X509Bundle()) {
			t.Errorf("X.509 bundle %v, %v; want the authority's", b, err)
		}
	})
	t.Run("FetchJWTBundles", func(t *testing.T) {
		set, err := client.FetchJWTBundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := set.GetJWTBundleForTrustDomain(td)
		if err != nil || !b.Equal(src.ca.Bundle().JWTBundle()) || len(b.JWTAuthorities()) != 1 {
			t.Errorf("JWT bundle %v, %v; want the authority's key", b, err)
		}
	})
	t.Run("FetchJWTSVID and ValidateJWTSVID", func(t *testing.T) {
		svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}})
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != webID || len(svid.Audience) != 2 {
			t.Errorf("JWT-SVID for %s %v, want %s [db cache]", svid.ID, svid.Audience, webID)
		}
		valid, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "cache")
		if err != nil || valid.ID != webID {
			t.Fatalf("ValidateJWTSVID = %v, %v", valid, err)
		}
		raw := rawClient(t, addr)
		resp, err := raw.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "db", Svid: svid.Marshal()})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetSpiffeId() != webID.String() || resp.GetClaims().GetFields()["sub"].GetStringValue() != webID.String() {
			t.Errorf("ValidateJWTSVID response %v", resp)
		}
		_, err = client.ValidateJWTSVID(ctx, svid.Marshal(), "someone-else")
		wantStatus(t, err, codes.InvalidArgument, "expected audience")
		_, err = client.ValidateJWTSVID(ctx, svid.Marshal()+"x", "db")
		wantStatus(t, err, codes.InvalidArgument, "jwtsvid")
	})
	t.Run("FetchJWTSVID for a chosen ID", func(t *testing.T) {
		svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web", Subject: dbID})
		if err != nil || svid.ID != dbID {
			t.Fatalf("FetchJWTSVID(db) = %v, %v", svid, err)
		}
		svids, err := client.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "web"})
		if err != nil || len(svids) != 2 {
			t.Fatalf("FetchJWTSVIDs = %v, %v; want web and db", svids, err)
		}
		_, err = client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web", Subject: spiffeid.RequireFromString("spiffe://example.org/other")})
		wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	})
	t.Run("FetchJWTSVID needs an audience", func(t *testing.T) {
		_, err := rawClient(t, addr).FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{})
		wantStatus(t, err, codes.InvalidArgument, "audience must be specified")
		_, err = rawClient(t, addr).FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: "not an id"})
		wantStatus(t, err, codes.InvalidArgument, "spiffe_id is not a valid SPIFFE ID")
	})
	t.Run("ValidateJWTSVID needs audience and svid", func(t *testing.T) {
		_, err := rawClient(t, addr).ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Svid: "x"})
		wantStatus(t, err, codes.InvalidArgument, "audience must be specified")
		_, err = rawClient(t, addr).ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "x"})
		wantStatus(t, err, codes.InvalidArgument, "svid must be specified")
	})
	t.Run("JWT-SVID the source cannot issue", func(t *testing.T) {
		src.mu.Lock()
		src.jwtErr = ErrExpired
		src.mu.Unlock()
		defer func() { src.mu.Lock(); src.jwtErr = nil; src.mu.Unlock() }()
		_, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
		wantStatus(t, err, codes.PermissionDenied, "identity expired")
		src.mu.Lock()
		src.jwtErr = net.ErrClosed
		src.mu.Unlock()
		_, err = client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
		wantStatus(t, err, codes.Unavailable, "unable to fetch a JWT-SVID")
	})
	t.Run("NewX509Source", func(t *testing.T) {
		source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
		if err != nil {
			t.Fatal(err)
		}
		defer source.Close()
		svid, err := source.GetX509SVID()
		if err != nil || svid.ID != webID {
			t.Errorf("X509Source SVID %v, %v", svid, err)
		}
	})
	t.Run("WIT-SVIDs are not implemented", func(t *testing.T) {
		_, err := client.FetchWITSVID(ctx, "")
		wantStatus(t, err, codes.Unimplemented, "")
		_, err = client.FetchWITBundles(ctx)
		wantStatus(t, err, codes.Unimplemented, "")
	})
}

func TestSecurityHeaderRequired(t *testing.T) {
	src := newFakeSource(t)
	uid, _, _ := self(t)
	src.set(src.snapshot(Entry{Name: "web", ID: webID, Selectors: []Selector{uid}}))
	addr := serve(t, src)
	ctx := testContext(t)
	raw := rawClient(t, addr)

	tests := []struct {
		name string
		ctx  context.Context
	}{
		{"no header", ctx},
		{"wrong value", metadata.AppendToOutgoingContext(ctx, HeaderKey, "yes")},
		{"twice", metadata.AppendToOutgoingContext(ctx, HeaderKey, HeaderValue, HeaderKey, HeaderValue)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := raw.FetchX509SVID(tc.ctx, &workloadpb.X509SVIDRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			wantStatus(t, err, codes.InvalidArgument, msgNoHeader)
			_, err = raw.FetchJWTSVID(tc.ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
			wantStatus(t, err, codes.InvalidArgument, msgNoHeader)
			_, err = raw.ValidateJWTSVID(tc.ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
			wantStatus(t, err, codes.InvalidArgument, msgNoHeader)
			bundles, err := raw.FetchJWTBundles(tc.ctx, &workloadpb.JWTBundlesRequest{})
			if err == nil {
				_, err = bundles.Recv()
			}
			wantStatus(t, err, codes.InvalidArgument, msgNoHeader)
		})
	}
	t.Run("with the header", func(t *testing.T) {
		stream, err := raw.FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestNoMatchingEntry(t *testing.T) {
	src := newFakeSource(t)
	_, path, _ := self(t)
	// The right executable, but another user.
	src.set(src.snapshot(Entry{Name: "web", ID: webID, Selectors: []Selector{{Type: "unix", Value: "uid:4294967294"}, path}}))
	addr := serve(t, src)
	ctx := testContext(t)
	_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "x"}, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	_, err = workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	_, err = workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.PermissionDenied, "no identity issued")
}

func TestNotReady(t *testing.T) {
	addr := serve(t, newFakeSource(t))
	_, err := workloadapi.FetchX509SVID(testContext(t), workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.Unavailable, msgNotReady)
}

// TestStreamUpdates checks that an open FetchX509SVID stream gets every
// rotation and ends when the identity lapses, and bundle streams get
// bundle changes.
func TestStreamUpdates(t *testing.T) {
	src := newFakeSource(t)
	uid, _, _ := self(t)
	entries := []Entry{{Name: "web", ID: webID, Selectors: []Selector{uid}}}
	src.set(src.snapshot(entries...))
	addr := serve(t, src)
	ctx := testContext(t)
	raw := rawClient(t, addr)
	stream, err := raw.FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		svid, err := x509svid.ParseRaw(resp.GetSvids()[0].GetX509Svid(), resp.GetSvids()[0].GetX509SvidKey())
		if err != nil {
			t.Fatal(err)
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	bundles, err := raw.FetchJWTBundles(withHeader(ctx), &workloadpb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.Recv(); err != nil {
		t.Fatal(err)
	}

	first := serial()
	next := src.snapshot(entries...)
	src.set(next)
	if second := serial(); second == first {
		t.Fatal("the rotated SVID did not reach the stream")
	}

	// A change that leaves this caller's SVIDs as they were sends nothing;
	// a bundle change reaches the bundle stream.
	same := *next
	same.Bundle = next.Bundle.Clone()
	if err := same.Bundle.AddJWTAuthority("new-key", src.ca.Bundle().JWTAuthorities()[firstKey(src.ca.Bundle())]); err != nil {
		t.Fatal(err)
	}
	src.set(&same)
	resp, err := bundles.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(resp.GetBundles()[td.IDString()]), "new-key") {
		t.Errorf("JWT bundle update %s lacks the new key", resp.GetBundles()[td.IDString()])
	}

	// The identity lapses shortly: the stream ends without another update.
	lapsing := same
	lapsing.Lapse = time.Now().Add(300 * time.Millisecond)
	src.set(&lapsing)
	_, err = stream.Recv()
	wantStatus(t, err, codes.PermissionDenied, "identity expired")
	_, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.PermissionDenied, "identity expired")
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "x"}, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.PermissionDenied, "identity expired")
	// Bundles are public and still served.
	if _, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(addr)); err != nil {
		t.Errorf("FetchX509Bundles after the lapse: %v", err)
	}
}

func firstKey(b *spiffebundle.Bundle) string {
	for k := range b.JWTAuthorities() {
		return k
	}
	return ""
}

// TestWorkloadSVIDExpiry checks that an SVID is not served past its own
// expiry even while the node's identity holds.
func TestWorkloadSVIDExpiry(t *testing.T) {
	src := newFakeSource(t)
	uid, _, _ := self(t)
	snap := src.snapshot(Entry{Name: "web", ID: webID, Selectors: []Selector{uid}})
	snap.X509SVIDs[webID] = src.svid(webID, 2*time.Second)
	src.set(snap)
	addr := serve(t, src)
	ctx := testContext(t)
	stream, err := rawClient(t, addr).FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = stream.Recv()
	wantStatus(t, err, codes.PermissionDenied, "identity expired")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the stream ended %v after the SVID was served, it was valid for at most 2s", d)
	}
}

// TestMissingSVIDWaits checks that a caller whose entry has no SVID yet
// waits on the stream and gets it once issued.
func TestMissingSVIDWaits(t *testing.T) {
	src := newFakeSource(t)
	uid, _, _ := self(t)
	entries := []Entry{{Name: "web", ID: webID, Selectors: []Selector{uid}}}
	empty := src.snapshot()
	empty.Entries = entries
	src.set(empty)
	addr := serve(t, src)
	ctx := testContext(t)
	go func() {
		time.Sleep(200 * time.Millisecond)
		src.set(src.snapshot(entries...))
	}()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	if err != nil || svid.ID != webID {
		t.Fatalf("FetchX509SVID = %v, %v", svid, err)
	}
}

func TestListen(t *testing.T) {
	t.Run("creates the directory 0755 and the socket 0777", func(t *testing.T) {
		path := filepath.Join(socketDir(t), "run", "agent.sock")
		lis, err := Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		defer lis.Close()
		for p, want := range map[string]os.FileMode{filepath.Dir(path): 0o755, path: 0o777} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s mode %v, want %v", p, fi.Mode().Perm(), want)
			}
		}
		if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "is in use by another process") {
			t.Errorf("second Listen = %v, want in use", err)
		}
		lis.Close()
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("socket left after Close: %v", err)
		}
	})
	t.Run("replaces a stale socket", func(t *testing.T) {
		path := filepath.Join(socketDir(t), "agent.sock")
		stale, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		stale.Close()
		lis, err := Listen(path)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		lis.Close()
	})
	t.Run("refuses a file that is not a socket", func(t *testing.T) {
		path := filepath.Join(socketDir(t), "agent.sock")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "exists and is not a socket") {
			t.Errorf("Listen = %v", err)
		}
	})
	t.Run("refuses a relative path", func(t *testing.T) {
		if _, err := Listen("agent.sock"); err == nil || !strings.Contains(err.Error(), "path must be absolute") {
			t.Errorf("Listen = %v", err)
		}
	})
}
