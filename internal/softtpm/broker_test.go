package softtpm

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// newServer is a broker Server that trusts node by EK hash and releases a
// TLS certificate in mode to it while its sha256 PCRs 0 and 7 hold their
// current values (brokertest.Policy).
func newServer(t *testing.T, node *Node, mode string) *broker.Server {
	t.Helper()
	pcrs, err := node.PCRs(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	extra := "\n    pcr_bank    = \"sha256\"\n    pcrs        = [0, 7]"
	if mode == "tpm_bound" {
		extra = ""
	}
	src := fmt.Sprintf(brokertest.Policy, node.EKHash(), hex.EncodeToString(pcrs[0]), hex.EncodeToString(pcrs[7]), mode, extra)
	pol, err := policies.Parse([]byte(src), "test.hcl")
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := broker.NewServer(broker.ServerOpts{
		Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{node.EKHash()}}}, Store: brokertest.OpenStore(t), CA: ca, Policies: pol,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// attest runs Challenge, Activate, Quote and Attest against s.
func attest(t *testing.T, s *broker.Server, node *Node) (*pb.AttestResponse, error) {
	t.Helper()
	ctx := context.Background()
	ch, err := s.Challenge(ctx, node.ChallengeRequest())
	if err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	secret, err := node.Activate(ch)
	if err != nil {
		t.Fatalf("Activate: %v", err)
	}
	quotes, err := node.Quote(secret)
	if err != nil {
		t.Fatalf("Quote: %v", err)
	}
	return s.Attest(ctx, node.AttestRequest(ch.GetChallengeId(), quotes))
}

// A softtpm node is attested by a real broker and opens the TLS credential
// it releases, for ECC and RSA nodes, TPM-bound and PCR-sealed; a sealed
// credential stops opening once a sealed PCR changes, and another node
// cannot open it.
func TestBrokerReleasesToNode(t *testing.T) {
	for _, key := range keyTypes {
		for _, mode := range []string{"tpm_bound", "pcr_sealed"} {
			t.Run(key.String()+"/"+mode, func(t *testing.T) {
				node := newNode(t, key)
				s := newServer(t, node, mode)
				resp, err := attest(t, s, node)
				if err != nil {
					t.Fatalf("Attest: %v", err)
				}
				if len(resp.GetCredentials()) != 1 {
					t.Fatalf("%d credentials, want 1", len(resp.GetCredentials()))
				}
				cred := resp.GetCredentials()[0]
				wantMode := pb.ReleaseMode_TPM_BOUND
				if mode == "pcr_sealed" {
					wantMode = pb.ReleaseMode_PCR_SEALED
				}
				if cred.GetMode() != wantMode || cred.GetType() != pb.CredentialType_TLS_CERTIFICATE {
					t.Fatalf("credential %v %v, want %v TLS_CERTIFICATE", cred.GetMode(), cred.GetType(), wantMode)
				}
				payload, err := node.Open(cred)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				var tc pb.TLSCredential
				if err := proto.Unmarshal(payload, &tc); err != nil {
					t.Fatal(err)
				}
				if _, err := tls.X509KeyPair(tc.GetCertificatePem(), tc.GetKeyPem()); err != nil {
					t.Fatalf("released key does not match its certificate: %v", err)
				}

				other := newNode(t, key)
				if _, err := other.Open(cred); !errors.Is(err, ErrIntegrity) {
					t.Errorf("another node opened the credential: %v", err)
				}
				if err := node.Extend(tpm2.TPMAlgSHA256, 7, make([]byte, 32)); err != nil {
					t.Fatal(err)
				}
				_, err = node.Open(cred)
				if mode == "pcr_sealed" && !errors.Is(err, ErrPolicy) {
					t.Errorf("sealed credential opened after PCR 7 changed: %v", err)
				}
				if mode == "tpm_bound" && err != nil {
					t.Errorf("TPM-bound credential refused after PCR 7 changed: %v", err)
				}
				// The changed boot state is refused by the policy: nothing released.
				if resp, err := attest(t, s, node); err == nil || len(resp.GetCredentials()) > 0 {
					t.Errorf("broker released to a node whose PCR 7 changed: %v", err)
				}
			})
		}
	}
}

// A node the broker does not trust gets no challenge.
func TestBrokerRefusesUntrustedNode(t *testing.T) {
	trusted, stranger := newNode(t, ECC), newNode(t, ECC)
	s := newServer(t, trusted, "tpm_bound")
	if _, err := s.Challenge(context.Background(), stranger.ChallengeRequest()); err == nil {
		t.Fatal("Challenge succeeded for an EK the broker does not trust")
	}
}
