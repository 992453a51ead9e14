package agent_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// withSVID adds to a real broker's Attest response what an x509_svid
// release adds: an X509_SVID credential sealed to the node's EK, and
// workload entries.
type withSVID struct {
	direct
	ek      crypto.PublicKey
	spiffe  *issue.SPIFFE
	nodeID  spiffeid.ID
	entries []*pb.WorkloadEntry
	modify  func(*pb.X509SVIDCredential)
	none    bool // release no X509_SVID
}

func (w withSVID) Attest(ctx context.Context, in *pb.AttestRequest, _ ...grpc.CallOption) (*pb.AttestResponse, error) {
	resp, err := w.direct.Attest(ctx, in)
	if err != nil || w.none {
		return resp, err
	}
	s, err := w.spiffe.IssueX509SVID(w.nodeID, time.Hour)
	if err != nil {
		return nil, err
	}
	jwks, err := w.spiffe.BundleJWKS()
	if err != nil {
		return nil, err
	}
	cred := &pb.X509SVIDCredential{SpiffeId: w.nodeID.String(), KeyPem: s.KeyPEM, CertificatesPem: issue.CertificatesPEM(s.Chain), SpiffeBundle: jwks}
	if w.modify != nil {
		w.modify(cred)
	}
	payload, err := proto.Marshal(cred)
	if err != nil {
		return nil, err
	}
	env, err := sealing.Wrap(w.ek, payload, sealing.WrapOpts{KeyID: "node-svid"})
	if err != nil {
		return nil, err
	}
	blob, err := sealing.BlobToProto(env.Blob)
	if err != nil {
		return nil, err
	}
	resp.Credentials = append(resp.Credentials, &pb.Credential{
		Name: "node-svid", Type: pb.CredentialType_X509_SVID, Mode: pb.ReleaseMode_TPM_BOUND,
		Blob: blob, Jwe: env.JWE, NotAfterUnix: s.NotAfter.Unix(),
	})
	resp.WorkloadEntries = w.entries
	return resp, nil
}

func TestAttestOpensNodeSVID(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	sp, err := issue.LoadOrCreateSPIFFE(t.TempDir(), trustDomain, issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := issue.LoadOrCreateSPIFFE(t.TempDir(), trustDomain, issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	otherJWKS, err := other.BundleJWKS()
	if err != nil {
		t.Fatal(err)
	}
	nodeID := spiffeid.RequireFromString("spiffe://example.org/keybroker/node/" + env.EKHash[:16])
	entries := []*pb.WorkloadEntry{
		{Name: "web", SpiffeId: webID.String(), TtlSeconds: 600, Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "path:/usr/bin/web"}}},
		{Name: "db", SpiffeId: dbID.String(), TtlSeconds: 60, Selectors: []*pb.Selector{{Type: "unix", Value: "gid:50"}}},
	}
	client := func(f func(*withSVID)) pb.BrokerClient {
		w := withSVID{direct: direct{srv: env.Server}, ek: env.Node.EK().PublicKey(), spiffe: sp, nodeID: nodeID, entries: entries}
		if f != nil {
			f(&w)
		}
		return w
	}
	ctx := context.Background()

	t.Run("Attest", func(t *testing.T) {
		var steps []agent.Step
		att, err := agent.Attest(ctx, client(nil), env.Node, agent.AttestOpts{Progress: func(s agent.Step, _ time.Duration, _ string) { steps = append(steps, s) }})
		if err != nil {
			t.Fatal(err)
		}
		if att.NodeSVID.SVID.ID != nodeID || att.NodeSVID.Mode != pb.ReleaseMode_TPM_BOUND || att.ReceiptID == "" {
			t.Errorf("node SVID %s (%s), receipt %q", att.NodeSVID.SVID.ID, att.NodeSVID.Mode, att.ReceiptID)
		}
		if !att.NodeSVID.Bundle.Equal(sp.Bundle()) {
			t.Error("the node SVID's bundle is not the authority's")
		}
		if len(att.Entries) != 2 || att.Entries[0].ID != webID || att.Entries[0].TTL != 10*time.Minute ||
			len(att.Entries[0].Selectors) != 2 || att.Entries[0].Selectors[1].String() != "unix:path:/usr/bin/web" || att.Entries[1].ID != dbID {
			t.Errorf("entries %+v", att.Entries)
		}
		if want := []agent.Step{agent.StepChallenge, agent.StepActivate, agent.StepQuote, agent.StepAttest, agent.StepOpen}; len(steps) != len(want) || steps[4] != agent.StepOpen {
			t.Errorf("steps %v, want %v", steps, want)
		}
	})
	t.Run("Bootstrap returns them too", func(t *testing.T) {
		res, err := agent.Bootstrap(ctx, client(nil), env.Node, agent.BootstrapOpts{OutDir: filepath.Join(t.TempDir(), "tls")})
		if err != nil {
			t.Fatal(err)
		}
		if res.NodeSVID == nil || res.NodeSVID.SVID.ID != nodeID || len(res.Entries) != 2 || res.Serial == "" {
			t.Errorf("result %+v", res)
		}
		res, err = agent.Bootstrap(ctx, client(func(w *withSVID) { w.none, w.entries = true, nil }), env.Node, agent.BootstrapOpts{OutDir: t.TempDir()})
		if err != nil || res.NodeSVID != nil || res.Entries != nil {
			t.Errorf("Bootstrap without an X.509-SVID = %+v, %v", res, err)
		}
	})

	tests := []struct {
		name    string
		change  func(*withSVID)
		wantErr string
	}{
		{name: "no X.509-SVID released", change: func(w *withSVID) { w.none = true },
			wantErr: "open: the broker released no X.509-SVID"},
		{name: "payload names another ID", change: func(w *withSVID) {
			w.modify = func(c *pb.X509SVIDCredential) { c.SpiffeId = "spiffe://example.org/someone-else" }
		}, wantErr: `names ` + nodeID.String() + `, the credential "spiffe://example.org/someone-else"`},
		{name: "bundle of another authority", change: func(w *withSVID) {
			w.modify = func(c *pb.X509SVIDCredential) { c.SpiffeBundle = otherJWKS }
		}, wantErr: "the node X.509-SVID does not verify against its bundle"},
		{name: "key of another SVID", change: func(w *withSVID) {
			w.modify = func(c *pb.X509SVIDCredential) {
				s, _ := sp.IssueX509SVID(nodeID, time.Hour)
				c.KeyPem = s.KeyPEM
			}
		}, wantErr: "unable to parse the node X.509-SVID"},
		{name: "entry with a bad selector", change: func(w *withSVID) {
			w.entries = []*pb.WorkloadEntry{{Name: "web", SpiffeId: webID.String(), Selectors: []*pb.Selector{{Type: "unix", Value: "uid:root"}}}}
		}, wantErr: `workload entry "web": selector "unix:uid:root": uid must be a decimal number`},
		{name: "entry without selectors", change: func(w *withSVID) {
			w.entries = []*pb.WorkloadEntry{{Name: "all", SpiffeId: webID.String()}}
		}, wantErr: `workload entry "all": no selectors`},
		{name: "entry in another trust domain", change: func(w *withSVID) {
			w.entries = []*pb.WorkloadEntry{{Name: "x", SpiffeId: "spiffe://other.org/web", Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1"}}}}
		}, wantErr: `workload entry "x": spiffe://other.org/web is not in trust domain example.org`},
		{name: "entry with an invalid ID", change: func(w *withSVID) {
			w.entries = []*pb.WorkloadEntry{{Name: "x", SpiffeId: "https://example.org/web", Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1"}}}}
		}, wantErr: `workload entry "x": invalid SPIFFE ID "https://example.org/web"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := agent.Attest(ctx, client(tc.change), env.Node, agent.AttestOpts{})
			var se *agent.StepError
			if !errors.As(err, &se) || se.Step != agent.StepOpen || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Attest = %v; want a failure at open containing %q", err, tc.wantErr)
			}
		})
	}
}
