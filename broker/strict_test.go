package broker_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// An answer to an expired challenge is refused with a receipt, like every
// other refusal once the challenge is found: it names the node and the
// check, releases nothing, records nothing of the answer (whose quotes carry
// the activated secret) and does not deny-list the node.
func TestAttestExpiredChallengeIsRecorded(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	ctx := context.Background()
	ch, secret := f.Challenge(t)
	req := f.AttestRequest(t, ch, secret)
	f.Advance(challengeTTL + time.Second)

	resp, err := f.Server.Attest(ctx, req)
	f.wantRefused(t, resp, err, codes.DeadlineExceeded, "challenge: challenge has expired (receipt ", "challenge")
	rs := f.Receipts(t)
	r := rs[0]
	if r.ChallengeID != challenge.IDOf(ch.GetChallengeId()) || r.EKHash != f.EKHash || len(r.AKName) == 0 {
		t.Errorf("receipt names challenge %q, EK %q, AK %x; want %q, %q and the AK", r.ChallengeID, r.EKHash, r.AKName, challenge.IDOf(ch.GetChallengeId()), f.EKHash)
	}
	if len(r.Failures) != 1 || !strings.HasPrefix(r.Failures[0], "challenge expired at ") {
		t.Errorf("receipt failures = %q, want when the challenge expired", r.Failures)
	}
	if r.DenyListed || len(r.QuoteDigest) != 0 || len(r.Policies) != 0 {
		t.Errorf("receipt = %+v; want no deny list, no quote digest, no policies", r)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, enc := range []string{hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret), base64.RawURLEncoding.EncodeToString(secret)} {
		if strings.Contains(string(raw), enc) {
			t.Fatalf("receipt %s holds the challenge secret", raw)
		}
	}
	if _, err := f.Store.GetDenial(ctx, f.EKHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDenial = %v; an expired challenge must not deny-list the node", err)
	}

	// The challenge is used up: a second answer is refused without a receipt.
	resp, err = f.Server.Attest(ctx, req)
	f.wantRefused(t, resp, err, codes.PermissionDenied, "challenge: challenge is unknown or already used", "")
	if got := len(f.Receipts(t)); got != len(rs) {
		t.Errorf("a second answer to the expired challenge wrote a receipt (%d -> %d)", len(rs), got)
	}

	// The node attests again with a fresh challenge.
	ch, secret = f.Challenge(t)
	if resp, err := f.Server.Attest(ctx, f.AttestRequest(t, ch, secret)); err != nil || len(resp.GetCredentials()) != 1 {
		t.Fatalf("Attest after the expired challenge: %v", err)
	}
}

// offCurve moves an ECC public area's point off its curve by changing one
// bit of Y.
func offCurve(t *testing.T, public []byte) []byte {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](public)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		t.Fatal(err)
	}
	y := append([]byte(nil), pt.Y.Buffer...)
	y[len(y)-1] ^= 1
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: pt.X, Y: tpm2.TPM2BECCParameter{Buffer: y}})
	return tpm2.Marshal(pub)
}

// ECC EKs and AKs whose point is not on the curve are refused at Challenge,
// before any credential is made for them.
func TestChallengeRefusesPointsOffTheCurve(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	eccNode, err := agent.NewNode(f.RW, agent.NodeOpts{AK: "ecc"})
	if err != nil {
		t.Fatal(err)
	}
	defer eccNode.Close()
	good, err := eccNode.ChallengeRequest() // the trusted RSA EK, an ECC P-256 AK
	if err != nil {
		t.Fatal(err)
	}
	eccEKPub := eccEKPublic(t, f.RW)
	tests := []struct {
		name string
		req  *pb.ChallengeRequest
		code codes.Code
		msg  string
	}{
		{"ECC AK on the curve", good, codes.OK, ""},
		{"ECC AK off the curve", &pb.ChallengeRequest{EkPublic: good.EkPublic, AkPublic: offCurve(t, good.AkPublic)},
			codes.PermissionDenied, "ak_attributes: AK public key is not a point on P-256"},
		{"ECC EK off the curve", &pb.ChallengeRequest{EkPublic: offCurve(t, eccEKPub), AkPublic: good.AkPublic},
			codes.InvalidArgument, "input: EK public key is not a point on P-256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := f.Server.Challenge(context.Background(), tc.req)
			s, _ := status.FromError(err)
			if s.Code() != tc.code || !strings.Contains(s.Message(), tc.msg) {
				t.Fatalf("error = %v %q; want %v containing %q", s.Code(), s.Message(), tc.code, tc.msg)
			}
			if (resp != nil) != (tc.code == codes.OK) {
				t.Fatalf("response %v for %v", resp, s.Code())
			}
		})
	}
}

// An answer to a challenge that expired more than challenge.MaxTTL ago is
// refused without a receipt: replaying an old token cannot make the broker
// write.
func TestAttestLongExpiredChallengeWritesNothing(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	ctx := context.Background()
	ch, secret := f.Challenge(t)
	req := f.AttestRequest(t, ch, secret)
	f.Advance(challengeTTL + challenge.MaxTTL + time.Second)
	for range 3 {
		resp, err := f.Server.Attest(ctx, req)
		f.wantRefused(t, resp, err, codes.DeadlineExceeded, "challenge: challenge has expired", "")
	}
	if rs := f.Receipts(t); len(rs) != 0 {
		t.Fatalf("receipts for a long-expired challenge: %+v", rs)
	}
}

// An answer presenting other EK or AK material than its challenge was
// issued for is refused before any work, with no receipt.
func TestAttestRefusesOtherMaterialThanChallenged(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	ctx := context.Background()
	ch, secret := f.Challenge(t)
	req := f.AttestRequest(t, ch, secret)
	for name, edit := range map[string]func(*pb.AttestRequest){
		"another EK":         func(r *pb.AttestRequest) { r.EkPublic = eccEKPublic(t, f.RW) },
		"no AK":              func(r *pb.AttestRequest) { r.AkPublic = nil },
		"an EK intermediate": func(r *pb.AttestRequest) { r.EkIntermediates = [][]byte{[]byte("x")} },
	} {
		bad := proto.Clone(req).(*pb.AttestRequest)
		edit(bad)
		resp, err := f.Server.Attest(ctx, bad)
		f.wantRefused(t, resp, err, codes.PermissionDenied, "challenge: challenge was issued for another EK or AK", "")
		if rs := f.Receipts(t); len(rs) != 0 {
			t.Fatalf("%s: receipts %+v; want none", name, rs)
		}
	}
	// The genuine answer is still accepted: nothing was used up.
	if resp, err := f.Server.Attest(ctx, req); err != nil || len(resp.GetCredentials()) != 1 {
		t.Fatalf("the genuine answer after the refusals: %v", err)
	}
}
