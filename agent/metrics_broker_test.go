package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/metricsendpoint/metricstest"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/metrics"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/internal/brokertest"
)

// TestMetricsWithTheBroker runs the agent against a started broker with
// metrics on, through a known sequence: a first attestation, a renewal
// the broker releases, one it refuses (the boot state changed), and three
// Workload API calls; then it scrapes /metrics over HTTP and checks the
// counts, and that no EK hash, SPIFFE ID, path or address is in a label.
func TestMetricsWithTheBroker(t *testing.T) {
	uid, _, _ := self(t)
	env := brokertest.New(t, brokertest.Opts{SPIFFE: true, Workloads: fmt.Sprintf(`  workload "agent-web" {
    spiffe_id = %q
    selectors = [%q]
    ttl       = "1h"
  }
`, webID, uid)})
	// A short node SVID, so the renewal loop re-attests within seconds.
	const nodeTTL = 4 * time.Second
	const nodeSVIDTTL = "    ttl       = \"2h\"\n    spiffe_id = \"spiffe://example.org/node/"
	if strings.Count(env.PolicySource, nodeSVIDTTL) != 1 {
		t.Fatalf("the node SVID release of the policy is not where the test expects it:\n%s", env.PolicySource)
	}
	policy := strings.Replace(env.PolicySource, nodeSVIDTTL, strings.Replace(nodeSVIDTTL, "2h", nodeTTL.String(), 1), 1)
	r := brokertest.Start(t, brokertest.StartOpts{Policy: policy, EKHashes: []string{env.EKHash}, TrustDomain: brokertest.TrustDomain})

	m := metrics.New()
	ep, err := m.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })

	client := brokerClient(t, r)
	ctx := testContext(t)

	// 1. The first attestation: released.
	att, err := agent.Attest(ctx, client, env.Node, agent.AttestOpts{Metrics: m})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	log, _ := testLogger(t)
	mgr, err := agent.NewSVIDManager(agent.BrokerTarget{Addr: r.Addr(), CAPEM: r.CA.BundlePEM()}, agent.WithSVIDLogger(log),
		agent.WithRetry(100*time.Millisecond, 400*time.Millisecond), agent.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Update(ctx, att); err != nil {
		t.Fatalf("Update: %v", err)
	}

	// 2. Three Workload API calls: FetchJWTSVID and ValidateJWTSVID,
	// answered, and a FetchX509SVID stream without the security header,
	// refused.
	socket := filepath.Join(openDir(t), "agent.sock")
	lis, err := workload.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- workload.NewServer(mgr, workload.WithLogger(log),
			workload.WithInterceptors(m.UnaryServerInterceptor(), m.StreamServerInterceptor())).Serve(sctx, lis)
	}()
	addr := workloadapi.WithAddr("unix://" + socket)
	jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api", Subject: webID}, addr)
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, jwt.Marshal(), "api", addr); err != nil {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
	raw, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	stream, err := workloadpb.NewSpiffeWorkloadAPIClient(raw).FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	wantStatus(t, err, codes.InvalidArgument, "security header missing from request")

	// 3. The renewal loop: the first re-attestation is released; then
	// the boot state changes and the second is refused; the third waits
	// until the test ends, so that the counts hold still.
	var mu sync.Mutex
	calls := 0
	renewed := make(chan struct{})
	parked := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- mgr.Run(sctx, func(ctx context.Context) (*agent.Attestation, error) {
			mu.Lock()
			calls++
			n := calls
			mu.Unlock()
			switch n {
			case 1:
				defer close(renewed)
				return agent.Attest(ctx, client, env.Node, agent.AttestOpts{Metrics: m})
			case 2:
				return agent.Attest(ctx, client, env.Node, agent.AttestOpts{Metrics: m})
			case 3:
				close(parked)
			}
			<-ctx.Done()
			return nil, ctx.Err()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-renewed:
	case <-ctx.Done():
		t.Fatal("no re-attestation within the test's time")
	}
	brokertest.Extend(t, env.RW, 7, "unknown bootloader")
	select {
	case <-parked:
	case <-ctx.Done():
		t.Fatal("no second re-attestation within the test's time")
	}

	samples, body := metricstest.Scrape(t, ep.Addr())
	tests := []struct {
		series string
		want   float64
	}{
		{`keybroker_agent_attestations_total{outcome="released"}`, 2},
		{`keybroker_agent_attestations_total{outcome="refused"}`, 1},
		{`keybroker_agent_attestations_total{outcome="error"}`, 0},
		{`keybroker_agent_attestation_duration_seconds_count{outcome="released"}`, 2},
		{`keybroker_agent_attestation_duration_seconds_count{outcome="refused"}`, 1},
		{`keybroker_agent_renewals_total{outcome="released"}`, 1},
		{`keybroker_agent_renewals_total{outcome="refused"}`, 1},
		{`keybroker_agent_renewals_total{outcome="error"}`, 0},
		{`keybroker_agent_workload_api_calls_total{code="OK",method="FetchJWTSVID"}`, 1},
		{`keybroker_agent_workload_api_calls_total{code="OK",method="ValidateJWTSVID"}`, 1},
		{`keybroker_agent_workload_api_calls_total{code="InvalidArgument",method="FetchX509SVID"}`, 1},
		{`keybroker_agent_workload_api_handling_seconds_count{method="FetchJWTSVID"}`, 1},
		{`keybroker_agent_workload_api_handling_seconds_count{method="ValidateJWTSVID"}`, 1},
		{`keybroker_agent_workload_api_streams{method="FetchX509SVID"}`, 0},
	}
	for _, tc := range tests {
		if got := samples[tc.series]; got != tc.want {
			t.Errorf("%s = %v; want %v", tc.series, got, tc.want)
		}
	}
	// The first attestation and the released renewal each asked for the
	// workload SVIDs.
	if got := samples[`keybroker_agent_workload_svid_rotations_total{outcome="ok"}`]; got < 2 {
		t.Errorf("workload SVID rotations ok = %v; want at least 2", got)
	}
	remaining, ok := samples["keybroker_agent_node_svid_remaining_seconds"]
	if !ok || remaining > nodeTTL.Seconds() {
		t.Errorf("node SVID remaining seconds = %v (present %v); want at most the node SVID's %v", remaining, ok, nodeTTL)
	}
	for _, secret := range []string{env.EKHash, "spiffe://", att.NodeSVID.SVID.ID.Path(), socket, r.Addr(), brokertest.TrustDomain} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics holds %q", secret)
		}
	}
}
