package broker_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
