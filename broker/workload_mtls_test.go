package broker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// startSPIFFEBroker starts a broker with a spiffe block whose policy is the
// Env's, and returns it with a client that presents no certificate.
func startSPIFFEBroker(t *testing.T, env *brokertest.Env) (*broker.Running, pb.BrokerClient) {
	t.Helper()
	r := brokertest.Start(t, brokertest.StartOpts{Policy: env.PolicySource, EKHashes: []string{env.EKHash}, TrustDomain: "example.org"})
	if r.SPIFFE == nil || r.SPIFFE.TrustDomain().Name() != "example.org" {
		t.Fatalf("Start did not load the SPIFFE authority: %v", r.SPIFFE)
	}
	if _, err := os.Stat(filepath.Join(r.DataDir(), broker.SPIFFEDir, "jwt-key.pem")); err != nil {
		t.Errorf("SPIFFE authority not in data_dir/spiffe: %v", err)
	}
	conn, err := agent.Dial(r.Addr(), r.CA.BundlePEM(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return r, pb.NewBrokerClient(conn)
}

// attestOver runs Challenge and Attest over client with the Env's node.
func attestOver(t *testing.T, env *brokertest.Env, client pb.BrokerClient) (*pb.AttestResponse, error) {
	t.Helper()
	ctx := context.Background()
	req, err := env.Node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := client.Challenge(ctx, req)
	if err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	secret, err := env.Node.Activate(ch)
	if err != nil {
		t.Fatal(err)
	}
	return client.Attest(ctx, env.AttestRequest(t, ch, secret))
}

// dialAs connects to r presenting cert as the client certificate, whatever
// CAs the server asks for (crypto/tls would otherwise send no certificate
// when cert's issuer is not among them).
func dialAs(t *testing.T, r *broker.Running, cert tls.Certificate) pb.BrokerClient {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(r.CA.BundlePEM()) {
		t.Fatal("no broker CA")
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
	conn, err := grpc.NewClient(r.Addr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewBrokerClient(conn)
}

func svidCertificate(svid *x509svid.SVID) tls.Certificate {
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// TestWorkloadSVIDsOverMutualTLS runs the SPIFFE flow against a started
// broker over loopback: attest without a client certificate, then get
// workload SVIDs with the node X.509-SVID as the client certificate.
func TestWorkloadSVIDsOverMutualTLS(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{SPIFFE: true})
	r, plain := startSPIFFEBroker(t, env)
	ctx := context.Background()

	resp, err := attestOver(t, env, plain)
	if err != nil {
		t.Fatalf("Attest without a client certificate: %v", err)
	}
	node, _ := env.OpenNodeSVID(t, resp, "node-svid")
	if len(resp.GetWorkloadEntries()) != 2 {
		t.Fatalf("got %d workload entries, want 2", len(resp.GetWorkloadEntries()))
	}
	mtls := dialAs(t, r, svidCertificate(node))

	// The bundle, as any workload would fetch it.
	br, err := plain.GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil {
		t.Fatalf("GetBundle: %v", err)
	}
	td := spiffeid.RequireTrustDomainFromString(br.GetTrustDomain())
	bundle, err := spiffebundle.Parse(td, br.GetSpiffeBundle())
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v", err)
	}
	if !bundle.Equal(r.SPIFFE.Bundle()) {
		t.Error("GetBundle is not the authority's bundle")
	}

	t.Run("csr for an entry's id is signed", func(t *testing.T) {
		key, der := newCSR(t, webID)
		got, err := mtls.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{{SpiffeId: webID.String(), Csr: der}}})
		if err != nil {
			t.Fatalf("IssueWorkloadX509SVIDs: %v", err)
		}
		id, chains, err := x509svid.ParseAndVerify(got.GetSvids()[0].GetCertChain(), bundle)
		if err != nil {
			t.Fatalf("the workload SVID does not verify against the bundle: %v", err)
		}
		if id != webID || !key.PublicKey.Equal(chains[0][0].PublicKey) {
			t.Errorf("workload SVID for %s with another key; want %s with the CSR's key", id, webID)
		}
		if chains[0][0].NotAfter.After(node.Certificates[0].NotAfter) {
			t.Error("workload SVID outlives the node SVID")
		}
	})
	t.Run("forged csr for an id outside the entries", func(t *testing.T) {
		_, err := mtls.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, adminID)}})
		wantStatus(t, err, codes.PermissionDenied, "spiffe id not in this node's workload entries")
	})
	t.Run("csr naming another id than requested", func(t *testing.T) {
		_, der := newCSR(t, adminID)
		_, err := mtls.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{{SpiffeId: webID.String(), Csr: der}}})
		wantStatus(t, err, codes.InvalidArgument, "csr must name exactly spiffe://example.org/web and nothing else")
	})
	t.Run("no client certificate", func(t *testing.T) {
		_, err := plain.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
		wantStatus(t, err, codes.PermissionDenied, "node authentication: a node X.509-SVID client certificate is required")
		_, err = plain.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: webID.String(), Audience: []string{"a"}})
		wantStatus(t, err, codes.PermissionDenied, "node authentication: a node X.509-SVID client certificate is required")
	})
	t.Run("client certificate from another CA", func(t *testing.T) {
		// The node's TLS certificate comes from the broker CA, which does
		// not authenticate clients: the handshake fails.
		var tlsCred pb.TLSCredential
		for _, c := range resp.GetCredentials() {
			if c.GetType() == pb.CredentialType_TLS_CERTIFICATE {
				payload, err := env.Node.Open(c)
				if err != nil {
					t.Fatal(err)
				}
				if err := proto.Unmarshal(payload, &tlsCred); err != nil {
					t.Fatal(err)
				}
			}
		}
		cert, err := tls.X509KeyPair(tlsCred.GetCertificatePem(), tlsCred.GetKeyPem())
		if err != nil {
			t.Fatal(err)
		}
		_, err = dialAs(t, r, cert).GetBundle(ctx, &pb.GetBundleRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("GetBundle with a client certificate from the broker CA = %v; want the handshake refused (Unavailable)", err)
		}
	})
	t.Run("jwt-svid", func(t *testing.T) {
		got, err := mtls.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: dbID.String(), Audience: []string{"spiffe://example.org/api"}})
		if err != nil {
			t.Fatalf("IssueWorkloadJWTSVID: %v", err)
		}
		svid, err := jwtsvid.ParseAndValidate(got.GetToken(), bundle, []string{"spiffe://example.org/api"})
		if err != nil {
			t.Fatalf("jwtsvid.ParseAndValidate: %v", err)
		}
		if svid.ID != dbID || time.Until(svid.Expiry) > 10*time.Minute {
			t.Errorf("JWT-SVID for %s until %s; want %s for at most its entry's 10m", svid.ID, svid.Expiry, dbID)
		}
	})

	// Policy refuses the node once its boot changed: it is deny-listed and
	// its node SVID no longer gets workload SVIDs.
	brokertest.Extend(t, env.RW, 7, "unknown bootloader")
	_, err = attestOver(t, env, plain)
	wantStatus(t, err, codes.PermissionDenied, "policy: no policy allows this node")
	if d, err := r.Store().GetDenial(ctx, env.EKHash); err != nil || d.Check != "policy" {
		t.Fatalf("GetDenial = %+v, %v; want denied by policy", d, err)
	}
	_, err = mtls.IssueWorkloadX509SVIDs(ctx, &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
	wantStatus(t, err, codes.PermissionDenied, "node authentication:")
	_, err = mtls.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: webID.String(), Audience: []string{"a"}})
	wantStatus(t, err, codes.PermissionDenied, "node authentication:")
}
