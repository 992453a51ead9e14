package broker_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
)

// TestReverify verifies a node's stored evidence again: it passes as it was
// recorded (also after a JSON round trip, as `keybroker evidence show`
// exports it), and any change to it fails the check that catches it.
func TestReverify(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	for range 2 { // the second attestation is compared with the first
		if _, err := attestOnce(t, env); err != nil {
			t.Fatalf("Attest: %v", err)
		}
	}
	rec := getNode(t, env)
	receipt := env.Receipts(t)[0]
	trust := verify.Trust{EKHashes: []string{env.EKHash}}

	v, err := evidence.Reverify(rec.Evidence, verify.Opts{Trust: trust})
	if err != nil {
		t.Fatalf("Reverify: %v", err)
	}
	if d := v.QuoteDigest(); !bytes.Equal(d[:], receipt.QuoteDigest) || v.EKHash() != env.EKHash {
		t.Errorf("reverified quote digest %x for %s, receipt %x for %s", d, v.EKHash(), receipt.QuoteDigest, receipt.EKHash)
	}
	if h := v.History(); h == nil || *h != (verify.History{}) {
		t.Errorf("reverified history = %+v, want the second attestation's (nothing new)", h)
	}
	raw, err := json.Marshal(rec.Evidence)
	if err != nil {
		t.Fatal(err)
	}
	var exported attestation.Evidence
	if err := json.Unmarshal(raw, &exported); err != nil {
		t.Fatal(err)
	}
	if _, err := evidence.Reverify(exported, verify.Opts{Trust: trust}); err != nil {
		t.Fatalf("Reverify after a JSON round trip: %v", err)
	}
	// What a policy sees is what the broker saw.
	d := mustSet(t, env).Evaluate(v)
	if !d.Allowed || !slices.Equal(d.Policies, receipt.Policies) {
		t.Errorf("reverified evidence: allowed %v by %v, failures %q; receipt allowed by %v", d.Allowed, d.Policies, d.Failures, receipt.Policies)
	}

	clone := func() attestation.Evidence {
		var ev attestation.Evidence
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatal(err)
		}
		return ev
	}
	tests := []struct {
		name      string
		change    func(*attestation.Evidence)
		untrusted bool
		check     verify.Check
	}{
		{name: "untrusted EK", change: func(*attestation.Evidence) {}, untrusted: true, check: verify.CheckEKTrust},
		{name: "other secret", change: func(ev *attestation.Evidence) { ev.SecretHash[0] ^= 1 }, check: verify.CheckNonce},
		{name: "signature", change: func(ev *attestation.Evidence) {
			sig := ev.Quotes[0].Signature
			sig[len(sig)-1] ^= 1
		}, check: verify.CheckSignature},
		{name: "PCR value", change: func(ev *attestation.Evidence) { ev.Quotes[0].PCRs[7][0] ^= 1 }, check: verify.CheckPCRDigest},
		{name: "no quotes", change: func(ev *attestation.Evidence) { ev.Quotes = nil }, check: verify.CheckInput},
		{name: "event log", change: func(ev *attestation.Evidence) { ev.EventLog = []byte("not a TCG log") }, check: verify.CheckEventLog},
		{name: "counters ahead", change: func(ev *attestation.Evidence) { ev.Previous.Clock += 1 << 40 }, check: verify.CheckCounters},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := clone()
			tt.change(&ev)
			tr := trust
			if tt.untrusted {
				tr = verify.Trust{}
			}
			v, err := evidence.Reverify(ev, verify.Opts{Trust: tr})
			if v != nil || verify.FailedCheck(err) != tt.check {
				t.Fatalf("Reverify = %v, %v; want refused by %s", v, err, tt.check)
			}
		})
	}

	t.Run("counters of another AK are not compared", func(t *testing.T) {
		ev := clone()
		ev.Previous.AKName = []byte("another AK")
		ev.Previous.Clock += 1 << 40
		v, err := evidence.Reverify(ev, verify.Opts{Trust: trust})
		if err != nil {
			t.Fatal(err)
		}
		if h := v.History(); h == nil || !h.FirstSeen {
			t.Errorf("history = %+v, want first seen", h)
		}
	})
}

// mustSet returns brokertest's policy for the env's node as measured (the
// release sealed, as in brokertest's default).
func mustSet(t *testing.T, env *brokertest.Env) *policies.Set {
	t.Helper()
	pcrs, err := client.ReadPCRs(env.RW, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf(brokertest.Policy, env.EKHash, hex.EncodeToString(pcrs.GetPcrs()[0]), hex.EncodeToString(pcrs.GetPcrs()[7]),
		"pcr_sealed", "\n    pcr_bank    = \"sha256\"\n    pcrs        = [0, 7]")
	set, err := policies.Parse([]byte(src), "test.hcl")
	if err != nil {
		t.Fatal(err)
	}
	return set
}
