package brokertest

import (
	"crypto/sha256"
	"io"
	"testing"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Sim is a simulated machine (PCR 0 and 7 extended as New does) and its
// agent node, closed when the test ends.
type Sim struct {
	RW     io.ReadWriter
	Node   *agent.Node
	EKHash string
}

// NewSim starts a simulated machine.
func NewSim(tb testing.TB) *Sim {
	tb.Helper()
	rw := tpmtest.Open(tb)
	Extend(tb, rw, 0, "firmware v1")
	Extend(tb, rw, 7, "secure boot on")
	n, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.Close)
	hash, err := n.EKHash()
	if err != nil {
		tb.Fatal(err)
	}
	return &Sim{RW: rw, Node: n, EKHash: hash}
}

// Evidence is the machine's answer to a challenge made in software
// (MakeCredential to its EK for its AK, activated in its TPM, quoted with
// the secret): what the broker's Attest verifies, presented at time at.
func (s *Sim) Evidence(tb testing.TB, at time.Time) attestation.Evidence {
	tb.Helper()
	req, err := s.Node.ChallengeRequest()
	if err != nil {
		tb.Fatal(err)
	}
	id, err := verify.Node(req.GetEkPublic(), nil, nil, req.GetAkPublic(), verify.Opts{Trust: verify.Trust{EKHashes: []string{s.EKHash}}})
	if err != nil {
		tb.Fatal(err)
	}
	secret := make([]byte, challenge.SecretSize)
	copy(secret, at.String())
	blob, enc, err := challenge.MakeCredential(id.EKPublic(), id.AKName(), secret)
	if err != nil {
		tb.Fatal(err)
	}
	got, err := s.Node.Activate(&pb.ChallengeResponse{CredentialBlob: blob, EncryptedSecret: enc})
	if err != nil {
		tb.Fatal(err)
	}
	quotes, err := s.Node.Quote(got)
	if err != nil {
		tb.Fatal(err)
	}
	ev := attestation.Evidence{Time: at, EKPublic: req.GetEkPublic(), AKPublic: req.GetAkPublic(), SecretHash: sha256.Sum256(secret)}
	for _, q := range quotes {
		ev.Quotes = append(ev.Quotes, attestation.Quote{Attest: q.GetAttest(), Signature: q.GetSignature(),
			Bank: uint16(q.GetPcrs().GetHashAlg()), PCRs: q.GetPcrs().GetValues()})
	}
	return ev
}
