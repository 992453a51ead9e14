package agent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/broker/issue"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

const trustDomain = "example.org"

// fakeBroker serves the workload SVID RPCs the way the broker's API
// promises, on a real loopback TLS socket: the caller authenticates with
// its node X.509-SVID (mutual TLS, verified against the trust domain's
// bundle) and gets SVIDs only for the IDs of its node's entries.
type fakeBroker struct {
	pb.UnimplementedBrokerServer
	spiffe *issue.SPIFFE
	addr   string
	caPEM  []byte // what the agent pins

	mu      sync.Mutex
	allowed map[spiffeid.ID][]spiffeid.ID // node ID → workload IDs
	svidTTL time.Duration
	jwtTTL  time.Duration
	refuse  error // set: every workload RPC fails with it
	tamper  func(*pb.IssueWorkloadX509SVIDsResponse)
	calls   map[string]int
	nodes   int
}

func startFakeBroker(t *testing.T) *fakeBroker {
	t.Helper()
	sp, err := issue.LoadOrCreateSPIFFE(t.TempDir(), trustDomain, issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	servingCA, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := servingCA.ServingCertificate([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBroker{
		spiffe: sp, caPEM: servingCA.BundlePEM(),
		allowed: map[spiffeid.ID][]spiffeid.ID{},
		svidTTL: time.Hour, jwtTTL: time.Hour, calls: map[string]int{},
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		// Like the broker: a client certificate is optional (Challenge
		// and Attest need none), and verified as an X.509-SVID when sent.
		ClientAuth: tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			certs, err := parseDERs(raw)
			if err != nil {
				return err
			}
			_, _, err = x509svid.Verify(certs, sp.Bundle())
			return err
		},
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = lis.Addr().String()
	g := grpc.NewServer(grpc.Creds(creds))
	pb.RegisterBrokerServer(g, b)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return b
}

func parseDERs(raw [][]byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// target is how the agent reaches b.
func (b *fakeBroker) target() agent.BrokerTarget {
	return agent.BrokerTarget{Addr: b.addr, CAPEM: b.caPEM}
}

// attestation makes what an attestation releases: a node SVID valid for
// ttl, and the entries, which the broker then allows this node.
func (b *fakeBroker) attestation(t testing.TB, ttl time.Duration, entries ...workload.Entry) *agent.Attestation {
	t.Helper()
	b.mu.Lock()
	b.nodes++
	id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://%s/keybroker/node/%d", trustDomain, b.nodes))
	var ids []spiffeid.ID
	for _, e := range entries {
		ids = append(ids, e.ID)
	}
	b.allowed[id] = ids
	b.mu.Unlock()
	s, err := b.spiffe.IssueX509SVID(id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(issue.CertificatesPEM(s.Chain), s.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := b.spiffe.BundleJWKS()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Parse(b.spiffe.TrustDomain(), jwks)
	if err != nil {
		t.Fatal(err)
	}
	return &agent.Attestation{ReceiptID: "r-" + id.Path(), NodeSVID: &agent.NodeSVID{SVID: svid, Bundle: bundle}, Entries: entries}
}

func (b *fakeBroker) set(f func(b *fakeBroker)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(b)
}

func (b *fakeBroker) count(method string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[method]
}

// node authenticates the caller by its client certificate.
func (b *fakeBroker) node(ctx context.Context, method string) (spiffeid.ID, error) {
	b.mu.Lock()
	b.calls[method]++
	refuse := b.refuse
	b.mu.Unlock()
	if refuse != nil {
		return spiffeid.ID{}, refuse
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "a node X.509-SVID is required")
	}
	id, err := x509svid.IDFromCert(info.State.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, err.Error())
	}
	return id, nil
}

func (b *fakeBroker) allows(node, id spiffeid.ID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Contains(b.allowed[node], id)
}

func (b *fakeBroker) IssueWorkloadX509SVIDs(ctx context.Context, req *pb.IssueWorkloadX509SVIDsRequest) (*pb.IssueWorkloadX509SVIDsResponse, error) {
	node, err := b.node(ctx, "IssueWorkloadX509SVIDs")
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	ttl := b.svidTTL
	b.mu.Unlock()
	resp := &pb.IssueWorkloadX509SVIDsResponse{}
	for _, c := range req.GetCsrs() {
		id, err := spiffeid.FromString(c.GetSpiffeId())
		if err != nil || !b.allows(node, id) {
			return nil, status.Errorf(codes.PermissionDenied, "%s is not in the workload entries of %s", c.GetSpiffeId(), node)
		}
		s, err := b.spiffe.SignX509SVID(c.GetCsr(), id, ttl)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		w := &pb.WorkloadX509SVID{SpiffeId: id.String(), ExpiresUnix: s.NotAfter.Unix()}
		for _, cert := range s.Chain {
			w.CertChain = append(w.CertChain, cert.Raw)
		}
		resp.Svids = append(resp.Svids, w)
	}
	b.mu.Lock()
	tamper := b.tamper
	b.mu.Unlock()
	if tamper != nil {
		tamper(resp)
	}
	return resp, nil
}

func (b *fakeBroker) IssueWorkloadJWTSVID(ctx context.Context, req *pb.IssueWorkloadJWTSVIDRequest) (*pb.IssueWorkloadJWTSVIDResponse, error) {
	node, err := b.node(ctx, "IssueWorkloadJWTSVID")
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil || !b.allows(node, id) {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not in the workload entries of %s", req.GetSpiffeId(), node)
	}
	b.mu.Lock()
	ttl := b.jwtTTL
	b.mu.Unlock()
	token, exp, err := b.spiffe.IssueJWTSVID(id, req.GetAudience(), ttl)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &pb.IssueWorkloadJWTSVIDResponse{Token: token, ExpiresUnix: exp.Unix()}, nil
}

func (b *fakeBroker) GetBundle(ctx context.Context, _ *pb.GetBundleRequest) (*pb.GetBundleResponse, error) {
	if _, err := b.node(ctx, "GetBundle"); err != nil {
		return nil, err
	}
	jwks, err := b.spiffe.BundleJWKS()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &pb.GetBundleResponse{TrustDomain: trustDomain, SpiffeBundle: jwks}, nil
}

// logBuffer collects a component's log, shown when the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testLogger logs into a buffer that goes to the test log on failure.
func testLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}
