package evidence_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
	tpm2b "github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
)

// The one verify.Opts reaches every check of Reverify and Decide: the EK
// trust, SHA-1 (refused unless allowed) and the banks that count.
func TestOptsReachEveryCheck(t *testing.T) {
	sim := brokertest.NewSim(t)
	n, err := agent.NewNode(sim.RW, agent.NodeOpts{Banks: []tpm2.Algorithm{tpm2.AlgSHA1, tpm2.AlgSHA256}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	sha1Sim := &brokertest.Sim{RW: sim.RW, Node: n, EKHash: sim.EKHash}
	ev := sha1Sim.Evidence(t, time.Now().UTC())
	trust := verify.Trust{EKHashes: []string{sim.EKHash}}
	set, err := policies.Parse([]byte(`policy "nodes" {
  select { ek_hashes = ["`+sim.EKHash+`"] }
}`), "p.hcl")
	if err != nil {
		t.Fatal(err)
	}
	none := func(string) (store.NodeRecord, error) { return store.NodeRecord{}, store.ErrNotFound }

	tests := []struct {
		name      string
		opts      verify.Opts
		wantCheck verify.Check // "" allowed
		wantErr   string
		wantBanks []tpm2b.TPMAlgID
	}{
		{name: "default refuses the SHA-1 quote", opts: verify.Opts{Trust: trust},
			wantCheck: verify.CheckBank, wantErr: "SHA-1 PCR bank is not allowed"},
		{name: "AllowSHA1 accepts it", opts: verify.Opts{Trust: trust, AllowSHA1: true},
			wantBanks: []tpm2b.TPMAlgID{tpm2b.TPMAlgSHA1, tpm2b.TPMAlgSHA256}},
		{name: "Banks leave SHA-1 out", opts: verify.Opts{Trust: trust, AllowSHA1: true, Banks: []tpm2b.TPMAlgID{tpm2b.TPMAlgSHA256}},
			wantBanks: []tpm2b.TPMAlgID{tpm2b.TPMAlgSHA256}},
		{name: "Banks still refuse SHA-1 without AllowSHA1", opts: verify.Opts{Trust: trust, Banks: []tpm2b.TPMAlgID{tpm2b.TPMAlgSHA256}},
			wantCheck: verify.CheckBank, wantErr: "SHA-1 PCR bank is not allowed"},
		{name: "Banks the node did not quote", opts: verify.Opts{Trust: trust, AllowSHA1: true, Banks: []tpm2b.TPMAlgID{tpm2b.TPMAlgSHA512}},
			wantCheck: verify.CheckBank, wantErr: "no quote of an allowed bank (sha512)"},
		{name: "Trust without the EK", opts: verify.Opts{AllowSHA1: true},
			wantCheck: verify.CheckEKTrust, wantErr: "EK is not trusted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := evidence.Reverify(ev, tt.opts)
			o := evidence.Decide(evidence.Inputs{Evidence: ev, Opts: tt.opts, Policies: set, Previous: none})
			if tt.wantCheck != "" {
				if verify.FailedCheck(err) != tt.wantCheck || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Reverify: %v, want %s: %s", err, tt.wantCheck, tt.wantErr)
				}
				if o.Refusal == nil || o.Refusal.Check != string(tt.wantCheck) || !strings.Contains(o.Refusal.Err.Error(), tt.wantErr) {
					t.Errorf("Decide refusal %+v, want %s: %s", o.Refusal, tt.wantCheck, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Reverify: %v", err)
			}
			if got := v.Banks(); !equalBanks(got, tt.wantBanks) {
				t.Errorf("Reverify verified banks %v, want %v", got, tt.wantBanks)
			}
			if o.Refusal != nil || !o.Decision.Allowed || !equalBanks(o.Verified.Banks(), tt.wantBanks) {
				t.Errorf("Decide: refusal %+v, allowed %v", o.Refusal, o.Decision.Allowed)
			}
		})
	}
}

func equalBanks(got, want []tpm2b.TPMAlgID) bool {
	return slices.Equal(slices.Sorted(slices.Values(got)), want)
}
