package broker_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/metricsendpoint/metricstest"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// metricsEnv is a node and a real broker serving it over gRPC, with
// metrics_listen on a loopback port the kernel chooses.
type metricsEnv struct {
	*brokertest.Env
	r      *broker.Running
	client pb.BrokerClient
	dir    string
}

func startMetricsBroker(t *testing.T) *metricsEnv {
	t.Helper()
	e := brokertest.New(t, brokertest.Opts{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.hcl"), []byte(e.PolicySource), 0o600); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n"+
		"policies = [\"p.hcl\"]\npolicy_poll_interval = \"0\"\nek_allow = [%q]\n"+
		"limits {\n  challenge_per_address = \"3/m\"\n  outstanding_challenges_per_ek = 0\n}\n", e.EKHash)
	cfg, err := broker.ParseConfig([]byte(src), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := broker.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	conn, err := agent.Dial(r.Addr(), r.CA.BundlePEM(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &metricsEnv{Env: e, r: r, client: pb.NewBrokerClient(conn), dir: dir}
}

// attestGRPC runs Challenge, activation and Attest over gRPC and returns
// the request it sent, to be replayed.
func (m *metricsEnv) attestGRPC(t *testing.T) (*pb.AttestRequest, error) {
	t.Helper()
	ctx := context.Background()
	req, err := m.Node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := m.client.Challenge(ctx, req)
	if err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	secret, err := m.Node.Activate(ch)
	if err != nil {
		t.Fatal(err)
	}
	areq := m.AttestRequest(t, ch, secret)
	_, err = m.client.Attest(ctx, areq)
	return areq, err
}

// TestMetricsCountAKnownSequence drives a broker over gRPC through two
// released attestations, a malformed request, one refused by policy, a
// replayed answer and a challenge over the address limit, reloads its
// policies unchanged and then broken, and checks every count on /metrics.
func TestMetricsCountAKnownSequence(t *testing.T) {
	m := startMetricsBroker(t)
	ctx := context.Background()
	first, err := m.attestGRPC(t)
	if err != nil {
		t.Fatalf("first attestation: %v", err)
	}
	if _, err := m.attestGRPC(t); err != nil {
		t.Fatalf("second attestation: %v", err)
	}
	if _, err := m.client.Attest(ctx, &pb.AttestRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty Attest = %v; want InvalidArgument", err)
	}
	brokertest.Extend(t, m.RW, 7, "secure boot off")
	if _, err := m.attestGRPC(t); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "policy") {
		t.Fatalf("attestation after PCR 7 changed = %v; want PermissionDenied by policy", err)
	}
	if _, err := m.client.Attest(ctx, first); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "challenge") {
		t.Fatalf("replayed answer = %v; want PermissionDenied (challenge)", err)
	}
	req, err := m.Node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.client.Challenge(ctx, req); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("fourth challenge in a minute = %v; want ResourceExhausted", err)
	}
	if err := m.r.ReloadPolicies(); err != nil {
		t.Fatalf("reload of the same policies: %v", err)
	}
	if err := os.WriteFile(filepath.Join(m.dir, "p.hcl"), []byte("policy {"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.r.ReloadPolicies(); err == nil {
		t.Fatal("a broken policy file was installed")
	}

	got, body := metricstest.Scrape(t, m.r.MetricsAddr())
	const svc = `service="keybroker.v1.Broker"`
	want := map[string]float64{
		`keybroker_attestations_total{check="",outcome="released"}`:                                    2,
		`keybroker_attestations_total{check="policy",outcome="refused"}`:                               1,
		`keybroker_attestations_total{check="challenge",outcome="refused"}`:                            1,
		`keybroker_attestations_total{check="input",outcome="refused"}`:                                1,
		`keybroker_challenges_issued_total`:                                                            3,
		`keybroker_admission_refusals_total{limit="address",op="challenge"}`:                           1,
		`keybroker_policy_reloads_total{outcome="unchanged"}`:                                          1,
		`keybroker_policy_reloads_total{outcome="refused"}`:                                            1,
		`keybroker_attest_stage_duration_seconds_count{stage="open"}`:                                  4,
		`keybroker_attest_stage_duration_seconds_count{stage="verify"}`:                                3,
		`keybroker_attest_stage_duration_seconds_count{stage="policy"}`:                                3,
		`keybroker_attest_stage_duration_seconds_count{stage="release"}`:                               2,
		`keybroker_attest_stage_duration_seconds_count{stage="issue"}`:                                 2,
		`keybroker_attest_stage_duration_seconds_count{stage="seal"}`:                                  2,
		`keybroker_store_commit_duration_seconds_count{outcome="ok"}`:                                  3,
		`keybroker_attest_stage_duration_seconds_count{stage="commit"}`:                                3,
		`keybroker_grpc_server_handled_total{code="OK",method="Challenge",` + svc + `}`:                3,
		`keybroker_grpc_server_handled_total{code="ResourceExhausted",method="Challenge",` + svc + `}`: 1,
		`keybroker_grpc_server_handled_total{code="OK",method="Attest",` + svc + `}`:                   2,
		`keybroker_grpc_server_handled_total{code="PermissionDenied",method="Attest",` + svc + `}`:     2,
		`keybroker_grpc_server_handled_total{code="InvalidArgument",method="Attest",` + svc + `}`:      1,
		`keybroker_grpc_server_handling_seconds_count{method="Attest",` + svc + `}`:                    5,
		`keybroker_grpc_server_handling_seconds_count{method="Challenge",` + svc + `}`:                 4,
	}
	if !brokertest.EtcdStore() {
		// Sequential decisions: each its own bolt transaction.
		want[`keybroker_store_transaction_decisions_count{outcome="ok"}`] = 3
		want[`keybroker_store_transaction_decisions_sum{outcome="ok"}`] = 3
	}
	for series, v := range want {
		if got[series] != v {
			t.Errorf("%s = %v; want %v", series, got[series], v)
		}
	}
	for series := range got {
		if _, ok := want[series]; !ok && strings.HasPrefix(series, "keybroker_attestations_total") {
			t.Errorf("unexpected series %s = %v", series, got[series])
		}
	}
	if got["process_cpu_seconds_total"] <= 0 {
		t.Error("process_cpu_seconds_total is missing: the process collector is not registered")
	}
	// Labels are bounded: no EK hash, receipt or challenge ID anywhere.
	if strings.Contains(strings.ToLower(body), m.EKHash) {
		t.Error("/metrics holds the node's EK hash")
	}
	recs, err := m.r.Store().ListReceipts(ctx, store.ListOpts{Limit: 100})
	if err != nil || len(recs) != 3 {
		t.Fatalf("receipts = %d, %v; want 3", len(recs), err)
	}
	for _, rec := range recs {
		if strings.Contains(body, rec.ID) || strings.Contains(body, rec.ChallengeID) {
			t.Errorf("/metrics holds receipt %s or its challenge ID", rec.ID)
		}
	}

	// Every challenge issued was answered (a replay changes nothing): none
	// is outstanding. One issued in process and not answered is, until it
	// is answered.
	if v, ok := got[`keybroker_challenges_outstanding`]; !ok || v != 0 {
		t.Errorf("keybroker_challenges_outstanding = %v (exposed %v); want 0", v, ok)
	}
	ch, err := m.r.Server.Challenge(ctx, req)
	if err != nil {
		t.Fatalf("in-process Challenge: %v", err)
	}
	if got, _ := metricstest.Scrape(t, m.r.MetricsAddr()); got[`keybroker_challenges_outstanding`] != 1 || got[`keybroker_challenges_issued_total`] != 4 {
		t.Errorf("after an unanswered challenge: outstanding %v, issued %v; want 1, 4",
			got[`keybroker_challenges_outstanding`], got[`keybroker_challenges_issued_total`])
	}
	secret, err := m.Node.Activate(ch)
	if err != nil {
		t.Fatal(err)
	}
	areq := m.AttestRequest(t, ch, secret)
	for range 2 { // refused by policy (PCR 7 changed), then replayed
		if _, err := m.r.Server.Attest(ctx, areq); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("in-process Attest = %v; want PermissionDenied", err)
		}
	}
	if got, _ := metricstest.Scrape(t, m.r.MetricsAddr()); got[`keybroker_challenges_outstanding`] != 0 {
		t.Errorf("after its answer: outstanding %v; want 0", got[`keybroker_challenges_outstanding`])
	}
}

// TestMetricsListenOnlyServesMetrics: the metrics listener answers GET
// /metrics and nothing else (no profiles), and Stop closes it.
func TestMetricsListenOnlyServesMetrics(t *testing.T) {
	m := startMetricsBroker(t)
	addr := m.r.MetricsAddr()
	for _, path := range []string{"/debug/pprof/", "/", "/v1/receipts"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the metrics listener = %s; want 404", path, resp.Status)
		}
	}
	resp, err := http.Post("http://"+addr+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics = %s; want 405", resp.Status)
	}
	m.r.Stop()
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("the metrics listener %s still accepts connections after Stop", addr)
	}
}

// TestStartWithoutMetricsListen: metrics are off by default.
func TestStartWithoutMetricsListen(t *testing.T) {
	e := brokertest.New(t, brokertest.Opts{})
	r := brokertest.Start(t, brokertest.StartOpts{Policy: e.PolicySource, EKHashes: []string{e.EKHash}})
	if addr := r.MetricsAddr(); addr != "" {
		t.Errorf("MetricsAddr = %q without metrics_listen; want none", addr)
	}
}

// TestMetricsListenConfigErrors: a malformed metrics_listen is reported at
// its value, file:line:column.
func TestMetricsListenConfigErrors(t *testing.T) {
	const head = "data_dir = \"d\"\npolicies = [\"p\"]\nek_allow = [\"" + "%s" + "\"]\n"
	base := fmt.Sprintf(head, strings.Repeat("ab", 32))
	for _, tc := range []struct{ line, want string }{
		{`metrics_listen = ""`, `b.hcl:4:18: metrics_listen cannot be empty; leave it out to serve no metrics`},
		{`metrics_listen = "9464"`, `b.hcl:4:18: metrics_listen "9464" is not a host:port address such as "127.0.0.1:9464"`},
		{`metrics_listen = "127.0.0.1:metrics"`, `b.hcl:4:18: metrics_listen "127.0.0.1:metrics": port "metrics" is not a number from 0 to 65535`},
		{`metrics_listen = "127.0.0.1:70000"`, `b.hcl:4:18: metrics_listen "127.0.0.1:70000": port "70000" is not a number from 0 to 65535`},
		{`metrics_listen = "127.0.0.1:8443"`, `b.hcl:4:18: metrics_listen "127.0.0.1:8443" is the listen address; give the metrics their own port`},
		{`metrics_listen = 9464`, `b.hcl:4:18: metrics_listen "9464" is not a host:port address such as "127.0.0.1:9464"`},
		{`metrics_listen = ["127.0.0.1:9464"]`, `b.hcl:4:18: metrics_listen: unsuitable value type`},
	} {
		_, err := broker.ParseConfig([]byte(base+tc.line+"\n"), "b.hcl")
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: error = %v\nwant %s", tc.line, err, tc.want)
		}
	}
	cfg, err := broker.ParseConfig([]byte(base+`metrics_listen = "[::1]:9464"`+"\n"), "b.hcl")
	if err != nil || cfg.MetricsListen != "[::1]:9464" {
		t.Fatalf("metrics_listen [::1]:9464 = %+v, %v", cfg, err)
	}
	if cfg, err := broker.ParseConfig([]byte(base), "b.hcl"); err != nil || cfg.MetricsListen != "" {
		t.Fatalf("without metrics_listen: MetricsListen = %q, %v; want none", cfg.MetricsListen, err)
	}
}

// TestAdminServesPprof: the admin socket, and only it, serves the Go
// profiles.
func TestAdminServesPprof(t *testing.T) {
	m := startMetricsBroker(t)
	sock := filepath.Join(m.r.DataDir(), broker.AdminSocket)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for path, want := range map[string]string{
		"/debug/pprof/":                  "goroutine",
		"/debug/pprof/goroutine?debug=1": "goroutine profile:",
		"/debug/pprof/cmdline":           os.Args[0],
		"/debug/pprof/heap?debug=1":      "heap profile:",
		"/debug/pprof/profile?seconds=1": "",
	} {
		resp, err := client.Get("http://broker" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) || len(body) == 0 {
			t.Errorf("GET %s on the admin socket = %s, %d bytes; want 200 with %q", path, resp.Status, len(body), want)
		}
	}
}
