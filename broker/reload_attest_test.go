package broker_test

// Policy reloads racing attestations: an Attest decides, records and
// releases under one policy set, whatever reloads happen meanwhile.

import (
	"context"
	"encoding/hex"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// allowAndDeny returns two sets for env's node: brokertest's policy as
// measured (allows it) and the same policy expecting another PCR 7 (denies
// it). Their hashes differ.
func allowAndDeny(t *testing.T, env *brokertest.Env) (allow, deny *policies.Set) {
	t.Helper()
	pcrs, err := client.ReadPCRs(env.RW, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	pcr0, pcr7 := hex.EncodeToString(pcrs.GetPcrs()[0]), hex.EncodeToString(pcrs.GetPcrs()[7])
	parse := func(pcr7 string) *policies.Set {
		src := fmt.Sprintf(brokertest.Policy, env.EKHash, pcr0, pcr7, "tpm_bound", "")
		s, err := policies.Parse([]byte(src), "reload.hcl")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return parse(pcr7), parse(strings.Repeat("00", 32))
}

// reloadOnConsume runs reload when Attest records its decision: after the
// policy was evaluated and before the reply.
type reloadOnConsume struct {
	store.Backend
	mu     sync.Mutex
	reload func()
}

func (s *reloadOnConsume) Record(ctx context.Context, d *store.Decision) error {
	s.mu.Lock()
	reload := s.reload
	s.mu.Unlock()
	if reload != nil {
		reload()
	}
	return s.Backend.Record(ctx, d)
}

func (s *reloadOnConsume) set(reload func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload = reload
}

// TestReloadDuringAttestKeepsEvaluatedPolicy swaps the policies while an
// Attest is between its decision and its reply: that Attest finishes under
// the set it evaluated (receipt, hash and release agree), the next one uses
// the new set.
func TestReloadDuringAttestKeepsEvaluatedPolicy(t *testing.T) {
	hook := &reloadOnConsume{}
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound", Server: func(o *broker.ServerOpts) {
		hook.Backend = o.Store
		o.Store = hook
	}})
	allow, deny := allowAndDeny(t, env)
	env.Server.SetPolicies(allow)
	ctx := context.Background()

	attest := func() (*pb.AttestResponse, store.Receipt, error) {
		ch, secret := env.Challenge(t)
		resp, err := env.Server.Attest(ctx, env.AttestRequest(t, ch, secret))
		return resp, env.Receipts(t)[0], err
	}

	// Allowed under allow; deny is installed mid-request.
	hook.set(func() { env.Server.SetPolicies(deny) })
	resp, rec, err := attest()
	if err != nil || len(resp.GetCredentials()) != 1 {
		t.Fatalf("Attest during a reload to a denying policy = %d credentials, %v; want the credential its decision allowed", len(resp.GetCredentials()), err)
	}
	if !rec.Allowed || rec.PolicyHash != allow.Hash() || rec.ID != resp.GetReceiptId() || len(rec.Released) != 1 {
		t.Errorf("receipt = allowed %v hash %s released %d; want allowed under %s with one release", rec.Allowed, rec.PolicyHash, len(rec.Released), allow.Hash())
	}

	// The next request sees deny; allow is installed mid-request.
	hook.set(func() { env.Server.SetPolicies(allow) })
	resp, rec, err = attest()
	if s, _ := status.FromError(err); resp != nil || s.Code() != codes.PermissionDenied || !strings.Contains(s.Message(), "policy: no policy allows this node") {
		t.Fatalf("Attest after the reload = %v, %v; want refused by policy", resp, err)
	}
	if rec.Allowed || rec.PolicyHash != deny.Hash() || len(rec.Released) != 0 {
		t.Errorf("receipt = allowed %v hash %s released %d; want denied under %s, nothing released", rec.Allowed, rec.PolicyHash, len(rec.Released), deny.Hash())
	}

	// And the one after that sees allow again.
	hook.set(nil)
	if resp, rec, err = attest(); err != nil || !rec.Allowed || rec.PolicyHash != allow.Hash() {
		t.Fatalf("Attest after reloading the allowing policy = %v (receipt allowed %v hash %s)", err, rec.Allowed, rec.PolicyHash)
	}
}

// TestReloadsDuringAttestStream swaps an allowing and a denying set as fast
// as it can while attestations run: every decision is the one of exactly one
// of the two sets, and its receipt names that set's hash.
func TestReloadsDuringAttestStream(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound"})
	allow, deny := allowAndDeny(t, env)
	ctx := context.Background()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	reloads := 0
	wg.Go(func() {
		for sets := []*policies.Set{allow, deny}; ; reloads++ {
			select {
			case <-stop:
				return
			default:
			}
			env.Server.SetPolicies(sets[reloads%2])
			runtime.Gosched()
		}
	})

	const rounds = 16
	var allowed, denied int
	for round := range rounds {
		ch, secret := env.Challenge(t)
		resp, err := env.Server.Attest(ctx, env.AttestRequest(t, ch, secret))
		rec := env.Receipts(t)[0]
		switch {
		case err == nil:
			allowed++
			if len(resp.GetCredentials()) != 1 || !rec.Allowed || rec.ID != resp.GetReceiptId() ||
				rec.PolicyHash != allow.Hash() || !slices.Equal(rec.Policies, []string{"nodes"}) || len(rec.Failures) != 0 {
				t.Fatalf("round %d: released %d credentials with receipt %+v; want one, recorded under the allowing set %s",
					round, len(resp.GetCredentials()), rec, allow.Hash())
			}
		default:
			denied++
			s, _ := status.FromError(err)
			if resp != nil || s.Code() != codes.PermissionDenied || !strings.Contains(s.Message(), "(receipt "+rec.ID+")") {
				t.Fatalf("round %d: Attest = %v, %v; want a policy refusal naming receipt %s", round, resp, err, rec.ID)
			}
			if rec.Allowed || rec.Check != "policy" || rec.PolicyHash != deny.Hash() || len(rec.Released) != 0 ||
				len(rec.Failures) != 1 || !strings.Contains(rec.Failures[0], "pcrs.sha256[7]") {
				t.Fatalf("round %d: receipt %+v; want denied by the denying set %s on PCR 7 alone", round, rec, deny.Hash())
			}
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d rounds allowed, %d denied, across %d reloads", allowed, denied, reloads)
}
