package evidence_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
)

// Decide's outcomes, one front end's view: the broker's Attest and the
// Vault login both decide through it.
func TestDecide(t *testing.T) {
	sim := brokertest.NewSim(t)
	pcrs, err := client.ReadPCRs(sim.RW, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	pcr0, pcr7 := hex.EncodeToString(pcrs.GetPcrs()[0]), hex.EncodeToString(pcrs.GetPcrs()[7])
	parse := func(pcr7 string) *policies.Set {
		set, err := policies.Parse(fmt.Appendf(nil, brokertest.Policy, sim.EKHash, pcr0, pcr7, "tpm_bound", ""), "p.hcl")
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	allow, deny := parse(pcr7), parse(hex.EncodeToString(make([]byte, 32)))
	opts := verify.Opts{Trust: verify.Trust{EKHashes: []string{sim.EKHash}}}
	none := func(string) (store.NodeRecord, error) { return store.NodeRecord{}, store.ErrNotFound }
	now := time.Now().UTC()
	ev := sim.Evidence(t, now)

	first := evidence.Decide(evidence.Inputs{Evidence: ev, Opts: opts, Policies: allow, Previous: none})
	if first.Refusal != nil || first.NodeRecord == nil || !first.Decision.Allowed {
		t.Fatalf("allowed node: refusal %+v, record %v", first.Refusal, first.NodeRecord)
	}
	var rec store.Receipt
	first.FillReceipt(&rec)
	if rec.EKHash != sim.EKHash || len(rec.QuoteDigest) != 32 || !slices.Equal(rec.Policies, []string{"nodes"}) || rec.PolicyHash == "" {
		t.Fatalf("receipt fields %+v", rec)
	}
	if first.NodeRecord.EKHash != sim.EKHash || !first.NodeRecord.FirstSeen.Equal(now) || len(first.NodeRecord.Evidence.Quotes) == 0 {
		t.Fatalf("node record %+v", first.NodeRecord)
	}
	// The quarantine state is carried over to the new record: only the
	// broker's quarantine step changes it.
	quarantined := func(string) (store.NodeRecord, error) {
		r := *first.NodeRecord
		r.Kubelet, r.Quarantined = "node-a", true
		return r, nil
	}
	if again := evidence.Decide(evidence.Inputs{Evidence: sim.Evidence(t, now), Opts: opts, Policies: allow, Previous: quarantined}); again.NodeRecord == nil ||
		again.NodeRecord.Kubelet != "node-a" || !again.NodeRecord.Quarantined {
		t.Fatalf("the new record dropped the quarantine state: %+v", again.NodeRecord)
	}
	later := func(string) (store.NodeRecord, error) {
		r := *first.NodeRecord
		r.Clock += 1 << 40 // the TPM's clock went back since
		return r, nil
	}
	otherSecret := ev
	otherSecret.SecretHash[0] ^= 1
	otherPCR := sim.Evidence(t, now)
	otherPCR.Quotes[0].PCRs = map[uint32][]byte{}
	for i, v := range ev.Quotes[0].PCRs {
		otherPCR.Quotes[0].PCRs[i] = v
	}
	otherPCR.Quotes[0].PCRs[7] = make([]byte, 32)
	fault := errors.New("store down")

	for _, tt := range []struct {
		name      string
		in        evidence.Inputs
		check     string
		deny      bool
		hasRecord bool
	}{
		{"untrusted EK", evidence.Inputs{Evidence: ev, Policies: allow, Previous: none}, string(verify.CheckEKTrust), false, false},
		{"another challenge's secret", evidence.Inputs{Evidence: otherSecret, Opts: opts, Policies: allow, Previous: none}, string(verify.CheckNonce), false, false},
		{"a PCR value the quote does not sign", evidence.Inputs{Evidence: otherPCR, Opts: opts, Policies: allow, Previous: none}, string(verify.CheckPCRDigest), true, false},
		{"TPM clock gone back", evidence.Inputs{Evidence: ev, Opts: opts, Policies: allow, Previous: later}, string(verify.CheckCounters), true, false},
		{"the store fails", evidence.Inputs{Evidence: ev, Opts: opts, Policies: allow, Previous: func(string) (store.NodeRecord, error) { return store.NodeRecord{}, fault }}, evidence.CheckInternal, false, false},
		{"the policies deny", evidence.Inputs{Evidence: ev, Opts: opts, Policies: deny, Previous: none}, evidence.CheckPolicy, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := evidence.Decide(tt.in)
			r := o.Refusal
			if r == nil {
				t.Fatal("allowed")
			}
			if r.Check != tt.check || r.Deny != tt.deny || (o.NodeRecord != nil) != tt.hasRecord {
				t.Fatalf("refusal %q (deny %v, record %v): want %q (deny %v, record %v); cause %v",
					r.Check, r.Deny, o.NodeRecord != nil, tt.check, tt.deny, tt.hasRecord, r.Err)
			}
			if tt.check == evidence.CheckInternal && !errors.Is(r.Err, fault) {
				t.Fatalf("internal refusal's cause %v", r.Err)
			}
		})
	}
}
