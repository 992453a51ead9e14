package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

var (
	webID   = spiffeid.RequireFromString("spiffe://example.org/web")
	dbID    = spiffeid.RequireFromString("spiffe://example.org/db")
	adminID = spiffeid.RequireFromString("spiffe://example.org/admin")
)

// attestOK runs Challenge and Attest on the fixture's server and fails the
// test on a refusal.
func (f *fixture) attestOK(t *testing.T) *pb.AttestResponse {
	t.Helper()
	ch, secret := f.Challenge(t)
	resp, err := f.Server.Attest(context.Background(), f.AttestRequest(t, ch, secret))
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	return resp
}

// asPeer returns a context as gRPC gives a handler for a TLS connection
// whose client presented, and the TLS layer verified, svid.
func asPeer(svid *x509svid.SVID) context.Context {
	state := tls.ConnectionState{}
	if svid != nil {
		state.PeerCertificates = svid.Certificates
		state.VerifiedChains = [][]*x509.Certificate{svid.Certificates}
	}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}

// newCSR returns a key and a PKCS#10 request naming uris.
func newCSR(t *testing.T, uris ...spiffeid.ID) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, id := range uris {
		tmpl.URIs = append(tmpl.URIs, id.URL())
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func csrFor(t *testing.T, id spiffeid.ID) *pb.WorkloadCSR {
	_, der := newCSR(t, id)
	return &pb.WorkloadCSR{SpiffeId: id.String(), Csr: der}
}

// wantStatus asserts a gRPC refusal with code and a message containing msg.
func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	s, _ := status.FromError(err)
	if err == nil || s.Code() != code || !strings.Contains(s.Message(), msg) {
		t.Fatalf("error = %v; want %v containing %q", err, code, msg)
	}
}

func TestAttestReleasesNodeSVID(t *testing.T) {
	f := newFixture(t, brokertest.Opts{SPIFFE: true})
	resp := f.attestOK(t)

	if len(resp.GetCredentials()) != 2 {
		t.Fatalf("got %d credentials, want node-svid and node-tls", len(resp.GetCredentials()))
	}
	cred := resp.GetCredentials()[0]
	if cred.GetName() != "node-svid" || cred.GetType() != pb.CredentialType_X509_SVID || cred.GetMode() != pb.ReleaseMode_PCR_SEALED {
		t.Fatalf("first credential = %s %v %v; want node-svid, X509_SVID, PCR_SEALED", cred.GetName(), cred.GetType(), cred.GetMode())
	}
	svid, bundle := f.OpenNodeSVID(t, resp, "node-svid")
	wantID := "spiffe://example.org/node/" + f.EKHash[:16]
	if svid.ID.String() != wantID {
		t.Errorf("node SVID ID = %s, want %s", svid.ID, wantID)
	}
	leaf := svid.Certificates[0]
	if got := leaf.NotAfter.Sub(time.Now()); got > 2*time.Hour || got < 2*time.Hour-time.Minute {
		t.Errorf("node SVID valid for %s, want the release's 2h", got)
	}
	if cred.GetNotAfterUnix() != leaf.NotAfter.Unix() {
		t.Errorf("credential not_after %d, certificate %d", cred.GetNotAfterUnix(), leaf.NotAfter.Unix())
	}
	if !bundle.Equal(f.SPIFFE.Bundle()) {
		t.Errorf("the bundle sent with the SVID is not the authority's")
	}
	if _, _, err := x509svid.Verify(svid.Certificates, f.SPIFFE.Bundle()); err != nil {
		t.Errorf("x509svid.Verify against the authority's bundle: %v", err)
	}

	want := []*pb.WorkloadEntry{
		{Name: "db", SpiffeId: dbID.String(), TtlSeconds: 600, Selectors: []*pb.Selector{{Type: "unix", Value: "uid:70"}, {Type: "unix", Value: "path:/usr/bin/postgres"}}},
		{Name: "web", SpiffeId: webID.String(), TtlSeconds: 3600, Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}}},
	}
	if got := resp.GetWorkloadEntries(); !slices.EqualFunc(got, want, func(a, b *pb.WorkloadEntry) bool {
		return a.GetName() == b.GetName() && a.GetSpiffeId() == b.GetSpiffeId() && a.GetTtlSeconds() == b.GetTtlSeconds() &&
			slices.EqualFunc(a.GetSelectors(), b.GetSelectors(), func(x, y *pb.Selector) bool { return x.GetType() == y.GetType() && x.GetValue() == y.GetValue() })
	}) {
		t.Errorf("workload entries =\n%v\nwant\n%v", got, want)
	}

	// The receipt names the SVID; the node record holds it and the entries.
	r := f.Receipts(t)[0]
	serial := leaf.SerialNumber.Text(16)
	if len(r.Released) != 2 || r.Released[0].Type != "x509_svid" || r.Released[0].Serial != serial || r.Released[0].SPIFFEID.String() != wantID {
		t.Errorf("receipt released = %+v; want node-svid with serial %s and %s", r.Released, serial, wantID)
	}
	n, err := f.Store.NodeBySVIDSerial(context.Background(), serial)
	if err != nil || n.EKHash != f.EKHash || n.LastReceiptID != r.ID {
		t.Fatalf("NodeBySVIDSerial = %s (receipt %s), %v; want the node, receipt %s", n.EKHash, n.LastReceiptID, err, r.ID)
	}
	if len(n.SVIDs) != 1 || n.SVIDs[0].ID.String() != wantID || !n.SVIDs[0].NotAfter.Equal(leaf.NotAfter) {
		t.Errorf("node record SVIDs = %+v", n.SVIDs)
	}
	if len(n.WorkloadEntries) != 2 || n.WorkloadEntries[1].ID != webID || n.WorkloadEntries[1].TTL != time.Hour {
		t.Errorf("node record workload entries = %+v", n.WorkloadEntries)
	}
}

func TestAttestRefusesSPIFFEItCannotIssue(t *testing.T) {
	other, err := issue.LoadOrCreateSPIFFE(t.TempDir(), "other.org", issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name        string
		spiffe      *issue.SPIFFE
		wantFailure string
	}{
		{"no trust domain configured", nil, `release "node-svid": no SPIFFE trust domain is configured (the spiffe block of broker.hcl)`},
		{"ids outside the trust domain", other, `workload "web": spiffe://example.org/web is not in trust domain other.org`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, brokertest.Opts{SPIFFE: true, Server: func(o *broker.ServerOpts) { o.SPIFFE = tt.spiffe }})
			ch, secret := f.Challenge(t)
			resp, err := f.Server.Attest(context.Background(), f.AttestRequest(t, ch, secret))
			f.wantRefused(t, resp, err, codes.FailedPrecondition, "release: the policies release a SPIFFE identity this broker cannot issue", "release")
			r := f.Receipts(t)[0]
			if !r.DenyListed || !slices.Contains(r.Failures, tt.wantFailure) {
				t.Errorf("receipt = deny-listed %v, failures %q; want deny-listed, naming %q", r.DenyListed, r.Failures, tt.wantFailure)
			}
			if n, err := f.Store.GetNode(context.Background(), f.EKHash); err != nil || len(n.SVIDs)+len(n.WorkloadEntries) != 0 {
				t.Errorf("node record = %+v, %v; want one without SVIDs or entries", n, err)
			}
		})
	}
}

func TestWorkloadSVIDs(t *testing.T) {
	f := newFixture(t, brokertest.Opts{SPIFFE: true})
	node, _ := f.OpenNodeSVID(t, f.attestOK(t), "node-svid")
	ctx := asPeer(node)
	bundle := f.SPIFFE.Bundle()

	resp, err := f.Server.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID), csrFor(t, dbID)}})
	if err != nil {
		t.Fatalf("IssueWorkloadX509SVIDs: %v", err)
	}
	for i, want := range []struct {
		id  spiffeid.ID
		ttl time.Duration
	}{{webID, time.Hour}, {dbID, 10 * time.Minute}} {
		got := resp.GetSvids()[i]
		id, chains, err := x509svid.ParseAndVerify(got.GetCertChain(), bundle)
		if err != nil {
			t.Fatalf("svid %d: %v", i, err)
		}
		leaf := chains[0][0]
		if id != want.id || got.GetSpiffeId() != want.id.String() || got.GetExpiresUnix() != leaf.NotAfter.Unix() {
			t.Errorf("svid %d = %s (%s), want %s", i, id, got.GetSpiffeId(), want.id)
		}
		if d := time.Until(leaf.NotAfter); d > want.ttl || d < want.ttl-time.Minute {
			t.Errorf("svid for %s valid for %s, want its entry's %s", want.id, d, want.ttl)
		}
	}

	// Near the end of the node SVID's life, workload SVIDs end with it.
	f.Advance(2*time.Hour - 5*time.Minute)
	resp, err = f.Server.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
	if err != nil {
		t.Fatalf("IssueWorkloadX509SVIDs near the node SVID's expiry: %v", err)
	}
	leaf, _ := x509.ParseCertificate(resp.GetSvids()[0].GetCertChain()[0])
	if limit := node.Certificates[0].NotAfter.Add(-2*time.Hour + 6*time.Minute); leaf.NotAfter.After(limit) {
		t.Errorf("workload SVID valid until %s, beyond the node SVID's remaining validity (%s)", leaf.NotAfter, limit)
	}
	jwt, err := f.Server.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: webID.String(), Audience: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(time.Unix(jwt.GetExpiresUnix(), 0)); d > 5*time.Minute+time.Second {
		t.Errorf("JWT-SVID valid for %s, beyond the node SVID's remaining 5m", d)
	}

	// Once it has expired, the node gets nothing.
	f.Advance(5 * time.Minute)
	_, err = f.Server.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
	wantStatus(t, err, codes.PermissionDenied, "node authentication: the node X.509-SVID has expired")
	_, err = f.Server.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: webID.String(), Audience: []string{"a"}})
	wantStatus(t, err, codes.PermissionDenied, "node authentication: the node X.509-SVID has expired")
}

func TestWorkloadSVIDRefusals(t *testing.T) {
	f := newFixture(t, brokertest.Opts{SPIFFE: true})
	node, _ := f.OpenNodeSVID(t, f.attestOK(t), "node-svid")
	ctx := asPeer(node)
	x509Req := func(csrs ...*pb.WorkloadCSR) error {
		_, err := f.Server.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: csrs})
		return err
	}
	jwtReq := func(id string, aud ...string) error {
		_, err := f.Server.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: id, Audience: aud})
		return err
	}
	_, adminCSR := newCSR(t, adminID)
	_, twoURIs := newCSR(t, webID, dbID)
	_, noURI := newCSR(t)
	tooMany := make([]*pb.WorkloadCSR, issue.MaxCSRsPerRequest+1)
	for i := range tooMany {
		tooMany[i] = csrFor(t, webID)
	}
	tamperedCSR := csrFor(t, webID)
	tamperedCSR.Csr[len(tamperedCSR.Csr)-1] ^= 1

	tests := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"id outside the entries", x509Req(csrFor(t, adminID)), codes.PermissionDenied, "spiffe id not in this node's workload entries: spiffe://example.org/admin"},
		{"one id outside the entries refuses all", x509Req(csrFor(t, webID), csrFor(t, adminID)), codes.PermissionDenied, "spiffe id not in this node's workload entries"},
		{"csr for another id than requested", x509Req(&pb.WorkloadCSR{SpiffeId: webID.String(), Csr: adminCSR}), codes.InvalidArgument, "csrs[0]: csr must name exactly spiffe://example.org/web and nothing else"},
		{"csr with two ids", x509Req(&pb.WorkloadCSR{SpiffeId: webID.String(), Csr: twoURIs}), codes.InvalidArgument, "csr must name exactly"},
		{"csr without an id", x509Req(&pb.WorkloadCSR{SpiffeId: webID.String(), Csr: noURI}), codes.InvalidArgument, "csr must name exactly"},
		{"csr with a bad signature", x509Req(tamperedCSR), codes.InvalidArgument, "csrs[0]:"},
		{"another trust domain", x509Req(csrFor(t, spiffeid.RequireFromString("spiffe://other.org/web"))), codes.PermissionDenied, "spiffe id not in this node's workload entries"},
		{"not a spiffe id", x509Req(&pb.WorkloadCSR{SpiffeId: "https://example.org/web", Csr: adminCSR}), codes.InvalidArgument, `input: csrs[0]: invalid spiffe id "https://example.org/web"`},
		{"same id twice", x509Req(csrFor(t, webID), csrFor(t, webID)), codes.InvalidArgument, "input: csrs[1]: spiffe://example.org/web is requested twice"},
		{"no csrs", x509Req(), codes.InvalidArgument, "input: no csrs"},
		{"too many csrs", x509Req(tooMany...), codes.InvalidArgument, "input: at most 64 csrs"},
		{"empty csr", x509Req(&pb.WorkloadCSR{SpiffeId: webID.String()}), codes.InvalidArgument, "input: csrs[0]: csr must be between 1 and 4096 bytes"},
		{"jwt: id outside the entries", jwtReq(adminID.String(), "a"), codes.PermissionDenied, "spiffe id not in this node's workload entries: spiffe://example.org/admin"},
		{"jwt: no audience", jwtReq(webID.String()), codes.InvalidArgument, "input: audience is required"},
		{"jwt: too many audiences", jwtReq(webID.String(), "1", "2", "3", "4", "5", "6", "7", "8", "9"), codes.InvalidArgument, "input: at most 8 audiences"},
		{"jwt: empty audience", jwtReq(webID.String(), "a", ""), codes.InvalidArgument, "input: each audience must be 1 to 256 bytes"},
		{"jwt: not a spiffe id", jwtReq("web", "a"), codes.InvalidArgument, `input: invalid spiffe id "web"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantStatus(t, tt.err, tt.code, tt.msg) })
	}

	t.Run("authentication", func(t *testing.T) {
		web, err := f.Server.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
		if err != nil {
			t.Fatal(err)
		}
		_, chains, err := x509svid.ParseAndVerify(web.GetSvids()[0].GetCertChain(), f.SPIFFE.Bundle())
		if err != nil {
			t.Fatal(err)
		}
		webLeaf := chains[0][0]
		other, err := issue.LoadOrCreateSPIFFE(t.TempDir(), brokertest.TrustDomain, issue.CAOpts{})
		if err != nil {
			t.Fatal(err)
		}
		forged, err := other.IssueX509SVID(node.ID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			ctx  context.Context
			code codes.Code
			msg  string
		}{
			{"no peer", context.Background(), codes.PermissionDenied, "node authentication: a node X.509-SVID client certificate is required"},
			{"no client certificate", asPeer(nil), codes.PermissionDenied, "node authentication: a node X.509-SVID client certificate is required"},
			{"a workload SVID", asPeer(&x509svid.SVID{ID: webID, Certificates: []*x509.Certificate{webLeaf}}), codes.PermissionDenied,
				"node authentication: the client certificate is not a current node X.509-SVID; attest again"},
			{"the node's ID from another authority", asPeer(&x509svid.SVID{ID: node.ID, Certificates: forged.Chain}), codes.PermissionDenied,
				"node authentication: the client certificate is not an X.509-SVID of trust domain example.org"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := f.Server.IssueWorkloadX509SVIDs(tc.ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
				wantStatus(t, err, tc.code, tc.msg)
				_, err = f.Server.IssueWorkloadJWTSVID(tc.ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: webID.String(), Audience: []string{"a"}})
				wantStatus(t, err, tc.code, tc.msg)
			})
		}
	})
}

func TestWorkloadRPCsWithoutSPIFFE(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	_, err := f.Server.GetBundle(context.Background(), &pb.GetBundleRequest{})
	wantStatus(t, err, codes.FailedPrecondition, "spiffe: no trust domain is configured")
	_, err = f.Server.IssueWorkloadX509SVIDs(asPeer(nil), &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
	wantStatus(t, err, codes.FailedPrecondition, "spiffe: no trust domain is configured")
	_, err = f.Server.IssueWorkloadJWTSVID(asPeer(nil), &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: webID.String(), Audience: []string{"a"}})
	wantStatus(t, err, codes.FailedPrecondition, "spiffe: no trust domain is configured")
}

// TestDenyList checks which refusals put a node on the deny list, that a
// deny-listed node gets no workload SVID, and that attesting again lifts it.
func TestDenyList(t *testing.T) {
	f := newFixture(t, brokertest.Opts{SPIFFE: true})
	ctx := context.Background()
	node, _ := f.OpenNodeSVID(t, f.attestOK(t), "node-svid")
	issueWeb := func(svid *x509svid.SVID) error {
		_, err := f.Server.IssueWorkloadX509SVIDs(asPeer(svid), &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
		return err
	}
	denied := func() bool {
		_, err := f.Store.GetDenial(ctx, f.EKHash)
		if err != nil && !strings.Contains(err.Error(), store.ErrNotFound.Error()) {
			t.Fatal(err)
		}
		return err == nil
	}

	// Anyone can ask a challenge for the node's EK and answer it badly: a
	// quote without the activated secret says nothing about the node.
	ch, _ := f.Challenge(t)
	resp, err := f.Server.Attest(ctx, f.AttestRequest(t, ch, make([]byte, 32)))
	f.wantRefused(t, resp, err, codes.PermissionDenied, "quote_nonce:", "quote_nonce")
	if denied() || f.Receipts(t)[0].DenyListed {
		t.Fatal("a quote without the activated secret deny-listed the node")
	}
	if err := issueWeb(node); err != nil {
		t.Fatalf("after a refusal that does not deny-list: %v", err)
	}

	// The node's TPM answered, but the node reported PCR values its quote
	// does not cover: deny-listed, node record (and SVID) as they were.
	ch, secret := f.Challenge(t)
	req := f.AttestRequest(t, ch, secret)
	for idx := range req.GetQuotes()[0].GetPcrs().GetValues() {
		req.GetQuotes()[0].GetPcrs().GetValues()[idx][0] ^= 1
		break
	}
	resp, err = f.Server.Attest(ctx, req)
	f.wantRefused(t, resp, err, codes.PermissionDenied, "pcr_digest:", "pcr_digest")
	if !denied() || !f.Receipts(t)[0].DenyListed {
		t.Fatal("a refusal after the TPM answered did not deny-list the node")
	}
	wantStatus(t, issueWeb(node), codes.PermissionDenied, "node authentication: the node is on the deny list; attest again")
	_, err = f.Server.IssueWorkloadJWTSVID(asPeer(node), &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: webID.String(), Audience: []string{"a"}})
	wantStatus(t, err, codes.PermissionDenied, "node authentication: the node is on the deny list; attest again")

	// Attesting again lifts it; the previous node SVID no longer counts.
	node2, _ := f.OpenNodeSVID(t, f.attestOK(t), "node-svid")
	if denied() {
		t.Fatal("an allowed attestation left the node on the deny list")
	}
	if err := issueWeb(node2); err != nil {
		t.Fatalf("after attesting again: %v", err)
	}
	wantStatus(t, issueWeb(node), codes.PermissionDenied, "node authentication: the client certificate is not a current node X.509-SVID; attest again")

	// The boot changes and policy refuses the node: deny-listed, and its
	// record no longer holds an SVID or entries.
	brokertest.Extend(t, f.RW, 7, "unknown bootloader")
	ch, secret = f.Challenge(t)
	resp, err = f.Server.Attest(ctx, f.AttestRequest(t, ch, secret))
	f.wantRefused(t, resp, err, codes.PermissionDenied, "policy: no policy allows this node", "policy")
	if !denied() {
		t.Fatal("a policy refusal did not deny-list the node")
	}
	wantStatus(t, issueWeb(node2), codes.PermissionDenied, "node authentication:")
	if n, err := f.Store.GetNode(ctx, f.EKHash); err != nil || len(n.SVIDs)+len(n.WorkloadEntries) != 0 {
		t.Errorf("node record after a policy refusal = %+v, %v; want no SVIDs or entries", n, err)
	}
}

func TestJWTSVID(t *testing.T) {
	f := newFixture(t, brokertest.Opts{SPIFFE: true})
	node, _ := f.OpenNodeSVID(t, f.attestOK(t), "node-svid")
	for _, tt := range []struct {
		id  spiffeid.ID
		ttl time.Duration
	}{{webID, time.Hour}, {dbID, 10 * time.Minute}} {
		resp, err := f.Server.IssueWorkloadJWTSVID(asPeer(node), &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: tt.id.String(), Audience: []string{"svc-a", "svc-b"}})
		if err != nil {
			t.Fatalf("IssueWorkloadJWTSVID(%s): %v", tt.id, err)
		}
		svid, err := jwtsvid.ParseAndValidate(resp.GetToken(), f.SPIFFE.Bundle(), []string{"svc-b"})
		if err != nil {
			t.Fatalf("jwtsvid.ParseAndValidate: %v", err)
		}
		if svid.ID != tt.id || !svid.Expiry.Equal(time.Unix(resp.GetExpiresUnix(), 0)) {
			t.Errorf("JWT-SVID for %s, expiring %s (response %d); want %s", svid.ID, svid.Expiry, resp.GetExpiresUnix(), tt.id)
		}
		if d := time.Until(svid.Expiry); d > tt.ttl || d < tt.ttl-time.Minute {
			t.Errorf("JWT-SVID for %s valid for %s, want %s", tt.id, d, tt.ttl)
		}
		if _, err := jwtsvid.ParseAndValidate(resp.GetToken(), f.SPIFFE.Bundle(), []string{"svc-c"}); err == nil {
			t.Errorf("JWT-SVID validated for an audience it was not issued for")
		}
	}
}

func TestGetBundle(t *testing.T) {
	f := newFixture(t, brokertest.Opts{SPIFFE: true})
	resp, err := f.Server.GetBundle(context.Background(), &pb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(brokertest.TrustDomain)
	if resp.GetTrustDomain() != td.Name() {
		t.Errorf("trust_domain = %q, want %q", resp.GetTrustDomain(), td.Name())
	}
	b, err := spiffebundle.Parse(td, resp.GetSpiffeBundle())
	if err != nil {
		t.Fatal(err)
	}
	if !b.Equal(f.SPIFFE.Bundle()) || len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Errorf("bundle = %d X.509 and %d JWT authorities, not the authority's", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
}
