package agent_test

import (
	"context"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// A node quotes only the banks the broker counts (its pcr_banks, sent in
// the challenge): one TPM signature per bank saved, and the node record
// keeps only what counts.
func TestQuotesOnlyCountedBanks(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{SPIFFE: true})
	for _, tt := range []struct {
		name  string
		banks []string
		want  []uint16
	}{
		{"pcr_banks unset: every bank", nil, []uint16{uint16(tpm2.TPMAlgSHA256), uint16(tpm2.TPMAlgSHA384)}},
		{"pcr_banks sha256", []string{"sha256"}, []uint16{uint16(tpm2.TPMAlgSHA256)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := brokertest.Start(t, brokertest.StartOpts{Policy: env.PolicySource, EKHashes: []string{env.EKHash},
				TrustDomain: brokertest.TrustDomain, PCRBanks: tt.banks})
			if _, err := agent.Attest(testContext(t), brokerClient(t, r), env.Node, agent.AttestOpts{}); err != nil {
				t.Fatalf("Attest: %v", err)
			}
			n, err := r.Store().GetNode(context.Background(), env.EKHash)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint16
			for _, q := range n.Evidence.Quotes {
				got = append(got, q.Bank)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("quoted banks %04x, want %04x", got, tt.want)
			}
		})
	}
}

// QuoteFor quotes the counted banks the TPM has, or every bank when the
// broker counts none of them (its refusal then names what it wants).
func TestQuoteFor(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	sha256, sha384, sha512 := uint32(tpm2.TPMAlgSHA256), uint32(tpm2.TPMAlgSHA384), uint32(tpm2.TPMAlgSHA512)
	for _, tt := range []struct {
		banks []uint32
		want  int
	}{
		{nil, 2},
		{[]uint32{sha384}, 1},
		{[]uint32{sha256, sha512}, 1},
		{[]uint32{sha512}, 2},
	} {
		qs, err := env.Node.QuoteFor(&pb.ChallengeResponse{PcrBanks: tt.banks}, make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) != tt.want {
			t.Fatalf("banks %04x: %d quotes, want %d", tt.banks, len(qs), tt.want)
		}
		for _, q := range qs {
			if len(tt.banks) > 0 && len(qs) < 2 && !slices.Contains(tt.banks, uint32(q.GetPcrs().GetHashAlg())) {
				t.Fatalf("banks %04x: quoted bank %04x", tt.banks, q.GetPcrs().GetHashAlg())
			}
		}
	}
}
