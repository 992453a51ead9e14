package broker_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
)

func TestStartServesHealthAndReflection(t *testing.T) {
	dir := t.TempDir()
	hash := strings.Repeat("ab", 32)
	policy := `policy "p" {
  select { ek_hashes = ["` + hash + `"] }
  release "r" {
    type = "tls_certificate"
    common_name = "x"
  }
}`
	if err := os.WriteFile(filepath.Join(dir, "p.hcl"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := broker.ParseConfig([]byte(`listen = "127.0.0.1:0"
data_dir = "data"
policies = ["p.hcl"]
ek_allow = ["`+hash+`"]`), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := broker.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if fi, err := os.Stat(filepath.Join(dir, "data")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data_dir mode = %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	conn, err := agent.Dial(r.Addr(), r.CA.BundlePEM(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "keybroker.v1.Broker"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", h.GetStatus(), err)
	}

	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"keybroker.v1.Broker", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}

func TestRecoverPanicsInterceptor(t *testing.T) {
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	intercept := broker.RecoverPanicsForTest(log)
	resp, err := intercept(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/keybroker.v1.Broker/Attest"},
		func(context.Context, any) (any, error) { panic("boom") })
	if resp != nil || status.Code(err) != codes.Internal || status.Convert(err).Message() != "internal error" {
		t.Fatalf("interceptor = %v, %v; want Internal and no response", resp, err)
	}
	if !strings.Contains(logged.String(), "handler panicked") || !strings.Contains(logged.String(), "boom") {
		t.Errorf("the panic was not logged: %s", logged.String())
	}
}
