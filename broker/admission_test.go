package broker

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/ratelimit"
)

var (
	ekA = strings.Repeat("a1", 32)
	ekB = strings.Repeat("b2", 32)
)

// testAdmission returns the admission of cfg on a clock the test moves.
func testAdmission(cfg LimitsConfig) (*admission, *time.Time) {
	now := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	a := newAdmission(cfg)
	a.now = func() time.Time { return now }
	return a, &now
}

// from returns a context whose gRPC peer is addr ("ip:port").
func from(t *testing.T, addr string) context.Context {
	t.Helper()
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return peer.NewContext(context.Background(), &peer.Peer{Addr: tcp})
}

// wantExhausted fails the test unless err is ResourceExhausted with msg.
func wantExhausted(t *testing.T, err error, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != codes.ResourceExhausted || st.Message() != msg {
		t.Fatalf("err = %v; want ResourceExhausted %q", err, msg)
	}
}

func TestAdmissionEKFloodLeavesOtherEKs(t *testing.T) {
	a, now := testAdmission(DefaultLimits(time.Minute))
	for i := range 10 {
		if err := a.admitEK(opChallenge, ekA); err != nil {
			t.Fatalf("challenge %d of a fresh EK refused: %v", i+1, err)
		}
	}
	for range 100 {
		err := a.admitEK(opChallenge, ekA)
		wantExhausted(t, err, "challenge: too many requests for this EK (limit 10/m); retry in 6s")
		if strings.Contains(err.Error(), ekA) {
			t.Fatalf("the refusal names the EK: %v", err)
		}
	}
	if err := a.admitEK(opChallenge, ekB); err != nil {
		t.Errorf("another EK refused during the flood: %v", err)
	}
	if err := a.admitEK(opAttest, ekA); err != nil {
		t.Errorf("attest of the flooding EK refused by the challenge limit: %v", err)
	}
	*now = now.Add(6 * time.Second)
	if err := a.admitEK(opChallenge, ekA); err != nil {
		t.Errorf("after the retry time the EK is still refused: %v", err)
	}
}

func TestAdmissionAddressGroupsIPv6By64(t *testing.T) {
	cfg := LimitsConfig{
		ChallengePerAddress: ratelimit.Rate{Count: 2, Per: time.Minute},
		AttestPerAddress:    ratelimit.Rate{Count: 1, Per: time.Hour},
	}
	tests := []struct {
		name     string
		first    string // spends the budget
		same     []string
		separate []string
	}{{
		name:     "ipv6 /64",
		first:    "[2001:db8:1:2::1]:4000",
		same:     []string{"[2001:db8:1:2:ffff:ffff:ffff:ffff]:1", "[2001:db8:1:2::1%eth0]:5"},
		separate: []string{"[2001:db8:1:3::1]:4000", "[2001:db8:1:1:ffff::1]:4000"},
	}, {
		name:     "ipv4",
		first:    "192.0.2.10:4000",
		same:     []string{"192.0.2.10:4001", "[::ffff:192.0.2.10]:4002"},
		separate: []string{"192.0.2.11:4000", "198.51.100.10:4000"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := testAdmission(cfg)
			for range 2 {
				if err := a.admitAddress(from(t, tt.first), opChallenge); err != nil {
					t.Fatalf("fresh address refused: %v", err)
				}
			}
			for _, addr := range append([]string{tt.first}, tt.same...) {
				err := a.admitAddress(from(t, addr), opChallenge)
				wantExhausted(t, err, "challenge: too many requests from this address (limit 2/m); retry in 30s")
			}
			for _, addr := range tt.separate {
				if err := a.admitAddress(from(t, addr), opChallenge); err != nil {
					t.Errorf("%s shares a bucket with %s: %v", addr, tt.first, err)
				}
			}
			if err := a.admitAddress(from(t, tt.first), opAttest); err != nil {
				t.Errorf("attest refused by the challenge limit: %v", err)
			}
			wantExhausted(t, a.admitAddress(from(t, tt.first), opAttest),
				"attest: too many requests from this address (limit 1/h); retry in 1h0m0s")
		})
	}
}

func TestAdmissionOutstandingChallenges(t *testing.T) {
	a, now := testAdmission(DefaultLimits(time.Minute))
	for i := range 4 {
		if err := a.admitOutstanding(ekA); err != nil {
			t.Fatalf("challenge %d refused: %v", i+1, err)
		}
	}
	wantExhausted(t, a.admitOutstanding(ekA),
		"challenge: too many outstanding challenges for this EK (at most 4 per 1m0s); retry in 15s")
	if err := a.admitOutstanding(ekB); err != nil {
		t.Errorf("another EK refused: %v", err)
	}
	*now = now.Add(15 * time.Second)
	if err := a.admitOutstanding(ekA); err != nil {
		t.Errorf("one challenge expired's worth later, still refused: %v", err)
	}
	wantExhausted(t, a.admitOutstanding(ekA),
		"challenge: too many outstanding challenges for this EK (at most 4 per 1m0s); retry in 15s")
}

// TestAdmissionDefaultsAdmitARetryingNode: a node whose attestations fail
// retries after 1s, doubling up to a minute; the default limits admit
// every attempt (Challenge and Attest), its renewals too.
func TestAdmissionDefaultsAdmitARetryingNode(t *testing.T) {
	a, now := testAdmission(DefaultLimits(DefaultChallengeTTL))
	ctx := from(t, "192.0.2.7:40000")
	start := *now
	var at time.Duration
	for attempt, wait := 0, time.Second; attempt < 30; attempt++ {
		*now = start.Add(at)
		for _, err := range []error{
			a.admitAddress(ctx, opChallenge), a.admitEK(opChallenge, ekA), a.admitOutstanding(ekA),
			a.admitAddress(ctx, opAttest), a.admitEK(opAttest, ekA),
		} {
			if err != nil {
				t.Fatalf("attempt %d at +%s refused: %v", attempt+1, at, err)
			}
		}
		at += wait
		wait = min(2*wait, time.Minute)
	}
}

func TestAdmissionOffAdmitsEverything(t *testing.T) {
	a, _ := testAdmission(LimitsConfig{})
	ctx := from(t, "192.0.2.7:40000")
	for range 1000 {
		for _, err := range []error{
			a.admitAddress(ctx, opChallenge), a.admitEK(opChallenge, ekA), a.admitOutstanding(ekA),
			a.admitAddress(ctx, opAttest), a.admitEK(opAttest, ekA),
		} {
			if err != nil {
				t.Fatalf("no limit configured, yet refused: %v", err)
			}
		}
	}
}

func TestAdmissionWithoutPeerOrWithUnknownOp(t *testing.T) {
	a, _ := testAdmission(LimitsConfig{ChallengePerAddress: ratelimit.Rate{Count: 1, Per: time.Hour}})
	for range 3 {
		if err := a.admitAddress(context.Background(), opChallenge); err != nil {
			t.Fatalf("an in-process call (no peer) refused: %v", err)
		}
	}
	for _, err := range []error{a.admitAddress(context.Background(), "renew"), a.admitEK("renew", ekA)} {
		if st, _ := status.FromError(err); st.Code() != codes.Internal || st.Message() != `admission: unknown operation "renew"` {
			t.Errorf("unknown operation: err = %v, want Internal", err)
		}
	}
}

// TestAdmissionOverGRPC: the address limit reads the peer of a real gRPC
// connection on loopback, and the client gets ResourceExhausted with the
// message.
func TestAdmissionOverGRPC(t *testing.T) {
	a := newAdmission(LimitsConfig{ChallengePerAddress: ratelimit.Rate{Count: 2, Per: time.Hour}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if err := a.admitAddress(ctx, opChallenge); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := healthpb.NewHealthClient(conn)
	for i := range 2 {
		if _, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("call %d refused: %v", i+1, err)
		}
	}
	_, err = client.Check(t.Context(), &healthpb.HealthCheckRequest{})
	wantExhausted(t, err, "challenge: too many requests from this address (limit 2/h); retry in 30m0s")
	if k := a.address[opChallenge].Stats().Keys; k != 1 {
		t.Errorf("the limiter holds %d addresses, want 1 (127.0.0.1)", k)
	}
}
