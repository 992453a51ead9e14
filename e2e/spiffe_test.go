package e2e

// SPIFFE across processes: `keybroker serve` with a trust domain, the
// agent's `run` command serving the Workload API, go-spiffe as the workload.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
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
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentpkg "github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/swtpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

const (
	e2eTrustDomain = "e2e.keybroker"
	// e2eNodeSVIDTTL is short so that the node SVID is renewed, and
	// lapses, within the test.
	e2eNodeSVIDTTL = 8 * time.Second
)

var (
	e2eWorkloadID = spiffeid.RequireFromString("spiffe://" + e2eTrustDomain + "/e2e/test")
	e2eAdminID    = spiffeid.RequireFromString("spiffe://" + e2eTrustDomain + "/admin")
)

// spiffePolicy releases the node an X.509-SVID sealed to PCR 0 and 7 and
// one workload entry selecting this test process (its uid, executable and
// the executable's SHA-256).
func spiffePolicy(t *testing.T, p *pcrs) string {
	t.Helper()
	exe, sum := selfExecutable(t)
	var b strings.Builder
	b.WriteString("policy \"mesh\" {\n  select {\n    ek_cas = [\"swtpm\"]\n  }\n  require = [\n")
	for _, r := range pcrRequire(p.value(0), p.value(7)) {
		fmt.Fprintf(&b, "    %q,\n", r)
	}
	fmt.Fprintf(&b, `  ]
  release "node-svid" {
    type      = "x509_svid"
    mode      = "pcr_sealed"
    pcr_bank  = "sha256"
    pcrs      = [0, 7]
    ttl       = %q
    spiffe_id = "spiffe://%s/node/${ek_hash_short}"
  }
  workload "e2e-test" {
    spiffe_id = %q
    selectors = ["unix:uid:%d", "unix:path:%s", "unix:sha256:%s"]
    ttl       = "1h"
  }
}
`, e2eNodeSVIDTTL.String(), e2eTrustDomain, e2eWorkloadID, os.Getuid(), exe, sum)
	return b.String()
}

// selfExecutable returns this test binary's path, symlinks resolved, and
// its SHA-256 in hex: what the agent's unix:path and unix:sha256 selectors
// say of this process.
func selfExecutable(t *testing.T) (path, sha256Hex string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(readFile(t, exe))
	return exe, hex.EncodeToString(sum[:])
}

// agentRun is a running `keybroker-agent run`.
type agentRun struct {
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{}
	err    error // valid once done is closed
}

// startAgentRun starts `keybroker-agent run` against b with tpm, serving
// the Workload API on socket, and waits until it serves.
func startAgentRun(t *testing.T, tpm *swtpmtest.TPM, b *brokerProc, socket string) *agentRun {
	t.Helper()
	return startAgentRunWith(t, tpm, b, socket, "workload API serving")
}

// startAgentRunWith starts keybroker-agent run with extra flags and waits
// for ready in its log.
func startAgentRunWith(t *testing.T, tpm *swtpmtest.TPM, b *brokerProc, socket, ready string, extra ...string) *agentRun {
	t.Helper()
	_, agentBin := binaries(t)
	a := &agentRun{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	a.cmd = exec.Command(agentBin, append([]string{"run", "--tpm", "tcp://" + tpm.Addr, "--broker", b.addr, "--ca", b.caFile,
		"--workload-socket", socket, "--retry-max", "1s"}, extra...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.stdout, a.stderr
	killWithParent(a.cmd)
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("unable to run keybroker-agent run: %v", err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		<-a.done
		if t.Failed() {
			t.Logf("keybroker-agent run stdout:\n%s\nstderr:\n%s", a.stdout.String(), a.stderr.String())
		}
	})
	a.waitLog(t, ready, 30*time.Second)
	return a
}

// waitLog waits until the agent's log holds substr.
func (a *agentRun) waitLog(t *testing.T, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(a.stderr.String(), substr) {
		select {
		case <-a.done:
			t.Fatalf("keybroker-agent run exited (%v) while waiting for %q in its log", a.err, substr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("keybroker-agent run did not log %q within %v", substr, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var validUntilRE = regexp.MustCompile(`(?m)^open\s+\S+\s+node SVID (\S+) opened inside the TPM \(PCR_SEALED\), valid until (\S+);`)

// svidClient connects to the broker presenting svid as client certificate.
func svidClient(t *testing.T, b *brokerProc, svid *x509svid.SVID) pb.BrokerClient {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(readFile(t, b.caFile)) {
		t.Fatal("ca.pem holds no certificate")
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewBrokerClient(conn)
}

func csrFor(t *testing.T, id spiffeid.ID) *pb.WorkloadCSR {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.WorkloadCSR{SpiffeId: id.String(), Csr: der}
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if s, _ := status.FromError(err); s.Code() != code || !strings.Contains(s.Message(), msg) {
		t.Fatalf("error %v; want %s %q", err, code, msg)
	}
}

func TestSPIFFEOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: spiffePolicy(t, p),
		extra: fmt.Sprintf("\nspiffe {\n  trust_domain = %q\n}\n", e2eTrustDomain)})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	caPEM := readFile(t, b.caFile)
	conn, err := agentpkg.Dial(b.addr, caPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	plain := pb.NewBrokerClient(conn)
	br, err := plain.GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil {
		t.Fatalf("GetBundle: %v", err)
	}
	bundle, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(e2eTrustDomain), br.GetSpiffeBundle())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("forged CSR with the node SVID", func(t *testing.T) {
		// Attest in process, on the same swtpm, to hold the node SVID.
		rw := tpm.Dial(t)
		node, err := agentpkg.NewNode(rw, agentpkg.NodeOpts{})
		if err != nil {
			rw.Close()
			t.Fatal(err)
		}
		att, err := agentpkg.Attest(ctx, plain, node, agentpkg.AttestOpts{})
		node.Close()
		rw.Close()
		if err != nil {
			t.Fatalf("Attest: %v", err)
		}
		mtls := svidClient(t, b, att.NodeSVID.SVID)
		_, err = mtls.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, e2eAdminID)}})
		wantCode(t, err, codes.PermissionDenied, "spiffe id not in this node's workload entries")
		_, err = mtls.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, e2eWorkloadID), csrFor(t, e2eAdminID)}})
		wantCode(t, err, codes.PermissionDenied, "spiffe id not in this node's workload entries")
		_, err = mtls.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: e2eAdminID.String(), Audience: []string{"x"}})
		wantCode(t, err, codes.PermissionDenied, "spiffe id not in this node's workload entries")
		resp, err := mtls.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, e2eWorkloadID)}})
		if err != nil {
			t.Fatalf("the entry's own ID was refused: %v", err)
		}
		if id, _, err := x509svid.ParseAndVerify(resp.GetSvids()[0].GetCertChain(), bundle); err != nil || id != e2eWorkloadID {
			t.Errorf("workload SVID %s does not verify: %v", id, err)
		}
	})

	socket := filepath.Join(t.TempDir(), "run", "agent.sock")
	a := startAgentRun(t, tpm, b, socket)
	m := validUntilRE.FindStringSubmatch(a.stdout.String())
	if m == nil {
		t.Fatalf("the agent printed no node SVID opening:\n%s", a.stdout.String())
	}
	nodeNotAfter, err := time.Parse(time.RFC3339, m[2])
	if err != nil {
		t.Fatal(err)
	}
	addr := workloadapi.WithAddr("unix://" + socket)

	svid, err := workloadapi.FetchX509SVID(ctx, addr)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id != e2eWorkloadID {
		t.Fatalf("workload SVID %s does not verify against the broker's bundle: %v", svid.ID, err)
	}
	jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "e2e"}, addr)
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if v, err := jwtsvid.ParseAndValidate(jwt.Marshal(), bundle, []string{"e2e"}); err != nil || v.ID != e2eWorkloadID {
		t.Fatalf("the JWT-SVID does not validate against the broker's bundle: %v", err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, jwt.Marshal(), "e2e", addr); err != nil {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}

	// A stream open across the lapse.
	wconn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer wconn.Close()
	stream, err := workloadpb.NewSpiffeWorkloadAPIClient(wconn).FetchX509SVID(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true"), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("FetchX509SVID stream: %v", err)
	}

	// The boot changes before the agent renews at half the node SVID's life.
	p.measure(t, 7, "e2e: an unknown bootloader")
	a.waitLog(t, "re-attestation failed", e2eNodeSVIDTTL)
	if !strings.Contains(a.stderr.String(), "policy: no policy allows this node") {
		t.Errorf("the agent log does not say why the re-attestation failed:\n%s", a.stderr.String())
	}
	var err2 error
	for {
		// Rotations may arrive before the lapse only if issued before the
		// failure; the stream must then end with "identity expired".
		if _, err2 = stream.Recv(); err2 != nil {
			break
		}
	}
	lapsed := time.Now()
	wantCode(t, err2, codes.PermissionDenied, "identity expired")
	if lapsed.Before(nodeNotAfter) {
		t.Errorf("identities lapsed at %v, before the node SVID expired at %v", lapsed, nodeNotAfter)
	}
	if lapsed.After(nodeNotAfter.Add(3 * time.Second)) {
		t.Errorf("identities lapsed at %v, long after the node SVID expired at %v", lapsed, nodeNotAfter)
	}
	_, err = workloadapi.FetchX509SVID(ctx, addr)
	wantCode(t, err, codes.PermissionDenied, "identity expired")
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "e2e-other"}, addr)
	wantCode(t, err, codes.PermissionDenied, "identity expired")
	a.waitLog(t, "node identity lapsed", 5*time.Second)
	if strings.Contains(afterFailure(a.stderr.String()), "workload X.509-SVID issued") {
		t.Errorf("the agent issued workload SVIDs after the failed re-attestation:\n%s", a.stderr.String())
	}

	// SIGTERM: the agent stops cleanly and removes its socket.
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("keybroker-agent run did not stop within 10s of SIGTERM")
	}
	var ee *exec.ExitError
	if a.err != nil && !errors.As(a.err, &ee) {
		t.Fatal(a.err)
	}
	if a.err != nil {
		t.Errorf("keybroker-agent run exited with %v after SIGTERM, want 0", a.err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("the Workload API socket is left after the agent stopped: %v", err)
	}
	t.Logf("keybroker-agent run stdout:\n%s\nstderr:\n%s", a.stdout.String(), a.stderr.String())
}

// afterFailure returns the log after the first failed re-attestation.
func afterFailure(log string) string {
	_, after, _ := strings.Cut(log, "re-attestation failed")
	return after
}
