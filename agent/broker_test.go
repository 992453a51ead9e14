package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/keybroker/keybroker/broker"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// TestWithTheBroker runs the agent's SPIFFE side against a started broker
// over loopback: attestation on the simulator releases the node SVID and
// entries, the workload SVIDs come over mutual TLS, go-spiffe gets them
// from the Workload API; a re-attestation replaces the node SVID (the old
// one no longer counts at the broker), and after the boot state changed
// the node gets nothing new.
func TestWithTheBroker(t *testing.T) {
	uid, path, sum := self(t)
	env := brokertest.New(t, brokertest.Opts{SPIFFE: true, Workloads: fmt.Sprintf(`  workload "agent-web" {
    spiffe_id = %q
    selectors = [%q]
    ttl       = "1h"
  }
  workload "agent-db" {
    spiffe_id = %q
    selectors = [%q, %q, %q]
    ttl       = "10m"
  }
`, webID, uid, dbID, uid, path, sum)})
	r := brokertest.Start(t, brokertest.StartOpts{Policy: env.PolicySource, EKHashes: []string{env.EKHash}, TrustDomain: "example.org"})
	client := brokerClient(t, r)
	ctx := testContext(t)

	att, err := agent.Attest(ctx, client, env.Node, agent.AttestOpts{})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if len(att.Entries) != 2 || att.NodeSVID.Mode != pb.ReleaseMode_PCR_SEALED {
		t.Fatalf("attestation: %d entries, node SVID %s", len(att.Entries), att.NodeSVID.Mode)
	}
	log, _ := testLogger(t)
	bundleFile := filepath.Join(t.TempDir(), "bundle.jwks")
	mgr, err := agent.NewSVIDManager(agent.BrokerTarget{Addr: r.Addr(), CAPEM: r.CA.BundlePEM()}, agent.WithSVIDLogger(log), agent.WithBundleFile(bundleFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Update(ctx, att); err != nil {
		t.Fatalf("Update: %v", err)
	}
	// The bundle file holds the broker's bundle.
	written, err := spiffebundle.Load(r.SPIFFE.TrustDomain(), bundleFile)
	if err != nil || !written.Equal(r.SPIFFE.Bundle()) {
		t.Fatalf("bundle file = %v, %v; want the broker's bundle", written, err)
	}
	socket := filepath.Join(openDir(t), "agent.sock")
	lis, err := workload.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- workload.NewServer(mgr, workload.WithLogger(log)).Serve(sctx, lis) }()
	t.Cleanup(func() { cancel(); <-served })
	addr := workloadapi.WithAddr("unix://" + socket)

	svids, err := workloadapi.FetchX509SVIDs(ctx, addr)
	if err != nil {
		t.Fatalf("FetchX509SVIDs: %v", err)
	}
	// In the order of the entries the broker sent.
	if len(svids) != 2 || svids[0].ID != att.Entries[0].ID || svids[1].ID != att.Entries[1].ID {
		t.Fatalf("%d SVIDs, want one per entry in the entries' order (%s, %s)", len(svids), att.Entries[0].ID, att.Entries[1].ID)
	}
	for _, s := range svids {
		if _, _, err := x509svid.Verify(s.Certificates, r.SPIFFE.Bundle()); err != nil {
			t.Errorf("%s does not verify against the broker's bundle: %v", s.ID, err)
		}
		if s.Certificates[0].NotAfter.After(att.NodeSVID.SVID.Certificates[0].NotAfter) {
			t.Errorf("%s outlives the node SVID", s.ID)
		}
	}
	jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api", Subject: dbID}, addr)
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if v, err := workloadapi.ValidateJWTSVID(ctx, jwt.Marshal(), "api", addr); err != nil || v.ID != dbID {
		t.Fatalf("ValidateJWTSVID = %v, %v", v, err)
	}

	// A new attestation replaces the node SVID; the manager uses the new
	// one (the broker refuses the old one now).
	att2, err := agent.Attest(ctx, client, env.Node, agent.AttestOpts{})
	if err != nil {
		t.Fatalf("second Attest: %v", err)
	}
	if err := mgr.Update(ctx, att2); err != nil {
		t.Fatalf("Update with the second attestation: %v", err)
	}
	if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "other", Subject: webID}, addr); err != nil {
		t.Fatalf("FetchJWTSVID after re-attestation: %v", err)
	}

	// The boot changes: the broker refuses and deny-lists the node; the
	// agent gets no new JWT-SVID (the cached ones stay until they expire).
	brokertest.Extend(t, env.RW, 7, "unknown bootloader")
	if _, err := agent.Attest(ctx, client, env.Node, agent.AttestOpts{}); err == nil {
		t.Fatal("Attest succeeded after PCR 7 changed")
	}
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "new-audience", Subject: webID}, addr)
	wantStatus(t, err, codes.Unavailable, "unable to fetch a JWT-SVID")
	if err := mgr.Update(ctx, att2); err == nil {
		t.Error("the broker issued workload SVIDs to a deny-listed node")
	}
}

// brokerClient dials r over TLS with its CA, closed when the test ends.
func brokerClient(t *testing.T, r *broker.Running) pb.BrokerClient {
	t.Helper()
	conn, err := agent.Dial(r.Addr(), r.CA.BundlePEM(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewBrokerClient(conn)
}
