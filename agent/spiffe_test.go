package agent_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/workload"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// helperEnv selects, in a re-executed test binary, the tiny workload of
// workloadHelper instead of the tests.
const helperEnv = "KEYBROKER_TEST_WORKLOAD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(workloadHelper(mode))
	}
	os.Exit(m.Run())
}

// workloadHelper is a workload in its own process, using only go-spiffe
// and SPIFFE_ENDPOINT_SOCKET:
//
//	fetch  print "svid <ID>" or "error <code> <message>"
//	serve  spiffetls.Listen for the peer KEYBROKER_TEST_PEER, print
//	       "listening <addr>", answer one line with "hello <peer ID>"
func workloadHelper(mode string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	switch mode {
	case "fetch":
		svid, err := workloadapi.FetchX509SVID(ctx)
		if err != nil {
			fmt.Printf("error %s %s\n", status.Code(err), status.Convert(err).Message())
			return 0
		}
		fmt.Printf("svid %s\n", svid.ID)
		return 0
	case "serve":
		peerID, err := spiffeid.FromString(os.Getenv("KEYBROKER_TEST_PEER"))
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		lis, err := spiffetls.Listen(ctx, "tcp", "127.0.0.1:0", tlsconfig.AuthorizeID(peerID))
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		defer lis.Close()
		fmt.Printf("listening %s\n", lis.Addr())
		conn, err := lis.Accept()
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		defer conn.Close()
		if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		id, err := spiffetls.PeerIDFromConn(conn)
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		fmt.Fprintf(conn, "hello %s\n", id)
		return 0
	}
	fmt.Printf("error unknown mode %q\n", mode)
	return 2
}

var (
	webID = spiffeid.RequireFromString("spiffe://example.org/web")
	dbID  = spiffeid.RequireFromString("spiffe://example.org/db")
	apiID = spiffeid.RequireFromString("spiffe://example.org/api")
)

// exeSelectors returns the path and sha256 selectors of an executable.
func exeSelectors(t testing.TB, exe string) (path, sum workload.Selector) {
	t.Helper()
	exe, err := filepath.EvalSymlinks(exe)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	return workload.Selector{Type: "unix", Value: "path:" + exe}, workload.Selector{Type: "unix", Value: "sha256:" + hex.EncodeToString(h[:])}
}

func uidSelector(uid int) workload.Selector {
	return workload.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(uid)}
}

// self returns this process's uid, path and sha256 selectors.
func self(t testing.TB) (uid, path, sum workload.Selector) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path, sum = exeSelectors(t, exe)
	return uidSelector(os.Getuid()), path, sum
}

// openDir is a short (sun_path holds 108 bytes) temporary directory any
// user may traverse.
func openDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kbwl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// stack is an agent's SPIFFE side in process: an SVID manager fed by a
// fake broker on loopback TLS, serving the Workload API on a unix socket.
type stack struct {
	broker *fakeBroker
	mgr    *agent.SVIDManager
	socket string
	addr   string // unix://socket
	log    *logBuffer
	ctx    context.Context
	cancel context.CancelFunc
	first  *agent.Attestation
}

type stackOpts struct {
	nodeTTL time.Duration // default 1h
	svidTTL time.Duration // workload X.509-SVIDs; default 1h
	jwtTTL  time.Duration // default 1h
	grace   time.Duration
	entries []workload.Entry
}

func newStack(t *testing.T, o stackOpts) *stack {
	t.Helper()
	if o.nodeTTL == 0 {
		o.nodeTTL = time.Hour
	}
	b := startFakeBroker(t)
	b.set(func(b *fakeBroker) {
		if o.svidTTL != 0 {
			b.svidTTL = o.svidTTL
		}
		if o.jwtTTL != 0 {
			b.jwtTTL = o.jwtTTL
		}
	})
	log, buf := testLogger(t)
	mgr, err := agent.NewSVIDManager(b.target(), agent.WithSVIDLogger(log), agent.WithGrace(o.grace),
		agent.WithRetry(100*time.Millisecond, 400*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{broker: b, mgr: mgr, log: buf}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.first = b.attestation(t, o.nodeTTL, o.entries...)
	if err := mgr.Update(s.ctx, s.first); err != nil {
		t.Fatalf("Update: %v", err)
	}
	s.socket = filepath.Join(openDir(t), "agent", "agent.sock")
	lis, err := workload.Listen(s.socket)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = "unix://" + s.socket
	served := make(chan error, 1)
	go func() { served <- workload.NewServer(mgr, workload.WithLogger(log)).Serve(s.ctx, lis) }()
	t.Cleanup(func() {
		s.cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// run starts the renewal loop with attest.
func (s *stack) run(t *testing.T, attest agent.AttestFunc) {
	done := make(chan error, 1)
	go func() { done <- s.mgr.Run(s.ctx, attest) }()
	t.Cleanup(func() {
		s.cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if s, _ := status.FromError(err); s.Code() != code || !strings.Contains(s.Message(), msg) {
		t.Fatalf("error %v; want %s %q", err, code, msg)
	}
}

// TestWorkloadAPIWithGoSPIFFE serves SVIDs the broker signed for keys the
// agent made to an unmodified go-spiffe client.
func TestWorkloadAPIWithGoSPIFFE(t *testing.T) {
	uid, path, sum := self(t)
	s := newStack(t, stackOpts{jwtTTL: 2 * time.Second, entries: []workload.Entry{
		{Name: "web", ID: webID, Selectors: []workload.Selector{uid}},
		{Name: "db", ID: dbID, Selectors: []workload.Selector{uid, path, sum}},
		{Name: "not-me", ID: apiID, Selectors: []workload.Selector{uidSelector(4242)}},
	}})
	ctx := testContext(t)
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(s.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	bundle := s.broker.spiffe.Bundle()

	t.Run("FetchX509SVID", func(t *testing.T) {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(s.addr))
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != webID {
			t.Errorf("default SVID %s, want %s", svid.ID, webID)
		}
		if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id != webID {
			t.Errorf("SVID does not verify against the broker's bundle: %v", err)
		}
		leaf := svid.Certificates[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != webID.String() {
			t.Errorf("SVID URIs %v, want exactly %s", leaf.URIs, webID)
		}
		key, ok := svid.PrivateKey.(*ecdsa.PrivateKey)
		if !ok || key.Curve != elliptic.P256() {
			t.Errorf("workload key %T, want ECDSA P-256", svid.PrivateKey)
		}
		svids, err := client.FetchX509SVIDs(ctx)
		if err != nil || len(svids) != 2 || svids[1].ID != dbID {
			t.Fatalf("FetchX509SVIDs = %v, %v; want web and db", svids, err)
		}
		if svids[0].PrivateKey.(*ecdsa.PrivateKey).Equal(svids[1].PrivateKey) {
			t.Error("two SPIFFE IDs share a key")
		}
	})
	t.Run("FetchX509Bundles", func(t *testing.T) {
		set, err := client.FetchX509Bundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := set.GetX509BundleForTrustDomain(bundle.TrustDomain()); err != nil || !b.Equal(bundle.X509Bundle()) {
			t.Errorf("X.509 bundle %v, %v", b, err)
		}
	})
	t.Run("FetchJWTSVID, cached until half its life, and ValidateJWTSVID", func(t *testing.T) {
		before := s.broker.count("IssueWorkloadJWTSVID")
		svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}, workloadapi.WithAddr(s.addr))
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != webID {
			t.Errorf("JWT-SVID for %s, want %s", svid.ID, webID)
		}
		again, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
		if err != nil || again.Marshal() != svid.Marshal() {
			t.Errorf("second FetchJWTSVID = %v, %v; want the cached token", again, err)
		}
		// One per ID the caller holds (web and db), each cached.
		if n := s.broker.count("IssueWorkloadJWTSVID") - before; n != 2 {
			t.Errorf("%d JWT-SVIDs issued, want 2", n)
		}
		valid, err := workloadapi.ValidateJWTSVID(ctx, svid.Marshal(), "db", workloadapi.WithAddr(s.addr))
		if err != nil || valid.ID != webID {
			t.Fatalf("ValidateJWTSVID = %v, %v", valid, err)
		}
		if _, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "web"); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ValidateJWTSVID for another audience = %v, want InvalidArgument", err)
		}
		dbSVID, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web", Subject: dbID})
		if err != nil || dbSVID.ID != dbID {
			t.Errorf("FetchJWTSVID(db) = %v, %v", dbSVID, err)
		}
		_, err = client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "web", Subject: apiID})
		wantStatus(t, err, codes.PermissionDenied, "no identity issued")

		time.Sleep(time.Until(svid.Expiry.Add(-time.Second / 2)))
		renewed, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
		if err != nil || renewed.Marshal() == svid.Marshal() {
			t.Errorf("FetchJWTSVID past half the token's life = %v, %v; want a new token", renewed, err)
		}
	})
	t.Run("NewX509Source", func(t *testing.T) {
		source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(s.addr)))
		if err != nil {
			t.Fatal(err)
		}
		defer source.Close()
		if svid, err := source.GetX509SVID(); err != nil || svid.ID != webID {
			t.Errorf("X509Source SVID %v, %v", svid, err)
		}
	})
	t.Run("a call without the workload.spiffe.io header is refused", func(t *testing.T) {
		conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		stream, err := workloadpb.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		wantStatus(t, err, codes.InvalidArgument, "security header missing from request")
	})
}

// helperBinary copies the test binary where any user can run it and
// returns its path.
func helperBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(openDir(t), "workload")
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// helper runs bin in helper mode as uid (and gid) uid.
type helper struct {
	cmd    *exec.Cmd
	stdout *bufio.Reader
	done   chan struct{} // closed when the process exited, with err set
	err    error
}

func startHelper(t *testing.T, bin string, uid uint32, mode, socket string, env ...string) *helper {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append([]string{helperEnv + "=" + mode, "SPIFFE_ENDPOINT_SOCKET=unix://" + socket, "PATH=/usr/bin:/bin"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: uid},
		Pdeathsig:  syscall.SIGKILL,
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr logBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("unable to start a workload as uid %d: %v", uid, err)
	}
	h := &helper{cmd: cmd, stdout: bufio.NewReader(out), done: make(chan struct{})}
	go func() {
		h.err = cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			t.Errorf("workload (uid %d) did not exit after SIGKILL", uid)
		}
		if t.Failed() && stderr.String() != "" {
			t.Logf("workload (uid %d) stderr:\n%s", uid, stderr.String())
		}
	})
	return h
}

// line reads the helper's next output line.
func (h *helper) line(t *testing.T) string {
	t.Helper()
	type result struct {
		s   string
		err error
	}
	c := make(chan result, 1)
	go func() {
		s, err := h.stdout.ReadString('\n')
		c <- result{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-c:
		if r.err != nil {
			t.Fatalf("workload output: %v (read %q)", r.err, r.s)
		}
		return r.s
	case <-time.After(20 * time.Second):
		t.Fatal("no output from the workload within 20s")
		return ""
	}
}

// TestWorkloadsOfOtherUsers runs workloads as other users: one gets its
// own identity and serves mutual TLS (spiffetls) to this process, which
// holds another identity; one whose uid no entry selects is refused.
func TestWorkloadsOfOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workloads as other users")
	}
	const serverUID, strangerUID = 65534, 65533
	clientID := spiffeid.RequireFromString("spiffe://example.org/client")
	serverID := spiffeid.RequireFromString("spiffe://example.org/server")
	bin := helperBinary(t)
	binPath, binSum := exeSelectors(t, bin)
	uid, path, _ := self(t)
	s := newStack(t, stackOpts{entries: []workload.Entry{
		{Name: "client", ID: clientID, Selectors: []workload.Selector{uid, path}},
		{Name: "server", ID: serverID, Selectors: []workload.Selector{uidSelector(serverUID), binPath, binSum}},
	}})
	ctx := testContext(t)

	t.Run("spiffetls between two workloads", func(t *testing.T) {
		server := startHelper(t, bin, serverUID, "serve", s.socket, "KEYBROKER_TEST_PEER="+clientID.String())
		first := server.line(t)
		addr, ok := strings.CutPrefix(first, "listening ")
		if !ok {
			t.Fatalf("workload said %q, want listening ADDR", first)
		}
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", s.addr)
		conn, err := spiffetls.Dial(ctx, "tcp", addr, tlsconfig.AuthorizeID(serverID))
		if err != nil {
			t.Fatalf("spiffetls.Dial: %v", err)
		}
		defer conn.Close()
		if _, err := fmt.Fprintln(conn, "hi"); err != nil {
			t.Fatal(err)
		}
		reply, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if want := "hello " + clientID.String() + "\n"; reply != want {
			t.Errorf("server workload replied %q, want %q", reply, want)
		}
		<-server.done
		if server.err != nil {
			t.Errorf("server workload: %v", server.err)
		}
	})
	t.Run("the same program as a user no entry selects", func(t *testing.T) {
		stranger := startHelper(t, bin, strangerUID, "fetch", s.socket)
		if got, want := stranger.line(t), "error PermissionDenied no identity issued"; got != want {
			t.Errorf("workload as uid %d: %q, want %q", strangerUID, got, want)
		}
	})
	t.Run("the server's identity as its own user", func(t *testing.T) {
		w := startHelper(t, bin, serverUID, "fetch", s.socket)
		if got, want := w.line(t), "svid "+serverID.String(); got != want {
			t.Errorf("workload as uid %d: %q, want %q", serverUID, got, want)
		}
	})
}

// x509Watcher records what a go-spiffe X.509 context watch sees.
type x509Watcher struct {
	mu      sync.Mutex
	serials []string
	ids     [][]spiffeid.ID
	errs    []error
	update  chan struct{}
}

func newX509Watcher() *x509Watcher { return &x509Watcher{update: make(chan struct{}, 100)} }

func (w *x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	var ids []spiffeid.ID
	for _, s := range c.SVIDs {
		ids = append(ids, s.ID)
	}
	w.serials = append(w.serials, c.DefaultSVID().Certificates[0].SerialNumber.String())
	w.ids = append(w.ids, ids)
	w.mu.Unlock()
	w.update <- struct{}{}
}

func (w *x509Watcher) OnX509ContextWatchError(err error) {
	w.mu.Lock()
	w.errs = append(w.errs, err)
	w.mu.Unlock()
	w.update <- struct{}{}
}

// waitFor waits until cond holds over the watcher's record.
func (w *x509Watcher) waitFor(t *testing.T, what string, timeout time.Duration, cond func(w *x509Watcher) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		ok := cond(w)
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-w.update:
		case <-deadline:
			w.mu.Lock()
			defer w.mu.Unlock()
			t.Fatalf("%s: not within %v (serials %v, ids %v, errors %v)", what, timeout, w.serials, w.ids, w.errs)
		}
	}
}

func watch(t *testing.T, ctx context.Context, addr string) *x509Watcher {
	w := newX509Watcher()
	ctx, cancel := context.WithCancel(ctx)
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		client.WatchX509Context(ctx, w)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		client.Close()
	})
	return w
}

// TestRotationReachesTheStream checks that workload SVIDs are renewed at
// half their life, with a new key, and that an open FetchX509SVID stream
// gets each one.
func TestRotationReachesTheStream(t *testing.T) {
	uid, _, _ := self(t)
	s := newStack(t, stackOpts{svidTTL: 2 * time.Second, entries: []workload.Entry{{Name: "web", ID: webID, Selectors: []workload.Selector{uid}}}})
	s.run(t, func(context.Context) (*agent.Attestation, error) {
		t.Error("re-attested although the node SVID is valid for an hour")
		return nil, errors.New("unexpected")
	})
	w := watch(t, testContext(t), s.addr)
	w.waitFor(t, "two rotations on the stream", 6*time.Second, func(w *x509Watcher) bool {
		return len(w.serials) >= 3 && w.serials[0] != w.serials[1] && w.serials[1] != w.serials[2]
	})
	if len(w.errs) > 0 {
		t.Errorf("watch errors: %v", w.errs)
	}
}

// TestReattestation runs the renewal loop: a re-attestation at half the
// node SVID's life replaces the entries (a new ID reaches the stream); the
// next one fails, nothing new is issued, and the identities lapse when the
// node SVID expires: the stream ends with "identity expired". A later
// successful re-attestation brings them back.
func TestReattestation(t *testing.T) {
	uid, _, _ := self(t)
	web := workload.Entry{Name: "web", ID: webID, Selectors: []workload.Selector{uid}}
	api := workload.Entry{Name: "api", ID: apiID, Selectors: []workload.Selector{uid}}
	const nodeTTL = 3 * time.Second
	s := newStack(t, stackOpts{nodeTTL: nodeTTL, entries: []workload.Entry{web}})

	var mu sync.Mutex
	var attests int
	var failing bool
	var failedAt time.Time
	var issuedAtFailure int
	var lastNode *agent.Attestation
	s.run(t, func(context.Context) (*agent.Attestation, error) {
		mu.Lock()
		defer mu.Unlock()
		attests++
		if attests == 1 {
			lastNode = s.broker.attestation(t, nodeTTL, web, api)
			return lastNode, nil
		}
		if !failing {
			failing, failedAt = true, time.Now()
			issuedAtFailure = s.broker.count("IssueWorkloadX509SVIDs")
		}
		return nil, &agent.StepError{Step: agent.StepAttest, Err: errors.New("broker refused (PermissionDenied): policy: no policy allows this node")}
	})
	ctx := testContext(t)
	w := watch(t, ctx, s.addr)
	w.waitFor(t, "the new entry after re-attestation", 5*time.Second, func(w *x509Watcher) bool {
		return len(w.ids) > 0 && len(w.ids[len(w.ids)-1]) == 2
	})
	w.waitFor(t, "the lapse", 8*time.Second, func(w *x509Watcher) bool {
		return len(w.errs) > 0 && strings.Contains(w.errs[len(w.errs)-1].Error(), "identity expired")
	})
	lapsed := time.Now()

	mu.Lock()
	notAfter := lastNode.NodeSVID.SVID.Certificates[0].NotAfter
	if !failing || lapsed.Before(notAfter) {
		t.Errorf("lapsed at %v; want after a failed re-attestation and the node SVID's expiry %v", lapsed, notAfter)
	}
	if lapsed.Before(failedAt) {
		t.Errorf("lapsed at %v, before the failed re-attestation at %v", lapsed, failedAt)
	}
	if n := s.broker.count("IssueWorkloadX509SVIDs"); n != issuedAtFailure {
		t.Errorf("%d workload SVID requests after the failed re-attestation, want none", n-issuedAtFailure)
	}
	mu.Unlock()
	_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(s.addr))
	wantStatus(t, err, codes.PermissionDenied, "identity expired")
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "x"}, workloadapi.WithAddr(s.addr))
	wantStatus(t, err, codes.PermissionDenied, "identity expired")
	if !strings.Contains(s.log.String(), "re-attestation failed") || !strings.Contains(s.log.String(), "node identity lapsed") {
		t.Errorf("the agent did not log the failure and the lapse:\n%s", s.log.String())
	}

	// The node attests again: identities come back.
	mu.Lock()
	attests = 0
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(s.addr))
		if err == nil {
			if svid.ID != webID {
				t.Errorf("SVID %s after recovery, want %s", svid.ID, webID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SVID within 5s of a successful re-attestation: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestGrace checks that --grace keeps serving the issued workload SVIDs
// after the node SVID expired, for that long only.
func TestGrace(t *testing.T) {
	uid, _, _ := self(t)
	const grace = 1500 * time.Millisecond
	s := newStack(t, stackOpts{nodeTTL: 2 * time.Second, grace: grace, entries: []workload.Entry{{Name: "web", ID: webID, Selectors: []workload.Selector{uid}}}})
	s.run(t, func(context.Context) (*agent.Attestation, error) { return nil, errors.New("refused") })
	ctx := testContext(t)
	notAfter := s.first.NodeSVID.SVID.Certificates[0].NotAfter
	time.Sleep(time.Until(notAfter.Add(300 * time.Millisecond)))
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(s.addr)); err != nil {
		t.Errorf("FetchX509SVID within the grace: %v", err)
	}
	time.Sleep(time.Until(notAfter.Add(grace + 300*time.Millisecond)))
	_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(s.addr))
	wantStatus(t, err, codes.PermissionDenied, "identity expired")
}

// TestBrokerSVIDsChecked checks that the agent keeps nothing the broker
// returns that is not exactly what it asked for.
func TestBrokerSVIDsChecked(t *testing.T) {
	uid, _, _ := self(t)
	entries := []workload.Entry{{Name: "web", ID: webID, Selectors: []workload.Selector{uid}}, {Name: "db", ID: dbID, Selectors: []workload.Selector{uid}}}
	tests := []struct {
		name    string
		tamper  func(*pb.IssueWorkloadX509SVIDsResponse)
		refuse  error
		wantErr string
	}{
		{name: "refused", refuse: status.Error(codes.PermissionDenied, "node denied"), wantErr: "broker refused (PermissionDenied): node denied"},
		{name: "SVIDs swapped", wantErr: "not for the key the agent sent", tamper: func(r *pb.IssueWorkloadX509SVIDsResponse) {
			r.Svids[0].CertChain, r.Svids[1].CertChain = r.Svids[1].CertChain, r.Svids[0].CertChain
		}},
		{name: "one missing", wantErr: "the broker returned no SVID for " + dbID.String(), tamper: func(r *pb.IssueWorkloadX509SVIDsResponse) {
			r.Svids = r.Svids[:1]
		}},
		{name: "one twice", wantErr: "which was not requested (or twice)", tamper: func(r *pb.IssueWorkloadX509SVIDsResponse) {
			r.Svids[1] = r.Svids[0]
		}},
		{name: "no certificate", wantErr: "no certificate", tamper: func(r *pb.IssueWorkloadX509SVIDsResponse) {
			r.Svids[0].CertChain = nil
		}},
		{name: "garbage", wantErr: "unable to parse certificate", tamper: func(r *pb.IssueWorkloadX509SVIDsResponse) {
			r.Svids[0].CertChain = [][]byte{[]byte("garbage")}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := startFakeBroker(t)
			b.set(func(b *fakeBroker) { b.tamper, b.refuse = tc.tamper, tc.refuse })
			log, _ := testLogger(t)
			mgr, err := agent.NewSVIDManager(b.target(), agent.WithSVIDLogger(log))
			if err != nil {
				t.Fatal(err)
			}
			err = mgr.Update(context.Background(), b.attestation(t, time.Hour, entries...))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Update = %v; want an error containing %q", err, tc.wantErr)
			}
			snap, _ := mgr.Snapshot()
			for id, svid := range snap.X509SVIDs {
				if svid.ID != id {
					t.Errorf("kept an SVID for %s under %s", svid.ID, id)
				}
				if _, _, err := x509svid.Verify(svid.Certificates, b.spiffe.Bundle()); err != nil {
					t.Errorf("kept an SVID that does not verify: %v", err)
				}
			}
		})
	}
}

func TestNewSVIDManagerErrors(t *testing.T) {
	b := startFakeBroker(t)
	tests := []struct {
		name    string
		target  agent.BrokerTarget
		opts    []agent.SVIDOption
		wantErr string
	}{
		{name: "no CA", target: agent.BrokerTarget{Addr: b.addr, CAPEM: []byte("x")}, wantErr: "the broker CA bundle holds no PEM certificate"},
		{name: "bad address", target: agent.BrokerTarget{Addr: "nohost", CAPEM: b.caPEM}, wantErr: `broker address "nohost"`},
		{name: "negative grace", target: b.target(), opts: []agent.SVIDOption{agent.WithGrace(-time.Second)}, wantErr: "grace -1s is negative"},
		{name: "bad backoff", target: b.target(), opts: []agent.SVIDOption{agent.WithRetry(time.Second, time.Millisecond)}, wantErr: "invalid retry backoff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := agent.NewSVIDManager(tc.target, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("NewSVIDManager = %v; want %q", err, tc.wantErr)
			}
		})
	}
	mgr, err := agent.NewSVIDManager(b.target())
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Run(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "call Update") {
		t.Errorf("Run before Update = %v", err)
	}
	if snap, _ := mgr.Snapshot(); snap != nil {
		t.Errorf("snapshot before Update: %+v", snap)
	}
}
