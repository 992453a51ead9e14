package softtpm

import (
	"io"
	"testing"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/agent"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// simNode is the real-TPM side of the agreement tests: an EK and an AK of
// one key type in the embedded simulator, used as the agent uses them.
type simNode struct {
	rw     io.ReadWriter
	ek, ak *client.Key
	ekFn   func(io.ReadWriter) (*client.Key, error)
}

func newSimNode(t *testing.T, rw io.ReadWriter, key KeyType) *simNode {
	t.Helper()
	ekFn, akFn := client.EndorsementKeyECC, client.AttestationKeyECC
	if key == RSA {
		ekFn, akFn = client.EndorsementKeyRSA, client.AttestationKeyRSA
	}
	ek, err := ekFn(rw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ek.Close)
	ak, err := akFn(rw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ak.Close)
	return &simNode{rw: rw, ek: ek, ak: ak, ekFn: ekFn}
}

// public decodes a simulator key's public area as go-tpm's TPMT_PUBLIC.
func public(t *testing.T, k *client.Key) *tpm2.TPMTPublic {
	t.Helper()
	enc, err := k.PublicArea().Encode()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](enc)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func (s *simNode) ekPublic(t *testing.T) *tpm2.TPMTPublic { return public(t, s.ek) }

func (s *simNode) akName(t *testing.T) []byte {
	t.Helper()
	name, err := tpm2.ObjectName(public(t, s.ak))
	if err != nil {
		t.Fatal(err)
	}
	return name.Buffer
}

func (s *simNode) challengeRequest(t *testing.T) *pb.ChallengeRequest {
	t.Helper()
	return &pb.ChallengeRequest{EkPublic: tpm2.Marshal(public(t, s.ek)), AkPublic: tpm2.Marshal(public(t, s.ak))}
}

// activate is TPM2_ActivateCredential in the simulator, as agent.Node runs it.
func (s *simNode) activate(resp *pb.ChallengeResponse) ([]byte, error) {
	sess, err := client.NewEKSession(s.rw)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	ekAuth, err := sess.Auth()
	if err != nil {
		return nil, err
	}
	akAuth := legacy.AuthCommand{Session: legacy.HandlePasswordSession, Attributes: legacy.AttrContinueSession}
	return legacy.ActivateCredentialUsingAuth(s.rw, []legacy.AuthCommand{akAuth, ekAuth}, s.ak.Handle(), s.ek.Handle(),
		resp.GetCredentialBlob()[2:], resp.GetEncryptedSecret()[2:])
}

// quote is TPM2_Quote of all sha256 PCRs in the simulator, as agent.Node
// sends it.
func (s *simNode) quote(t *testing.T, secret []byte) *pb.Quote {
	t.Helper()
	all := make([]int, NumPCRs)
	for i := range all {
		all[i] = i
	}
	q, err := s.ak.Quote(legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: all}, secret)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.Quote{Attest: q.GetQuote(), Signature: q.GetRawSig(), Pcrs: agent.PCRValuesToProto(q.GetPcrs())}
}

// open opens c in the simulator with a freshly loaded EK: go-tpm-tools
// keeps one EK policy session per loaded key, and a refused TPM2_Import
// leaves it extended, failing every later use of that key.
func (s *simNode) open(c *pb.Credential) ([]byte, error) {
	ek, err := s.ekFn(s.rw)
	if err != nil {
		return nil, err
	}
	defer ek.Close()
	return sealing.OpenCredential(ek, c)
}

// pcrs reads the simulator's sha256 PCRs.
func (s *simNode) pcrs(t *testing.T, idx ...int) map[uint32][]byte {
	t.Helper()
	p, err := client.ReadPCRs(s.rw, legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: idx})
	if err != nil {
		t.Fatal(err)
	}
	return p.GetPcrs()
}

func (s *simNode) extend(t *testing.T, pcr int, digest []byte) {
	t.Helper()
	if err := legacy.PCRExtend(s.rw, tpmutil.Handle(pcr), legacy.AlgSHA256, digest, ""); err != nil {
		t.Fatal(err)
	}
}
