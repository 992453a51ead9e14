package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// value returns the value of the counter or gauge, or the count of the
// histogram, name{labels} in a's registry, and whether it is there.
func value(t *testing.T, a *Agent, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	fams, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
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
			switch {
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func TestOutcome(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{name: "nil", err: nil, want: Released},
		{name: "permission denied", err: status.Error(codes.PermissionDenied, "policy: no policy allows this node"), want: Refused},
		{name: "failed precondition", err: status.Error(codes.FailedPrecondition, "release: …"), want: Refused},
		{name: "invalid argument", err: status.Error(codes.InvalidArgument, "input: …"), want: Refused},
		{name: "wrapped refusal", err: fmt.Errorf("attest: %w", status.Error(codes.PermissionDenied, "x")), want: Refused},
		{name: "unavailable", err: status.Error(codes.Unavailable, "the store is unavailable"), want: Failed},
		{name: "expired challenge", err: status.Error(codes.DeadlineExceeded, "challenge: expired"), want: Failed},
		{name: "admission limit", err: status.Error(codes.ResourceExhausted, "retry in 1s"), want: Failed},
		{name: "not a status", err: errors.New("unable to connect to TPM"), want: Failed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Outcome(tc.err); got != tc.want {
				t.Errorf("Outcome(%v) = %q; want %q", tc.err, got, tc.want)
			}
		})
	}
}

// TestNilAgentDoesNothing: code without metrics calls the same methods.
func TestNilAgentDoesNothing(t *testing.T) {
	var a *Agent
	a.Attestation(nil, time.Second)
	a.Renewal(errors.New("x"))
	a.Rotation(nil)
	a.NodeSVIDExpires(time.Now())
	if a.Registry() != nil {
		t.Error("a nil Agent has a registry")
	}
	called := false
	_, err := a.UnaryServerInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/s/M"},
		func(context.Context, any) (any, error) { called = true; return nil, nil })
	if err != nil || !called {
		t.Errorf("the nil Agent's unary interceptor did not call the handler: %v", err)
	}
	called = false
	err = a.StreamServerInterceptor()(nil, nil, &grpc.StreamServerInfo{FullMethod: "/s/S"},
		func(any, grpc.ServerStream) error { called = true; return nil })
	if err != nil || !called {
		t.Errorf("the nil Agent's stream interceptor did not call the handler: %v", err)
	}
	if _, err := a.Serve("127.0.0.1:0"); err == nil {
		t.Error("a nil Agent served metrics")
	}
}

// TestCountersMove checks each method moves its own series, and that two
// Agents keep their counts apart.
func TestCountersMove(t *testing.T) {
	a, other := New(), New()
	if _, ok := value(t, a, "keybroker_agent_node_svid_remaining_seconds", nil); ok {
		t.Error("a remaining time before any node SVID")
	}
	a.Attestation(nil, 10*time.Millisecond)
	a.Attestation(nil, 20*time.Millisecond)
	a.Attestation(status.Error(codes.PermissionDenied, "policy"), time.Millisecond)
	a.Renewal(status.Error(codes.Unavailable, "down"))
	a.Rotation(nil)
	a.Rotation(errors.New("x"))
	a.NodeSVIDExpires(time.Now().Add(-time.Hour))

	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"keybroker_agent_attestations_total", map[string]string{"outcome": Released}, 2},
		{"keybroker_agent_attestations_total", map[string]string{"outcome": Refused}, 1},
		{"keybroker_agent_attestation_duration_seconds", map[string]string{"outcome": Released}, 2},
		{"keybroker_agent_attestation_duration_seconds", map[string]string{"outcome": Refused}, 1},
		{"keybroker_agent_renewals_total", map[string]string{"outcome": Failed}, 1},
		{"keybroker_agent_workload_svid_rotations_total", map[string]string{"outcome": RotationOK}, 1},
		{"keybroker_agent_workload_svid_rotations_total", map[string]string{"outcome": RotationFailed}, 1},
	}
	for _, tc := range tests {
		if got, _ := value(t, a, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v; want %v", tc.name, tc.labels, got, tc.want)
		}
		if got, _ := value(t, other, tc.name, tc.labels); got != 0 {
			t.Errorf("the other Agent's %s%v = %v; want 0", tc.name, tc.labels, got)
		}
	}
	// An expired node SVID shows as negative: an hour ago, give or take
	// the time since.
	if got, ok := value(t, a, "keybroker_agent_node_svid_remaining_seconds", nil); !ok || got > -3600 {
		t.Errorf("remaining seconds = %v (present %v); want ≤ -3600", got, ok)
	}
}

// fakeStream is a grpc.ServerStream that is never used.
type fakeStream struct{ grpc.ServerStream }

func TestInterceptors(t *testing.T) {
	a := New()
	unary := a.UnaryServerInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/SpiffeWorkloadAPI/FetchJWTSVID"}
	for _, err := range []error{nil, nil, status.Error(codes.PermissionDenied, "no identity issued"), context.Canceled} {
		if _, got := unary(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, err }); got != err {
			t.Errorf("the interceptor returned %v, not the handler's %v", got, err)
		}
	}
	stream := a.StreamServerInterceptor()
	sinfo := &grpc.StreamServerInfo{FullMethod: "/SpiffeWorkloadAPI/FetchX509SVID", IsServerStream: true}
	var openDuring float64
	stream(nil, fakeStream{}, sinfo, func(any, grpc.ServerStream) error {
		openDuring, _ = value(t, a, "keybroker_agent_workload_api_streams", map[string]string{"method": "FetchX509SVID"})
		return status.Error(codes.InvalidArgument, "security header missing from request")
	})
	// A method name that is not a plain name is not taken as a label.
	unary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/spiffe:example.org"},
		func(context.Context, any) (any, error) { return nil, nil })

	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"keybroker_agent_workload_api_calls_total", map[string]string{"method": "FetchJWTSVID", "code": "OK"}, 2},
		{"keybroker_agent_workload_api_calls_total", map[string]string{"method": "FetchJWTSVID", "code": "PermissionDenied"}, 1},
		{"keybroker_agent_workload_api_calls_total", map[string]string{"method": "FetchJWTSVID", "code": "Canceled"}, 1},
		{"keybroker_agent_workload_api_handling_seconds", map[string]string{"method": "FetchJWTSVID"}, 4},
		{"keybroker_agent_workload_api_calls_total", map[string]string{"method": "FetchX509SVID", "code": "InvalidArgument"}, 1},
		{"keybroker_agent_workload_api_streams", map[string]string{"method": "FetchX509SVID"}, 0},
		{"keybroker_agent_workload_api_calls_total", map[string]string{"method": "other", "code": "OK"}, 1},
	}
	for _, tc := range tests {
		if got, _ := value(t, a, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v; want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if openDuring != 1 {
		t.Errorf("open streams during the stream = %v; want 1", openDuring)
	}
}

// TestServe checks the endpoint serves GET /metrics, with the runtime and
// process collectors, and nothing else.
func TestServe(t *testing.T) {
	a := New()
	a.Renewal(nil)
	e, err := a.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	get := func(method, path string) (int, string) {
		req, err := http.NewRequest(method, "http://"+e.Addr()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get(http.MethodGet, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	for _, want := range []string{`keybroker_agent_renewals_total{outcome="released"} 1`, "go_goroutines ", "process_cpu_seconds_total "} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /metrics lacks %q", want)
		}
	}
	if code, _ := get(http.MethodGet, "/"); code != http.StatusNotFound {
		t.Errorf("GET /: %d; want 404", code)
	}
	if code, _ := get(http.MethodGet, "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/: %d; want 404", code)
	}
	if code, _ := get(http.MethodPost, "/metrics"); code == http.StatusOK {
		t.Error("POST /metrics served")
	}
	if _, err := a.Serve(e.Addr()); err == nil || !strings.Contains(err.Error(), "unable to listen on") {
		t.Errorf("a second Serve on the same address: %v", err)
	}
}
