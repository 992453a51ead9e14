package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// A policy counter that is not a keybroker counter is refused as input,
// before any work: the broker would bind approvals to its name.
func TestAttestRefusesForeignPolicyCounters(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	ordinary := sealing.CounterPublic(sealing.DefaultCounterIndex)
	ordinary.Attributes.NT = tpm2.TPMNTOrdinary
	policied := sealing.CounterPublic(sealing.DefaultCounterIndex)
	policied.AuthPolicy = tpm2.TPM2BDigest{Buffer: make([]byte, 32)}
	good := tpm2.Marshal(sealing.CounterPublic(sealing.DefaultCounterIndex))
	tests := []struct {
		name    string
		public  []byte
		wantErr string
	}{
		{"not a TPMS_NV_PUBLIC", []byte{1, 2, 3}, "input: policy_counter: policy counter public area is not a TPMS_NV_PUBLIC"},
		{"trailing bytes", append(good, 0), "input: policy_counter: policy counter public area has trailing bytes"},
		{"an ordinary index", tpm2.Marshal(ordinary), "is not a keybroker policy counter"},
		{"an index with a policy", tpm2.Marshal(policied), "is not a keybroker policy counter"},
		{"too large", make([]byte, 300), "exceeds 256 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, secret := env.Challenge(t)
			req := env.AttestRequest(t, ch, secret)
			req.PolicyCounter = &pb.PolicyCounter{NvPublic: tt.public, Value: 1}
			_, err := env.Server.Attest(context.Background(), req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Attest = %v; want InvalidArgument %q", err, tt.wantErr)
			}
		})
	}
	if rs := env.Receipts(t); len(rs) != 0 {
		t.Fatalf("receipts after refused input: %+v; want none", rs)
	}
	// A well-formed counter is taken, and its bound returned, also without
	// authorized releases (it is the node's counter, whatever it opens).
	ch, secret := env.Challenge(t)
	req := env.AttestRequest(t, ch, secret)
	req.PolicyCounter = &pb.PolicyCounter{NvPublic: good, Value: 1}
	resp, err := env.Server.Attest(context.Background(), req)
	if err != nil || len(resp.GetPcrApprovals()) != 0 || resp.GetPolicyCounterMin() != 1 {
		t.Fatalf("Attest with a counter and no authorized release = %v, %v; want credentials and no approvals", resp, err)
	}
}

// The broker pins the node's counter and bounds its unverified value: a
// node reporting another counter, or a value more than the agent's steps
// above its bound, is refused and its record keeps the pinned counter and
// bound; a revocation raises the bound, also for the refusal's detail.
func TestAttestPinsAndBoundsThePolicyCounter(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	counter := tpm2.Marshal(sealing.CounterPublic(sealing.DefaultCounterIndex))
	attest := func(public []byte, value uint64) (*pb.AttestResponse, error) {
		ch, secret := env.Challenge(t)
		req := env.AttestRequest(t, ch, secret)
		req.PolicyCounter = &pb.PolicyCounter{NvPublic: public, Value: value}
		return env.Server.Attest(context.Background(), req)
	}
	if resp, err := attest(counter, 3); err != nil || resp.GetPolicyCounterMin() != 3 {
		t.Fatalf("first Attest = %v, %v; want bound 3", resp, err)
	}
	tests := []struct {
		name    string
		public  []byte
		value   uint64
		wantErr string
	}{
		{"another counter index", tpm2.Marshal(sealing.CounterPublic(sealing.DefaultCounterIndex + 1)), 3, "another policy counter than the one pinned"},
		{"a value out of bounds", counter, 3 + sealing.MaxCounterSteps + 1, "the policy counter's value is out of bounds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := attest(tt.public, tt.value)
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tt.wantErr) || resp != nil {
				t.Fatalf("Attest = %v, %v; want FailedPrecondition %q", resp, err, tt.wantErr)
			}
		})
	}
	// Still the pinned counter at bound 3: a revocation raises it.
	if _, err := pcrpolicy.RevokeState(context.Background(), env.Store, 0x000b, map[uint32][]byte{7: make([]byte, 32)}, "explicit", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if resp, err := attest(counter, 3); err != nil || resp.GetPolicyCounterMin() != 4 {
		t.Fatalf("Attest after a revocation = %v, %v; want bound 4", resp, err)
	}
}

// A refusal after verification carries the node's bound as a status
// detail, for the agent to advance its counter.
func TestRefusalCarriesPolicyCounterBound(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	ch, secret := env.Challenge(t)
	brokertest.Extend(t, env.RW, 7, "a state the policy does not allow")
	req := env.AttestRequest(t, ch, secret)
	req.PolicyCounter = &pb.PolicyCounter{NvPublic: tpm2.Marshal(sealing.CounterPublic(sealing.DefaultCounterIndex)), Value: 5}
	_, err := env.Server.Attest(context.Background(), req)
	st, _ := status.FromError(err)
	if st.Code() != codes.PermissionDenied {
		t.Fatalf("Attest in a state the policy refuses = %v; want PermissionDenied", err)
	}
	var got uint64
	for _, d := range st.Details() {
		if r, ok := d.(*pb.AttestResponse); ok {
			got = r.GetPolicyCounterMin()
		}
	}
	if got != 5 {
		t.Fatalf("refusal details = %v; want policy_counter_min 5", st.Details())
	}
}
