package evidence_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/idlog"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
)

// idPolicy allows the node unless its record shows an identity handed to
// an executable that matched no signed: selector.
const idPolicy = `policy "nodes" {
  select {
    ek_hashes = [%q]
  }
  require = [
    "identities.present",
    "identities.issued.all(i, i.selectors.exists(s, s.startsWith('signed:')))",
  ]
  release "node-tls" {
    type        = "tls_certificate"
    mode        = "tpm_bound"
    ttl         = "2h"
    common_name = "node-${ek_hash_short}"
  }
}
`

// The identity record through the one pipeline: it replays against the
// quoted PCR, policies read it, and a record that does not replay refuses
// the attestation as a bad event log does (deny-listed: the TPM answered).
func TestDecideIdentityLog(t *testing.T) {
	sim := brokertest.NewSim(t)
	pcr := agent.TPMPCR{RW: sim.RW, Index: idlog.DefaultPCR}
	lf, err := idlog.Open(t.TempDir(), idlog.Opts{BootID: "boot-1"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	now := time.Now().UTC()
	signed := []string{"unix:uid:1000", "signed:key:release"}
	for i, sel := range [][]string{signed, signed, {"unix:uid:0"}} {
		h := idlog.Issued{Type: idlog.TypeX509, SPIFFEID: fmt.Sprintf("spiffe://example.org/w%d", i), Serial: fmt.Sprintf("%x", i+10),
			Selectors: sel, ExeSHA256: strings.Repeat("ab", 32), UID: 1000, Time: now}
		if _, err := lf.Append(h, pcr); err != nil {
			t.Fatal(err)
		}
	}
	set, err := policies.Parse(fmt.Appendf(nil, idPolicy, sim.EKHash), "p.hcl")
	if err != nil {
		t.Fatal(err)
	}
	opts := verify.Opts{Trust: verify.Trust{EKHashes: []string{sim.EKHash}}}
	none := func(string) (store.NodeRecord, error) { return store.NodeRecord{}, store.ErrNotFound }
	segment := lf.Segment()
	decide := func(log []byte) *evidence.Outcome {
		ev := sim.Evidence(t, now)
		ev.IdentityLog = log
		return evidence.Decide(evidence.Inputs{Evidence: ev, Opts: opts, Policies: set, Previous: none})
	}

	// Replayed, verified and stored, but an identity went to an
	// executable no signed: selector matched: the policy denies.
	o := decide(segment)
	if o.Refusal == nil || o.Refusal.Check != evidence.CheckPolicy || !o.Refusal.Deny {
		t.Fatalf("refusal %+v, want the policy's", o.Refusal)
	}
	got := o.Verified.IdentityLog()
	if got == nil || got.PCR != idlog.DefaultPCR || got.BootID != "boot-1" || len(got.Issued) != 3 || got.Issued[2].SPIFFEID != "spiffe://example.org/w2" {
		t.Fatalf("verified identity log %+v", got)
	}
	if !bytes.Equal(o.NodeRecord.Evidence.IdentityLog, segment) {
		t.Fatal("the node record does not keep the identity log")
	}
	if !strings.Contains(strings.Join(o.Decision.Failures, "\n"), "identities.issued.all") {
		t.Fatalf("failures %q do not name the identities condition", o.Decision.Failures)
	}

	// The receipt covers the verified log: its SHA-256 and the PCR value
	// it replayed to.
	var rec store.Receipt
	o.FillReceipt(&rec)
	sum := sha256.Sum256(segment)
	if !bytes.Equal(rec.IdentityLogSHA256, sum[:]) || !bytes.Equal(rec.IdentityLogPCR, got.Value[:]) || got.Value == ([32]byte{}) {
		t.Fatalf("receipt identity log %x / %x, want %x / %x", rec.IdentityLogSHA256, rec.IdentityLogPCR, sum, got.Value)
	}

	lines := bytes.SplitAfter(segment, []byte("\n"))
	// The record of an earlier boot moves to EarlierIdentityLogs, bound to
	// the receipt that verified it; the same boot's record does not. A
	// continuation is the same TPM boot (reset count) and the whole stored
	// log a prefix of the new one: the same boot line resent after a
	// reboot does not drop the previous boot's log.
	prev := *o.NodeRecord
	prev.LastReceiptID = "receipt-of-boot-0"
	boot0 := bytes.Replace(segment, []byte("boot-1"), []byte("boot-0"), 1)
	firstTwo := segment[:len(lines[0])+len(lines[1])]
	otherHandout := bytes.Join([][]byte{lines[0], bytes.Replace(lines[1], []byte("w0"), []byte("w7"), 1)}, nil)
	big := make([]byte, idlog.MaxSize-len(boot0))
	xSum := sha256.Sum256([]byte("x"))
	chain := sha256.Sum256(append(make([]byte, 32), xSum[:]...))
	for _, tt := range []struct {
		name       string
		last       []byte
		resetCount uint32 // added to the node's
		earlier    []store.IdentityLog
		want       []store.IdentityLog
	}{
		{"another boot", boot0, 0, nil, []store.IdentityLog{{ReceiptID: "receipt-of-boot-0", Log: boot0}}},
		{"the same boot", firstTwo, 0, nil, nil},
		{"the same boot line after a reboot", firstTwo, 1, nil, []store.IdentityLog{{ReceiptID: "receipt-of-boot-0", Log: firstTwo}}},
		{"the same boot line, other handouts", otherHandout, 0, nil, []store.IdentityLog{{ReceiptID: "receipt-of-boot-0", Log: otherHandout}}},
		{"older ones dropped into a digest chain", boot0, 0, []store.IdentityLog{{ReceiptID: "r-1", Log: big}, {ReceiptID: "r-2", Log: []byte("x")}},
			[]store.IdentityLog{{ReceiptID: "receipt-of-boot-0", Log: boot0}, {ReceiptID: "r-1", Log: big, Dropped: 1, DroppedSHA256: chain[:]}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := prev
			p.Evidence.IdentityLog, p.EarlierIdentityLogs = tt.last, tt.earlier
			p.ResetCount -= tt.resetCount
			ev := sim.Evidence(t, now.Add(time.Second))
			ev.IdentityLog = segment
			o := evidence.Decide(evidence.Inputs{Evidence: ev, Opts: opts, Policies: set,
				Previous: func(string) (store.NodeRecord, error) { return p, nil }})
			if o.NodeRecord == nil || !reflect.DeepEqual(o.NodeRecord.EarlierIdentityLogs, tt.want) {
				t.Fatalf("earlier identity logs %v (refusal %+v), want %v", o.NodeRecord, o.Refusal, tt.want)
			}
		})
	}

	// Without the unsigned handout (a record of the first two only), the
	// PCR holds one more extend: refused before any policy.
	dropped := bytes.Join(lines[:3], nil)
	edited := bytes.Replace(segment, []byte("w1"), []byte("w9"), 1)
	unknown := bytes.Replace(segment, []byte(`"time"`), []byte(`"extra":1,"time"`), 1)
	for _, tt := range []struct {
		name, log, want string
	}{
		{"a record dropped", string(dropped), "identity_log: identity log does not replay to the quoted sha256 PCR 15"},
		{"a byte edited", string(edited), "identity_log: identity log does not replay to the quoted sha256 PCR 15"},
		{"an unknown field", string(unknown), "identity_log: identity log cannot be parsed: identity log record 1: is not a record: json: unknown field"},
		{"cut mid-record", string(segment[:len(segment)-5]), "identity_log: identity log cannot be parsed: the identity log does not end with a newline"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := decide([]byte(tt.log))
			if o.Refusal == nil || o.Refusal.Check != string(verify.CheckIdentityLog) || !o.Refusal.Deny || o.NodeRecord != nil {
				t.Fatalf("refusal %+v, record %v: want identity_log, deny-listed, nothing recorded", o.Refusal, o.NodeRecord != nil)
			}
			if !strings.HasPrefix(o.Refusal.Err.Error(), tt.want) {
				t.Fatalf("error %q, want %q", o.Refusal.Err, tt.want)
			}
		})
	}

	// The PCR is the verifier's: a log naming another PCR is refused
	// (a node would otherwise record a boot line in an unused PCR and hide
	// PCR 15's handouts), and no log while the PCR was extended is too.
	other, err := idlog.Open(t.TempDir(), idlog.Opts{PCR: 14, BootID: "boot-1"}, agent.TPMPCR{RW: sim.RW, Index: 14})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, tt := range []struct {
		name string
		log  []byte
		opts verify.Opts
		want string // "": not refused for the identity log
	}{
		{"a log naming another PCR", other.Segment(), opts, "identity_log: the identity log extends PCR 14, but identity_log_pcr is 15"},
		{"no log while the PCR is extended", nil, opts, "identity_log: no identity log, but sha256 PCR 15 (identity_log_pcr) was extended"},
		{"that PCR configured", other.Segment(), withIdentityLog(opts, 14, false), ""},
		{"turned off, no log", nil, withIdentityLog(opts, 0, true), ""},
		{"turned off, a log", segment, withIdentityLog(opts, 0, true), "identity_log: the identity record is turned off here (identity_log_pcr = 0): send no identity log"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := sim.Evidence(t, now)
			ev.IdentityLog = tt.log
			o := evidence.Decide(evidence.Inputs{Evidence: ev, Opts: tt.opts, Policies: set, Previous: none})
			if tt.want == "" {
				if o.Refusal != nil && o.Refusal.Check != evidence.CheckPolicy {
					t.Fatalf("refusal %+v, want none but the policy's", o.Refusal)
				}
				return
			}
			if o.Refusal == nil || o.Refusal.Check != string(verify.CheckIdentityLog) || !o.Refusal.Deny || o.NodeRecord != nil {
				t.Fatalf("refusal %+v: want identity_log, deny-listed, nothing recorded", o.Refusal)
			}
			if o.Refusal.Err.Error() != tt.want {
				t.Fatalf("error %q, want %q", o.Refusal.Err, tt.want)
			}
		})
	}

	// The PCR extended out of band: the untouched log no longer replays.
	if err := pcr.Extend([32]byte{1}); err != nil {
		t.Fatal(err)
	}
	o = decide(segment)
	if o.Refusal == nil || o.Refusal.Check != string(verify.CheckIdentityLog) || !o.Refusal.Deny {
		t.Fatalf("out-of-band extend: refusal %+v", o.Refusal)
	}
}

// withIdentityLog returns opts with the identity record at pcr, or off.
func withIdentityLog(opts verify.Opts, pcr int, off bool) verify.Opts {
	opts.IdentityLogPCR, opts.IdentityLogOff = pcr, off
	return opts
}
