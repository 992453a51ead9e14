package broker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
	tpm2b "github.com/google/go-tpm/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/tpmtest"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// fixture adds refusal assertions to a brokertest.Env.
type fixture struct {
	*brokertest.Env
}

func newFixture(t *testing.T, o brokertest.Opts) *fixture {
	return &fixture{brokertest.New(t, o)}
}

// wantRefused asserts a refusal: no response, the gRPC code, a message naming
// the failed check, and (when check is set) a denied receipt with no release.
func (f *fixture) wantRefused(t *testing.T, resp *pb.AttestResponse, err error, code codes.Code, msg, check string) {
	t.Helper()
	if resp != nil {
		t.Fatalf("refusal released %d credential(s)", len(resp.GetCredentials()))
	}
	s, _ := status.FromError(err)
	if s.Code() != code || !strings.Contains(s.Message(), msg) {
		t.Fatalf("error = %v %q; want %v containing %q", s.Code(), s.Message(), code, msg)
	}
	if check == "" {
		return
	}
	rs := f.Receipts(t)
	if len(rs) == 0 {
		t.Fatal("no receipt for the refusal")
	}
	r := rs[0]
	if r.Allowed || r.Check != check || len(r.Released) != 0 {
		t.Fatalf("receipt = allowed %v check %q released %v; want denied by %q with nothing released", r.Allowed, r.Check, r.Released, check)
	}
	if !strings.Contains(s.Message(), r.ID) {
		t.Errorf("refusal %q does not name its receipt %s", s.Message(), r.ID)
	}
}

func TestAttestReleasesSealedCredential(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	ch, secret := f.Challenge(t)
	resp, err := f.Server.Attest(context.Background(), f.AttestRequest(t, ch, secret))
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if len(resp.GetCredentials()) != 1 {
		t.Fatalf("got %d credentials, want 1", len(resp.GetCredentials()))
	}
	cred := resp.GetCredentials()[0]
	if cred.GetMode() != pb.ReleaseMode_PCR_SEALED || cred.GetBlob().GetPcrs() == nil {
		t.Fatalf("credential mode %v with PCRs %v; want PCR_SEALED with PCRs", cred.GetMode(), cred.GetBlob().GetPcrs())
	}
	payload, err := f.Node.Open(cred)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	var tc pb.TLSCredential
	if err := proto.Unmarshal(payload, &tc); err != nil || len(tc.GetKeyPem()) == 0 {
		t.Fatalf("payload: %v", err)
	}
	rs := f.Receipts(t)
	if len(rs) != 1 || !rs[0].Allowed || rs[0].ID != resp.GetReceiptId() || len(rs[0].Released) != 1 {
		t.Fatalf("receipts = %+v; want one allowed receipt %s with one release", rs, resp.GetReceiptId())
	}
	if rs[0].EKHash != f.EKHash || rs[0].PolicyHash == "" || len(rs[0].QuoteDigest) != 32 {
		t.Errorf("receipt lacks facts: %+v", rs[0])
	}

	// The same credential, once PCR 7 changes, no longer opens.
	brokertest.Extend(t, f.RW, 7, "unknown bootloader")
	if _, err := f.Node.Open(cred); !errors.Is(err, sealing.ErrImport) {
		t.Fatalf("Open after a PCR change = %v; want %v", err, sealing.ErrImport)
	}
}

func TestAttestTPMBoundSurvivesPCRChange(t *testing.T) {
	f := newFixture(t, brokertest.Opts{Mode: "tpm_bound"})
	ch, secret := f.Challenge(t)
	resp, err := f.Server.Attest(context.Background(), f.AttestRequest(t, ch, secret))
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	cred := resp.GetCredentials()[0]
	if cred.GetMode() != pb.ReleaseMode_TPM_BOUND || cred.GetBlob().GetPcrs() != nil {
		t.Fatalf("mode %v, PCRs %v; want TPM_BOUND without PCRs", cred.GetMode(), cred.GetBlob().GetPcrs())
	}
	brokertest.Extend(t, f.RW, 7, "later measurement")
	if _, err := f.Node.Open(cred); err != nil {
		t.Fatalf("TPM_BOUND credential did not open after a PCR change: %v", err)
	}
}

func TestAttestRefusals(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	ctx := context.Background()

	t.Run("replayed challenge", func(t *testing.T) {
		ch, secret := f.Challenge(t)
		req := f.AttestRequest(t, ch, secret)
		if _, err := f.Server.Attest(ctx, req); err != nil {
			t.Fatalf("first Attest: %v", err)
		}
		before := len(f.Receipts(t))
		resp, err := f.Server.Attest(ctx, req)
		f.wantRefused(t, resp, err, codes.PermissionDenied, "challenge: challenge is unknown or already used", "")
		if after := len(f.Receipts(t)); after != before {
			t.Errorf("a replay wrote a receipt (%d -> %d)", before, after)
		}
	})
	t.Run("expired challenge", func(t *testing.T) {
		ch, secret := f.Challenge(t)
		req := f.AttestRequest(t, ch, secret)
		f.Advance(challengeTTL + time.Second)
		resp, err := f.Server.Attest(ctx, req)
		f.wantRefused(t, resp, err, codes.DeadlineExceeded, "challenge: challenge has expired", "")
	})
	t.Run("wrong nonce", func(t *testing.T) {
		ch, _ := f.Challenge(t)
		resp, err := f.Server.Attest(ctx, f.AttestRequest(t, ch, randomBytes(t, 32)))
		f.wantRefused(t, resp, err, codes.PermissionDenied, "quote_nonce:", "quote_nonce")
	})
	t.Run("quote signed by a different AK", func(t *testing.T) {
		other, err := agent.NewNode(f.RW, agent.NodeOpts{AK: "ecc"})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		ch, secret := f.Challenge(t)
		quotes, err := other.Quote(secret)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := f.Server.Attest(ctx, f.Answer(t, ch, quotes))
		f.wantRefused(t, resp, err, codes.PermissionDenied, "quote_signature:", "quote_signature")
	})
	t.Run("SHA-1 only quote", func(t *testing.T) {
		sha1Node, err := agent.NewNode(f.RW, agent.NodeOpts{Banks: []tpm2.Algorithm{tpm2.AlgSHA1}})
		if err != nil {
			t.Fatal(err)
		}
		defer sha1Node.Close()
		ch, secret := f.Challenge(t)
		quotes, err := sha1Node.Quote(secret)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := f.Server.Attest(ctx, f.Answer(t, ch, quotes))
		f.wantRefused(t, resp, err, codes.PermissionDenied, "pcr_bank: SHA-1 PCR bank is not allowed", "pcr_bank")
	})
	t.Run("PCR values not matching the policy", func(t *testing.T) {
		ch, secret := f.Challenge(t)
		brokertest.Extend(t, f.RW, 0, "rogue firmware")
		resp, err := f.Server.Attest(ctx, f.AttestRequest(t, ch, secret))
		f.wantRefused(t, resp, err, codes.PermissionDenied, "policy: no policy allows this node", "policy")
		r := f.Receipts(t)[0]
		if !strings.Contains(strings.Join(r.Failures, "\n"), "pcrs.sha256[0]") {
			t.Errorf("receipt failures %q do not name the PCR 0 condition", r.Failures)
		}
		if strings.Contains(status.Convert(err).Message(), "pcrs.sha256") {
			t.Errorf("refusal leaks policy contents: %q", status.Convert(err).Message())
		}
	})

	tampers := []struct {
		name   string
		tamper func(q *pb.Quote)
		code   codes.Code
		msg    string
		check  string
	}{
		{"attest byte flipped", func(q *pb.Quote) { q.Attest[len(q.Attest)-1] ^= 1 }, codes.PermissionDenied, "quote_signature:", "quote_signature"},
		{"signature byte flipped", func(q *pb.Quote) { q.Signature[len(q.Signature)-1] ^= 1 }, codes.PermissionDenied, "quote_signature:", "quote_signature"},
		{"PCR value changed", func(q *pb.Quote) { q.Pcrs.Values[7] = make([]byte, 32) }, codes.PermissionDenied, "pcr_digest:", "pcr_digest"},
		{"PCR value dropped", func(q *pb.Quote) { delete(q.Pcrs.Values, 3) }, codes.PermissionDenied, "pcr_digest:", "pcr_digest"},
		{"bank relabelled", func(q *pb.Quote) { q.Pcrs.HashAlg = uint32(tpm2.AlgSHA384) }, codes.PermissionDenied, "pcr_bank:", "pcr_bank"},
		{"garbage signature", func(q *pb.Quote) { q.Signature = []byte("garbage") }, codes.InvalidArgument, "input: quote signature is not a TPMT_SIGNATURE", "input"},
		{"garbage attest", func(q *pb.Quote) { q.Attest = []byte("garbage") }, codes.PermissionDenied, "quote_signature:", "quote_signature"},
	}
	for _, tc := range tampers {
		t.Run(tc.name, func(t *testing.T) {
			ch, secret := f.Challenge(t)
			req := f.AttestRequest(t, ch, secret)
			tc.tamper(req.Quotes[0])
			resp, err := f.Server.Attest(ctx, req)
			f.wantRefused(t, resp, err, tc.code, tc.msg, tc.check)
		})
	}

	// Refused before any work: nothing consumed, no receipt.
	inputs := []struct {
		name string
		req  *pb.AttestRequest
		msg  string
	}{
		{"no challenge id", &pb.AttestRequest{Quotes: []*pb.Quote{{}}}, "challenge_id is empty"},
		{"oversized challenge id", &pb.AttestRequest{ChallengeId: strings.Repeat("a", 257), Quotes: []*pb.Quote{{}}}, "challenge_id is too long"},
		{"no quotes", &pb.AttestRequest{ChallengeId: "x"}, "no quotes"},
		{"too many quotes", &pb.AttestRequest{ChallengeId: "x", Quotes: make([]*pb.Quote, 5)}, "at most 4 quotes"},
		{"oversized event log", &pb.AttestRequest{ChallengeId: "x", Quotes: []*pb.Quote{{}}, EventLog: make([]byte, verify.MaxEventLogSize+1)}, "event_log exceeds"},
		{"oversized quote", &pb.AttestRequest{ChallengeId: "x", Quotes: []*pb.Quote{{Attest: make([]byte, verify.MaxQuoteAttestSize+1)}}}, "quote attest exceeds"},
	}
	for _, tc := range inputs {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.Receipts(t))
			resp, err := f.Server.Attest(ctx, tc.req)
			f.wantRefused(t, resp, err, codes.InvalidArgument, tc.msg, "")
			if len(f.Receipts(t)) != before {
				t.Error("an invalid request wrote a receipt")
			}
		})
	}
}

// TestAttestConcurrentAnswers sends the same valid answer twice at once:
// exactly one call is answered with credentials, the other is refused as a
// used challenge, and exactly one receipt records the decision.
func TestAttestConcurrentAnswers(t *testing.T) {
	var logs syncBuffer
	f := newFixture(t, brokertest.Opts{Server: func(o *broker.ServerOpts) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	ctx := context.Background()
	const rounds = 5
	for round := range rounds {
		ch, secret := f.Challenge(t)
		req := f.AttestRequest(t, ch, secret)
		before := len(f.Receipts(t))

		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			resps [2]*pb.AttestResponse
			errs  [2]error
		)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				resps[i], errs[i] = f.Server.Attest(ctx, proto.Clone(req).(*pb.AttestRequest))
			}()
		}
		close(start)
		wg.Wait()

		won := 0
		if errs[0] != nil {
			won = 1
		}
		lost := 1 - won
		if errs[won] != nil {
			t.Fatalf("round %d: both Attest calls failed: %v; %v", round, errs[0], errs[1])
		}
		if errs[lost] == nil {
			t.Fatalf("round %d: both Attest calls released credentials for one challenge", round)
		}
		f.wantRefused(t, resps[lost], errs[lost], codes.PermissionDenied, "challenge: challenge is unknown or already used", "")
		if len(resps[won].GetCredentials()) != 1 {
			t.Fatalf("round %d: winner got %d credentials, want 1", round, len(resps[won].GetCredentials()))
		}

		rs := f.Receipts(t)
		if len(rs) != before+1 {
			t.Fatalf("round %d: %d receipts written, want exactly 1", round, len(rs)-before)
		}
		if r := rs[0]; !r.Allowed || r.ID != resps[won].GetReceiptId() || r.ChallengeID != challenge.IDOf(ch.GetChallengeId()) {
			t.Fatalf("round %d: receipt %+v; want the winner's allowed receipt %s for challenge %s", round, r, resps[won].GetReceiptId(), ch.GetChallengeId())
		}
	}
	// Whether the loser was stopped by the lookup or by the consume depends
	// on timing; both must refuse alike.
	t.Logf("%d of %d rounds lost the race at consume", strings.Count(logs.String(), "challenge used by a concurrent attestation"), rounds)
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

const challengeTTL = 60 * time.Second

// eccEKPublic is the TPMT_PUBLIC of the TPM's ECC EK, which no fixture
// trusts.
func eccEKPublic(t *testing.T, rw io.ReadWriter) []byte {
	t.Helper()
	ek, err := client.EndorsementKeyECC(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	pub, err := ek.PublicArea().Encode()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestChallengeRefusals(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	good, err := f.Node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	// Another EK of the same TPM, whose hash nobody listed.
	untrustedEK := eccEKPublic(t, f.RW)
	tests := []struct {
		name string
		req  *pb.ChallengeRequest
		code codes.Code
		msg  string
	}{
		{"EK not trusted", &pb.ChallengeRequest{EkPublic: untrustedEK, AkPublic: good.AkPublic}, codes.PermissionDenied, "ek_trust: EK is not trusted"},
		{"garbage EK", &pb.ChallengeRequest{EkPublic: []byte("garbage"), AkPublic: good.AkPublic}, codes.InvalidArgument, "input: ek_public is not a TPMT_PUBLIC"},
		{"oversized EK", &pb.ChallengeRequest{EkPublic: make([]byte, 2048), AkPublic: good.AkPublic}, codes.InvalidArgument, "input: ek_public is too large"},
		{"no AK", &pb.ChallengeRequest{EkPublic: good.EkPublic}, codes.InvalidArgument, "input: ak_public is empty"},
		{"EK as AK", &pb.ChallengeRequest{EkPublic: good.EkPublic, AkPublic: good.EkPublic}, codes.PermissionDenied, "ak_attributes: AK lacks attributes [sign]"},
		{"garbage certificate", &pb.ChallengeRequest{EkPublic: good.EkPublic, EkCertificate: []byte("garbage"), AkPublic: good.AkPublic}, codes.InvalidArgument, "input: ek_certificate is not an X.509 certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := f.Server.Challenge(context.Background(), tc.req)
			if resp != nil {
				t.Fatal("refused challenge returned a credential")
			}
			s, _ := status.FromError(err)
			if s.Code() != tc.code || !strings.Contains(s.Message(), tc.msg) {
				t.Fatalf("error = %v %q; want %v containing %q", s.Code(), s.Message(), tc.code, tc.msg)
			}
		})
	}
}

// An AK from another TPM than the EK: the broker binds the secret to EK B and
// AK A; neither TPM can activate it, so no quote can carry it.
func TestAKFromAnotherTPM(t *testing.T) {
	// TPM A: only its AK is presented.
	rwA := tpmtest.OpenSeeded(t, 1)
	nodeA, err := agent.NewNode(rwA, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	reqA, err := nodeA.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	nodeA.Close()
	rwA.Close()

	// TPM B: its trusted EK is presented with A's AK.
	rwB := tpmtest.OpenSeeded(t, 2)
	nodeB, err := agent.NewNode(rwB, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	reqB, err := nodeB.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ekB, err := nodeB.EKHash()
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse([]byte(fmt.Sprintf(`policy "any" {
  select { ek_hashes = [%q] }
  release "tls" {
    type = "tls_certificate"
    common_name = "x"
  }
}`, ekB)), "any.hcl")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := broker.NewServer(broker.ServerOpts{Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{ekB}}}, Store: st, CA: ca, Policies: pol})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := srv.Challenge(context.Background(), &pb.ChallengeRequest{EkPublic: reqB.EkPublic, AkPublic: reqA.AkPublic})
	if err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	if _, err := nodeB.Activate(ch); err == nil {
		t.Fatal("TPM B activated a credential made for another TPM's AK")
	}
	nodeB.Close()
	rwB.Close()

	// Back on TPM A (same seed, same AK): it cannot activate either, and a
	// quote with anything but the secret is refused.
	rwA = tpmtest.OpenSeeded(t, 1)
	nodeA, err = agent.NewNode(rwA, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer nodeA.Close()
	again, _ := nodeA.ChallengeRequest()
	if string(again.AkPublic) != string(reqA.AkPublic) {
		t.Fatal("seeded simulator did not reproduce the AK")
	}
	if _, err := nodeA.Activate(ch); err == nil {
		t.Fatal("TPM A activated a credential made for another TPM's EK")
	}
	quotes, err := nodeA.Quote(randomBytes(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Attest(context.Background(), &pb.AttestRequest{ChallengeId: ch.GetChallengeId(), Quotes: quotes, EkPublic: reqB.EkPublic, AkPublic: reqA.AkPublic})
	if resp != nil || status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "quote_nonce") {
		t.Fatalf("Attest = %v, %v; want PermissionDenied quote_nonce and nothing released", resp, err)
	}
}

// attestOnce answers a fresh challenge with the env's node.
func attestOnce(t *testing.T, env *brokertest.Env) (*pb.AttestResponse, error) {
	t.Helper()
	ch, secret := env.Challenge(t)
	return env.Server.Attest(context.Background(), env.AttestRequest(t, ch, secret))
}

// getNode returns the env node's record.
func getNode(t *testing.T, env *brokertest.Env) store.NodeRecord {
	t.Helper()
	n, err := env.Store.GetNode(context.Background(), env.EKHash)
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	return n
}

// reverifyHistory verifies a node record's evidence again and returns the
// history it carries.
func reverifyHistory(t *testing.T, env *brokertest.Env, n store.NodeRecord) verify.History {
	t.Helper()
	v, err := evidence.Reverify(n.Evidence, verify.Opts{Trust: verify.Trust{EKHashes: []string{env.EKHash}}})
	if err != nil {
		t.Fatalf("Reverify: %v", err)
	}
	if c := v.Clock(); c.Clock != n.Clock || c.ResetCount != n.ResetCount || c.RestartCount != n.RestartCount {
		t.Errorf("record counters %d/%d/%d, its evidence says %+v", n.Clock, n.ResetCount, n.RestartCount, c)
	}
	return *v.History()
}

// TestAttestHistoryAfterReboot reboots the simulator between attestations:
// the next attestation sees history.rebooted, which a policy can refuse, and
// the node record follows the TPM's counters.
func TestAttestHistoryAfterReboot(t *testing.T) {
	f := newFixture(t, brokertest.Opts{Mode: "tpm_bound"})
	pcrs, err := client.ReadPCRs(f.RW, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse(fmt.Appendf(nil, `policy "steady" {
  select { ek_hashes = [%q] }
  require = [
    "!history.rebooted",
    "pcrs.sha256[0] == '%x'",
    "pcrs.sha256[7] == '%x'",
  ]
  release "node-tls" {
    type        = "tls_certificate"
    common_name = "node"
  }
}`, f.EKHash, pcrs.GetPcrs()[0], pcrs.GetPcrs()[7]), "steady.hcl")
	if err != nil {
		t.Fatal(err)
	}
	f.Server.SetPolicies(pol)

	// First attestation: first seen.
	resp, err := attestOnce(t, f.Env)
	if err != nil {
		t.Fatalf("first Attest: %v", err)
	}
	first := getNode(t, f.Env)
	if first.LastReceiptID != resp.GetReceiptId() || !first.FirstSeen.Equal(first.LastSeen) || first.Evidence.Previous != nil ||
		len(first.Evidence.Quotes) != 2 || first.Evidence.ChallengeID == "" || !first.Evidence.Time.Equal(first.LastSeen) {
		t.Errorf("record after the first attestation: receipt %s (want %s), first seen %v, last seen %v, evidence at %v for challenge %q with %d quotes, previous %v",
			first.LastReceiptID, resp.GetReceiptId(), first.FirstSeen, first.LastSeen, first.Evidence.Time,
			first.Evidence.ChallengeID, len(first.Evidence.Quotes), first.Evidence.Previous)
	}
	if h := reverifyHistory(t, f.Env, first); h != (verify.History{FirstSeen: true}) {
		t.Errorf("first attestation history = %+v, want first seen", h)
	}

	// Second: same boot.
	if resp, err = attestOnce(t, f.Env); err != nil {
		t.Fatalf("second Attest: %v", err)
	}
	second := getNode(t, f.Env)
	if second.LastReceiptID != resp.GetReceiptId() || !second.FirstSeen.Equal(first.FirstSeen) || second.Clock < first.Clock ||
		second.Evidence.Previous == nil || second.Evidence.Previous.Clock != first.Clock {
		t.Errorf("record after the second attestation: receipt %s (want %s), first seen %v (want %v), clock %d (first %d), previous %+v",
			second.LastReceiptID, resp.GetReceiptId(), second.FirstSeen, first.FirstSeen, second.Clock, first.Clock, second.Evidence.Previous)
	}
	if h := reverifyHistory(t, f.Env, second); h != (verify.History{}) {
		t.Errorf("second attestation history = %+v, want nothing new", h)
	}

	// Reboot: the TPM resets, the boot measures the same PCR values.
	sim, ok := f.RW.(*simulator.Simulator)
	if !ok {
		t.Fatalf("brokertest.Env.RW is a %T, not the simulator", f.RW)
	}
	f.Node.Close()
	if err := sim.Reset(); err != nil {
		t.Fatal(err)
	}
	brokertest.Extend(t, f.RW, 0, "firmware v1")
	brokertest.Extend(t, f.RW, 7, "secure boot on")
	node, err := agent.NewNode(f.RW, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	f.Node = node

	resp, err = attestOnce(t, f.Env)
	f.wantRefused(t, resp, err, codes.PermissionDenied, "policy: no policy allows this node", "policy")
	denied := f.Receipts(t)[0]
	if want := []string{`policy "steady": require[0] !history.rebooted is false`}; !slices.Equal(denied.Failures, want) {
		t.Errorf("receipt failures = %q, want %q", denied.Failures, want)
	}
	// A policy denial is a verified attestation: the record follows.
	rebooted := getNode(t, f.Env)
	if rebooted.LastReceiptID != denied.ID || rebooted.ResetCount-second.ResetCount != 1 {
		t.Errorf("record after the reboot: receipt %s (want %s), reset count %d (was %d)",
			rebooted.LastReceiptID, denied.ID, rebooted.ResetCount, second.ResetCount)
	}
	if h := reverifyHistory(t, f.Env, rebooted); h != (verify.History{Rebooted: true, Resets: 1}) {
		t.Errorf("history after the reboot = %+v, want rebooted once", h)
	}

	// The next attestation compares with the rebooted state.
	if _, err := attestOnce(t, f.Env); err != nil {
		t.Fatalf("Attest after the reboot was recorded: %v", err)
	}
}

// TestAttestRefusesClockGoingBackwards stores a node record whose clock is
// ahead of the TPM's, with the same reset and restart counts: the next
// attestation is refused with tpm_counters, releases nothing and leaves the
// record as it was.
func TestAttestRefusesClockGoingBackwards(t *testing.T) {
	f := newFixture(t, brokertest.Opts{})
	ctx := context.Background()
	if _, err := attestOnce(t, f.Env); err != nil {
		t.Fatalf("first Attest: %v", err)
	}
	ahead := getNode(t, f.Env)
	ahead.Clock += 1 << 40
	doctored := &store.Decision{ChallengeID: "doctored-node-record", ChallengeExpiry: time.Now().Add(time.Minute),
		Receipt: &store.Receipt{EKHash: f.EKHash, Check: "test"}, Node: &ahead}
	if err := f.Store.Record(ctx, doctored); err != nil {
		t.Fatal(err)
	}

	resp, err := attestOnce(t, f.Env)
	f.wantRefused(t, resp, err, codes.PermissionDenied, "tpm_counters: TPM clock went backwards without a reset", "tpm_counters")
	if r := f.Receipts(t)[0]; len(r.Policies) != 0 || r.PolicyHash != "" {
		t.Errorf("policy was evaluated after the counters were refused: %+v", r)
	}
	if got := getNode(t, f.Env); got.Clock != ahead.Clock || got.LastReceiptID != ahead.LastReceiptID {
		t.Errorf("a refused attestation changed the node record: clock %d receipt %s, want %d %s",
			got.Clock, got.LastReceiptID, ahead.Clock, ahead.LastReceiptID)
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAttestPCRBanks: with pcr_banks the broker counts only those banks'
// quotes, and refuses a node that quoted none of them.
func TestAttestPCRBanks(t *testing.T) {
	for _, tt := range []struct {
		banks []tpm2.Algorithm
		ok    bool
	}{
		{banks: []tpm2.Algorithm{tpm2.AlgSHA256}, ok: true},
		{banks: []tpm2.Algorithm{tpm2.AlgSHA512}},
	} {
		// One simulator at a time: each case in a subtest of its own.
		t.Run(fmt.Sprint(tt.banks), func(t *testing.T) {
			f := newFixture(t, brokertest.Opts{Mode: "tpm_bound", Server: func(o *broker.ServerOpts) {
				for _, b := range tt.banks {
					o.Verify.Banks = append(o.Verify.Banks, tpm2b.TPMAlgID(b))
				}
			}})
			resp, err := attestOnce(t, f.Env)
			if tt.ok {
				if err != nil || len(resp.GetCredentials()) == 0 {
					t.Errorf("pcr_banks %v: %v", tt.banks, err)
				}
				return
			}
			f.wantRefused(t, resp, err, codes.PermissionDenied, "pcr_bank: no quote of an allowed bank (sha512)", "pcr_bank")
		})
	}
}
