package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// value returns the value of the counter or the count of the histogram
// name{labels} in b's registry, and how many series name has.
func value(t *testing.T, b *Broker, name string, labels map[string]string) (v float64, series int) {
	t.Helper()
	fams, err := b.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		series = len(f.GetMetric())
	next:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount()), series
			}
			return m.GetCounter().GetValue(), series
		}
	}
	return 0, series
}

// TestNilBrokerDoesNothing: code without metrics calls the same methods.
func TestNilBrokerDoesNothing(t *testing.T) {
	var b *Broker
	b.Attestation(Refused, "policy")
	b.ChallengeIssued()
	b.ChallengeRefused("ek_trust")
	b.Commit("ok", time.Millisecond)
	b.PolicyReload(ReloadRefused)
	b.AdmissionRefused("attest", LimitEK)
	b.Stages().Done(StageVerify)
	b.VaultCall("kv_read", "ok", time.Millisecond)
	b.ChallengeOutstanding("c", time.Now().Add(time.Minute))
	b.ChallengeAnswered("c")
	if b.Registry() != nil {
		t.Error("a nil Broker has a registry")
	}
	called := false
	_, err := b.UnaryServerInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/s/M"},
		func(context.Context, any) (any, error) { called = true; return nil, nil })
	if err != nil || !called {
		t.Errorf("the nil Broker's interceptor did not call the handler: %v", err)
	}
	if _, err := b.Serve("127.0.0.1:0"); err == nil {
		t.Error("a nil Broker served metrics")
	}
}

// TestBrokersKeepTheirCounts: two Brokers in one process do not share
// counts, and neither registers with the default registry.
func TestBrokersKeepTheirCounts(t *testing.T) {
	a, b := New(), New()
	a.Attestation(Released, "ignored")
	a.Attestation(Released, "")
	b.Attestation(Refused, "policy")
	if got, _ := value(t, a, "keybroker_attestations_total", map[string]string{"outcome": Released, "check": ""}); got != 2 {
		t.Errorf("a released = %v; want 2 (a released attestation has no check)", got)
	}
	if got, _ := value(t, b, "keybroker_attestations_total", map[string]string{"outcome": Released, "check": ""}); got != 0 {
		t.Errorf("b released = %v; want 0", got)
	}
	if got, _ := value(t, b, "keybroker_attestations_total", map[string]string{"outcome": Refused, "check": "policy"}); got != 1 {
		t.Errorf("b refused by policy = %v; want 1", got)
	}
}

// TestCheckLabelIsBounded: a check that is not a check name is "other".
func TestCheckLabelIsBounded(t *testing.T) {
	b := New()
	for _, check := range []string{"policy", "quote_nonce", "", "ABCDEF0123", strings.Repeat("a", 64), "ek trust", "é"} {
		b.Attestation(Refused, check)
	}
	for check, want := range map[string]float64{"policy": 1, "quote_nonce": 1, "other": 5} {
		if got, _ := value(t, b, "keybroker_attestations_total", map[string]string{"outcome": Refused, "check": check}); got != want {
			t.Errorf("refused{check=%q} = %v; want %v", check, got, want)
		}
	}
	if _, n := value(t, b, "keybroker_attestations_total", nil); n != 3 {
		t.Errorf("%d series; want 3 (policy, quote_nonce, other)", n)
	}
}

// TestVaultCalls: calls to Vault are counted by op and outcome and timed
// by op, unless not measured; labels are bounded.
func TestVaultCalls(t *testing.T) {
	b := New()
	b.VaultCall("kv_read", "ok", 2*time.Millisecond)
	b.VaultCall("kv_read", "refused", time.Millisecond)
	b.VaultCall("renew", "ok", -1)
	b.VaultCall("secret/data/x", "unavailable", time.Millisecond)
	for labels, want := range map[[2]string]float64{
		{"kv_read", "ok"}: 1, {"kv_read", "refused"}: 1, {"renew", "ok"}: 1, {"other", "unavailable"}: 1,
	} {
		if got, _ := value(t, b, "keybroker_vault_calls_total", map[string]string{"op": labels[0], "outcome": labels[1]}); got != want {
			t.Errorf("vault calls{op=%s, outcome=%s} = %v; want %v", labels[0], labels[1], got, want)
		}
	}
	if got, _ := value(t, b, "keybroker_vault_call_duration_seconds", map[string]string{"op": "kv_read"}); got != 2 {
		t.Errorf("kv_read timed %v times; want 2", got)
	}
	if _, n := value(t, b, "keybroker_vault_call_duration_seconds", nil); n != 2 {
		t.Errorf("%d duration series; want 2 (kv_read, other): an untimed renewal is not observed", n)
	}
}

// TestInterceptorCountsByMethodAndCode checks the gRPC server metrics.
func TestInterceptorCountsByMethodAndCode(t *testing.T) {
	b := New()
	icpt := b.UnaryServerInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/keybroker.v1.Broker/Attest"}
	refuse := func(context.Context, any) (any, error) { return nil, status.Error(codes.PermissionDenied, "no") }
	ok := func(context.Context, any) (any, error) { return "r", nil }
	for range 2 {
		if _, err := icpt(context.Background(), nil, info, refuse); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("the interceptor changed the handler's error: %v", err)
		}
	}
	if resp, err := icpt(context.Background(), nil, info, ok); resp != "r" || err != nil {
		t.Fatalf("the interceptor changed the handler's answer: %v, %v", resp, err)
	}
	if _, err := icpt(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, errors.New("plain") }); err == nil {
		t.Fatal("the interceptor dropped an error")
	}
	for code, want := range map[string]float64{"PermissionDenied": 2, "OK": 1, "Unknown": 1} {
		got, _ := value(t, b, "keybroker_grpc_server_handled_total", map[string]string{"service": "keybroker.v1.Broker", "method": "Attest", "code": code})
		if got != want {
			t.Errorf("handled{code=%s} = %v; want %v", code, got, want)
		}
	}
	if got, n := value(t, b, "keybroker_grpc_server_handling_seconds", map[string]string{"service": "keybroker.v1.Broker", "method": "Attest"}); got != 4 || n != 1 {
		t.Errorf("handling time: %v observations in %d series; want 4 in 1", got, n)
	}
}

// TestServeOnlyMetrics scrapes an Endpoint and checks that it serves
// /metrics and nothing else, and stops on Close.
func TestServeOnlyMetrics(t *testing.T) {
	b := New()
	b.ChallengeIssued()
	st := b.Stages()
	st.Done(StageOpen)
	st.Done(StageVerify)
	e, err := b.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + e.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get("/metrics")
	for _, want := range []string{"keybroker_challenges_issued_total 1\n",
		`keybroker_attest_stage_duration_seconds_count{stage="open"} 1` + "\n",
		`keybroker_attest_stage_duration_seconds_count{stage="verify"} 1` + "\n",
		"go_goroutines "} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET /metrics = %d, lacks %q", code, want)
		}
	}
	if code, _ := get("/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/ on the metrics listener = %d; want 404", code)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + e.Addr() + "/metrics"); err == nil {
		t.Error("the endpoint still answers after Close")
	}
}

func TestSplitMethod(t *testing.T) {
	for full, want := range map[string][2]string{
		"/keybroker.v1.Broker/Challenge": {"keybroker.v1.Broker", "Challenge"},
		"/grpc.health.v1.Health/Check":   {"grpc.health.v1.Health", "Check"},
		"nonsense":                       {"unknown", "unknown"},
	} {
		if s, m := splitMethod(full); s != want[0] || m != want[1] {
			t.Errorf("splitMethod(%q) = %q, %q; want %q, %q", full, s, m, want[0], want[1])
		}
	}
}
