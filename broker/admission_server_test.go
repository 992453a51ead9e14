package broker_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/ratelimit"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// seededRequest is the challenge request of a node on a seeded simulator,
// and its EK hash.
func seededRequest(t *testing.T, seed int64) (*pb.ChallengeRequest, string) {
	t.Helper()
	rw := tpmtest.OpenSeeded(t, seed)
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	req, err := node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ek, err := node.EKHash()
	if err != nil {
		t.Fatal(err)
	}
	return req, ek
}

// A flood of Challenges for one EK is refused with ResourceExhausted, naming
// the limit, while another node still gets through.
func TestChallengeFloodOneEK(t *testing.T) {
	reqA, ekA := seededRequest(t, 11)
	reqB, ekB := seededRequest(t, 12)
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse([]byte(`policy "none" {
  select { ek_hashes = ["`+ekA+`"] }
}`), "none.hcl")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := broker.NewServer(broker.ServerOpts{
		Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{ekA, ekB}}}, Store: st, CA: ca, Policies: pol,
		Limits: broker.LimitsConfig{ChallengePerEK: ratelimit.Rate{Count: 3, Per: time.Hour}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 3 {
		if _, err := srv.Challenge(ctx, reqA); err != nil {
			t.Fatalf("challenge %d of node A: %v", i+1, err)
		}
	}
	for range 20 {
		_, err := srv.Challenge(ctx, reqA)
		if s, _ := status.FromError(err); s.Code() != codes.ResourceExhausted || !strings.Contains(s.Message(), "challenge") || !strings.Contains(s.Message(), "retry in") {
			t.Fatalf("flooding challenge of node A = %v; want ResourceExhausted naming the limit and when to retry", err)
		}
	}
	if _, err := srv.Challenge(ctx, reqB); err != nil {
		t.Fatalf("node B during A's flood: %v", err)
	}
}
