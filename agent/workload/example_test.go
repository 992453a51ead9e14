package workload_test

import (
	"context"
	"log/slog"

	"github.com/keybroker/keybroker/agent/workload"
)

// The agent serves its SVID manager (any workload.Source) on the default
// socket until ctx is done. Workloads then use any SPIFFE client with
// SPIFFE_ENDPOINT_SOCKET=unix:///run/keybroker/agent.sock.
func ExampleServer_Serve() {
	var source workload.Source // e.g. an *agent.SVIDManager after Update
	ctx := context.Background()

	lis, err := workload.Listen(workload.DefaultSocket) // directory 0755, socket 0777
	if err != nil {
		slog.Error("unable to create the Workload API socket", "error", err)
		return
	}
	srv := workload.NewServer(source, workload.WithLogger(slog.Default()))
	if err := srv.Serve(ctx, lis); err != nil {
		slog.Error("workload API stopped", "error", err)
	}
}
