package broker_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// floorPayloadSize is about the size of a released TLSCredential (PKCS#8 key,
// leaf and CA certificates in PEM).
const floorPayloadSize = 1536

// BenchmarkCryptoFloor times the crypto one release needs, one step by one
// and in sequence ("all"), each step done by the broker's own code for it
// alone (as keybroker loadgen's floor): the encoding around each step's
// crypto counts as floor, and work cut from a step lowers the floor with
// it.
func BenchmarkCryptoFloor(b *testing.B) {
	f := newCryptoFloor(b, newBenchNode(b))
	ops := []struct {
		name string
		op   func(testing.TB)
	}{
		{"ak-verify", f.verifyAK},
		{"make-credential", f.makeCredential},
		{"seal-credential", f.sealCredential},
		{"p256-cert", f.issueCert},
		{"all", f.all},
	}
	for _, o := range ops {
		b.Run(o.name, func(b *testing.B) {
			for b.Loop() {
				o.op(b)
			}
		})
	}
}

// BenchmarkAttestRelease times the broker's side of one release (Challenge,
// then Attest with a PCR_SEALED policy) for a node whose EK and AK exist;
// the node's TPM work is not timed. Each mode reports its cost as a multiple
// of the crypto floor measured in the same run (x-floor).
func BenchmarkAttestRelease(b *testing.B) {
	n := newBenchNode(b)
	f := newCryptoFloor(b, n)

	// The floor is a sub-benchmark rather than a testing.Benchmark call:
	// testing.Benchmark deadlocks inside a benchmark, as both hold the testing
	// package's benchmark lock.
	var floorNs float64
	b.Run("floor", func(b *testing.B) {
		for b.Loop() {
			f.all(b)
		}
		floorNs = nsPerOp(b)
	})

	b.Run("in-process", func(b *testing.B) {
		n.benchRelease(b, n.Server.Challenge, n.Server.Attest, floorNs)
	})

	b.Run("grpc-loopback", func(b *testing.B) {
		c := startBenchBroker(b, n)
		n.benchRelease(b,
			func(ctx context.Context, r *pb.ChallengeRequest) (*pb.ChallengeResponse, error) {
				return c.Challenge(ctx, r)
			},
			func(ctx context.Context, r *pb.AttestRequest) (*pb.AttestResponse, error) {
				return c.Attest(ctx, r)
			},
			floorNs)
	})
}

// benchNode is the fixture's node and in-process Server (PCR_SEALED over
// sha256 PCR 0 and 7), with what the benchmarks reuse: the challenge
// request, the sealed PCR values and the policy source.
type benchNode struct {
	*brokertest.Env
	req    *pb.ChallengeRequest
	pcrs   *tpmpb.PCRs
	policy []byte
}

func newBenchNode(b *testing.B) *benchNode {
	b.Helper()
	n := &benchNode{Env: brokertest.New(b, brokertest.Opts{})}
	var err error
	if n.req, err = n.Node.ChallengeRequest(); err != nil {
		b.Fatal(err)
	}
	if n.pcrs, err = client.ReadPCRs(n.RW, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}}); err != nil {
		b.Fatal(err)
	}
	v := n.pcrs.GetPcrs()
	n.policy = fmt.Appendf(nil, brokertest.Policy, n.EKHash, hex.EncodeToString(v[0]), hex.EncodeToString(v[7]),
		"pcr_sealed", "\n    pcr_bank    = \"sha256\"\n    pcrs        = [0, 7]")
	return n
}

// answer is the node's side of a challenge: activate it in the TPM and quote
// with the secret.
func (n *benchNode) answer(tb testing.TB, ch *pb.ChallengeResponse) *pb.AttestRequest {
	tb.Helper()
	secret, err := n.Node.Activate(ch)
	if err != nil {
		tb.Fatalf("Activate: %v", err)
	}
	quotes, err := n.Node.Quote(secret)
	if err != nil {
		tb.Fatalf("Quote: %v", err)
	}
	return &pb.AttestRequest{ChallengeId: ch.GetChallengeId(), Quotes: quotes,
		EkPublic: n.req.EkPublic, EkCertificate: n.req.EkCertificate, EkIntermediates: n.req.EkIntermediates, AkPublic: n.req.AkPublic}
}

// benchRelease times challengeFn and attestFn, one release per iteration,
// with the node's TPM work and request building excluded, then reports the
// cost against the floor.
func (n *benchNode) benchRelease(b *testing.B,
	challengeFn func(context.Context, *pb.ChallengeRequest) (*pb.ChallengeResponse, error),
	attestFn func(context.Context, *pb.AttestRequest) (*pb.AttestResponse, error),
	floorNs float64,
) {
	ctx := context.Background()
	release := func() {
		ch, err := challengeFn(ctx, n.req)
		if err != nil {
			b.Fatalf("Challenge: %v", err)
		}
		b.StopTimer()
		req := n.answer(b, ch)
		b.StartTimer()
		resp, err := attestFn(ctx, req)
		if err != nil {
			b.Fatalf("Attest: %v", err)
		}
		if len(resp.GetCredentials()) != 1 || resp.GetCredentials()[0].GetMode() != pb.ReleaseMode_PCR_SEALED {
			b.Fatalf("Attest released %v; want one PCR_SEALED credential", resp.GetCredentials())
		}
	}
	release() // warm up (connection, TLS handshake) and check the setup
	for b.Loop() {
		release()
	}
	if floorNs == 0 {
		b.Log("floor not measured (filtered out by -bench): no x-floor")
		return
	}
	b.ReportMetric(floorNs, "floor-ns/op")
	b.ReportMetric(nsPerOp(b)/floorNs, "x-floor")
}

// startBenchBroker starts a broker on 127.0.0.1 from a configuration file
// trusting n, and returns a client dialled over TLS with the broker's CA.
func startBenchBroker(b *testing.B, n *benchNode) pb.BrokerClient {
	b.Helper()
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nodes.hcl"), n.policy, 0o600); err != nil {
		b.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "keybroker.hcl")
	cfgSrc := fmt.Sprintf(`listen       = "127.0.0.1:0"
data_dir     = "data"
server_names = ["127.0.0.1"]
policies     = ["nodes.hcl"]
ek_allow     = [%q]
# One node attests thousands of times: no admission limits.
limits {
  challenge_per_ek              = "off"
  challenge_per_address         = "off"
  attest_per_ek                 = "off"
  attest_per_address            = "off"
  outstanding_challenges_per_ek = 0
}
`, n.EKHash)
	if err := os.WriteFile(cfgPath, []byte(cfgSrc), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg, err := broker.LoadConfig(cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	r, err := broker.Start(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Stop)
	conn, err := agent.Dial(r.Addr(), r.CA.BundlePEM(), "")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return pb.NewBrokerClient(conn)
}

// cryptoFloor holds the inputs of the floor's primitives, made outside the
// timer from the simulator's keys and a real quote.
type cryptoFloor struct {
	akKey     *rsa.PublicKey
	digest    []byte // SHA-256 of a quote's TPMS_ATTEST
	signature []byte // its RSASSA signature by the AK
	node      *verify.NodeIdentity
	akName    []byte
	pcrs      *tpmpb.PCRs
	ca        *issue.CA
	leaf      issue.TLSTemplate
	payload   []byte
}

func newCryptoFloor(b *testing.B, n *benchNode) *cryptoFloor {
	b.Helper()
	f := &cryptoFloor{pcrs: n.pcrs}

	akPub, err := tpm2.DecodePublic(n.req.GetAkPublic())
	if err != nil {
		b.Fatal(err)
	}
	key, err := akPub.Key()
	if err != nil {
		b.Fatal(err)
	}
	var ok bool
	if f.akKey, ok = key.(*rsa.PublicKey); !ok {
		b.Fatalf("AK is %T, want *rsa.PublicKey", key)
	}
	quotes, err := n.Node.Quote(randomBytes(b, challenge.SecretSize))
	if err != nil {
		b.Fatal(err)
	}
	sig, err := tpm2.DecodeSignature(bytes.NewBuffer(quotes[0].GetSignature()))
	if err != nil || sig.RSA == nil {
		b.Fatalf("quote signature is not RSA: %v", err)
	}
	sum := sha256.Sum256(quotes[0].GetAttest())
	f.digest, f.signature = sum[:], sig.RSA.Signature
	if err := rsa.VerifyPKCS1v15(f.akKey, crypto.SHA256, f.digest, f.signature); err != nil {
		b.Fatalf("quote does not verify: %v", err)
	}

	f.node, err = verify.Node(n.req.GetEkPublic(), n.req.GetEkCertificate(), n.req.GetEkIntermediates(), n.req.GetAkPublic(), verify.Opts{Trust: verify.Trust{EKHashes: []string{n.EKHash}}})

	if err != nil {
		b.Fatal(err)
	}
	f.akName = f.node.AKName()

	if f.ca, err = issue.LoadOrCreateCA(b.TempDir(), issue.CAOpts{}); err != nil {
		b.Fatal(err)
	}
	f.leaf = issue.TLSTemplate{CommonName: "node-" + n.EKHash[:12], DNSNames: []string{n.EKHash[:12] + ".nodes.test"}, TTL: 2 * time.Hour}
	f.payload = randomBytes(b, floorPayloadSize)
	return f
}

// verifyAK checks the quote's signature with the AK.
func (f *cryptoFloor) verifyAK(tb testing.TB) {
	if err := rsa.VerifyPKCS1v15(f.akKey, crypto.SHA256, f.digest, f.signature); err != nil {
		tb.Fatal(err)
	}
}

// makeCredential encrypts a challenge secret to the EK for the AK's name.
func (f *cryptoFloor) makeCredential(tb testing.TB) {
	if _, _, err := challenge.MakeCredentialTo(f.node.EKKey(), f.akName, make([]byte, challenge.SecretSize)); err != nil {
		tb.Fatal(err)
	}
}

// sealCredential seals the payload to the EK and PCRs 0 and 7 as the
// broker does a PCR_SEALED release: an import blob for a fresh content key,
// the payload encrypted under it (JWE, AES-256-GCM).
func (f *cryptoFloor) sealCredential(tb testing.TB) {
	if _, err := sealing.SealCredentialTo(f.node.EKKey(), "floor", pb.CredentialType_TLS_CERTIFICATE, f.payload, f.pcrs); err != nil {
		tb.Fatal(err)
	}
}

// issueCert makes a P-256 key and its TLS certificate, signed by the CA,
// as a tls_certificate release.
func (f *cryptoFloor) issueCert(tb testing.TB) {
	if _, err := f.ca.IssueTLS(f.leaf); err != nil {
		tb.Fatal(err)
	}
}

// all does one of each primitive, as one release does.
func (f *cryptoFloor) all(tb testing.TB) {
	f.makeCredential(tb)
	f.verifyAK(tb)
	f.issueCert(tb)
	f.sealCredential(tb)
}

// nsPerOp is the timed nanoseconds per iteration of a finished b.Loop.
func nsPerOp(b *testing.B) float64 {
	if b.N == 0 {
		return 0
	}
	return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
}
