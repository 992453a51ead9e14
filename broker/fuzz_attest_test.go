package broker_test

import (
	"bytes"
	"context"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// FuzzAttest sends whole AttestRequests (protobuf bytes) to a broker's
// Attest. The seed is a real answer from the simulator to a real challenge;
// each run gets a fresh store holding the key that sealed that challenge, and
// no record of its use, so the node's own answer is released every time. Attest must never panic, must release the
// node's answer, and must release nothing for any other request: a release
// needs the challenge's ID, the EK and AK material and the event log as
// sent, and only quotes exactly as the TPM made them.
func FuzzAttest(f *testing.F) {
	ctx := context.Background()
	env := brokertest.New(f, brokertest.Opts{})
	ch, secret := env.Challenge(f)
	valid := env.AttestRequest(f, ch, secret)
	at := env.Clock()
	keys, err := env.Store.ChallengeKeys(ctx)
	if err != nil || len(keys) != 1 {
		f.Fatalf("challenge keys %v: %v", keys, err)
	}
	pol, err := policies.Parse([]byte(env.PolicySource), "test.hcl")
	if err != nil {
		f.Fatal(err)
	}
	attest := func(t *testing.T, req *pb.AttestRequest) (*pb.AttestResponse, []store.Receipt, error) {
		st, err := store.OpenBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOpts{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		// The same challenge key: the challenge opens, and has not been used.
		if err := st.AddChallengeKey(ctx, keys[0], "", time.Time{}); err != nil {
			t.Fatal(err)
		}
		srv, err := broker.NewServer(broker.ServerOpts{
			Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{env.EKHash}}},
			Store:  st, CA: env.CA, Policies: pol,
			Now: func() time.Time { return at },
		})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Attest(ctx, req)
		rs, lerr := st.ListReceipts(ctx, store.ListOpts{Limit: store.MaxListLimit})
		if lerr != nil {
			t.Fatal(lerr)
		}
		return resp, rs, err
	}

	add := func(edit func(*pb.AttestRequest)) {
		req := proto.Clone(valid).(*pb.AttestRequest)
		if edit != nil {
			edit(req)
		}
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	add(nil)
	add(func(r *pb.AttestRequest) { r.Quotes = r.Quotes[:1] })
	add(func(r *pb.AttestRequest) { r.Quotes[0].Attest = append(r.Quotes[0].Attest, 0) })
	add(func(r *pb.AttestRequest) { r.Quotes[0].Signature = append(r.Quotes[0].Signature, 0) })
	add(func(r *pb.AttestRequest) { r.Quotes = append(r.Quotes, r.Quotes[0]) })
	add(func(r *pb.AttestRequest) { r.ChallengeId += "x" })
	add(func(r *pb.AttestRequest) { r.EventLog = []byte("not an event log") })
	add(func(r *pb.AttestRequest) { r.Quotes[0].Pcrs.Values[0] = make([]byte, 32) })
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.AttestRequest
		if proto.Unmarshal(data, &req) != nil {
			return // gRPC refuses it before the handler
		}
		resp, receipts, err := attest(t, &req)
		released := slices.ContainsFunc(receipts, func(r store.Receipt) bool { return r.Allowed || len(r.Released) > 0 })
		if err == nil {
			if !answers(&req, valid) {
				t.Fatalf("released %d credential(s) for a request that is not the node's answer: %v", len(resp.GetCredentials()), &req)
			}
			if len(resp.GetCredentials()) == 0 || len(receipts) != 1 || !receipts[0].Allowed {
				t.Fatalf("release without its receipt: %d credential(s), receipts %+v", len(resp.GetCredentials()), receipts)
			}
			return
		}
		if resp != nil || released {
			t.Fatalf("refusal %v released something: response %v, receipts %+v", err, resp, receipts)
		}
		if status.Code(err) == codes.Unknown {
			t.Fatalf("refusal without a status: %v", err)
		}
		if proto.Equal(&req, valid) {
			t.Fatalf("the node's own answer was refused: %v", err)
		}
	})
}

// answers reports whether req presents the same evidence as the node's
// answer valid: its challenge ID, EK and AK material and event log, and only
// quotes (at least one) exactly as the TPM made them.
func answers(req, valid *pb.AttestRequest) bool {
	if req.GetChallengeId() != valid.GetChallengeId() || !bytes.Equal(req.GetEventLog(), valid.GetEventLog()) || len(req.GetQuotes()) == 0 ||
		!bytes.Equal(req.GetEkPublic(), valid.GetEkPublic()) || !bytes.Equal(req.GetAkPublic(), valid.GetAkPublic()) ||
		!bytes.Equal(req.GetEkCertificate(), valid.GetEkCertificate()) || !slices.EqualFunc(req.GetEkIntermediates(), valid.GetEkIntermediates(), bytes.Equal) {
		return false
	}
	for _, q := range req.GetQuotes() {
		if !slices.ContainsFunc(valid.GetQuotes(), func(v *pb.Quote) bool {
			return bytes.Equal(q.GetAttest(), v.GetAttest()) && bytes.Equal(q.GetSignature(), v.GetSignature()) &&
				q.GetPcrs().GetHashAlg() == v.GetPcrs().GetHashAlg() &&
				maps.EqualFunc(q.GetPcrs().GetValues(), v.GetPcrs().GetValues(), bytes.Equal)
		}) {
			return false
		}
	}
	return true
}
