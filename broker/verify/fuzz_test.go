package verify_test

import (
	"crypto"
	"maps"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/evidencetest"
)

// FuzzEventLog feeds arbitrary bytes to the event-log check of a node whose
// quote verified (signed by a software AK over PCR values replayed from a
// realistic log, so no TPM is needed and the fuzzer runs fast): it must never
// panic and must refuse with a named check. Whatever it accepts must carry
// the genuine log's digests, PCR by PCR in order, since only they replay to
// those PCRs; event types and the order across PCRs are not bound, so such
// a log may say less than the genuine one (an event no longer counted), but
// never anything else.
func FuzzEventLog(f *testing.F) {
	log := evidencetest.Boot(evidencetest.BootOpts{Banks: []crypto.Hash{crypto.SHA256}, SecureBoot: true})
	spec := newQuoteSpec(tpm2.TPMAlgSHA256)
	spec.selected, spec.pcrs = nil, map[uint32][]byte{}
	replayed := log.PCRs(crypto.SHA256)
	for i := range uint32(24) {
		spec.selected = append(spec.selected, i)
		spec.pcrs[i] = make([]byte, 32)
		if v, ok := replayed[i]; ok {
			spec.pcrs[i] = v
		}
	}
	// ECC keys: fuzz workers run this setup each time they start, and RSA
	// key generation would dominate a brief run.
	ak := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256)
	ekKey := &ekECCKey().PublicKey
	node, err := verify.Node(tpm2.Marshal(ekPublicECC(ekKey)), nil, nil, ak.publicBytes(), verify.Opts{Trust: verify.Trust{EKHashes: []string{mustEKHash(f, ekKey)}}})

	if err != nil {
		f.Fatal(err)
	}
	v, err := verify.Quotes(node, testNonceHash(), []verify.Quote{spec.quote(f, ak)}, verify.Opts{})
	if err != nil {
		f.Fatal(err)
	}
	genuine, err := v.WithEventLog(log.Bytes())
	if err != nil {
		f.Fatalf("the genuine log is refused: %v", err)
	}
	want := genuine.EventLog()

	f.Add(log.Bytes())
	f.Add(log.DropEvent(3).Bytes())
	f.Add(log.SwapEvents(4, 5).Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := v.WithEventLog(raw)
		if err != nil {
			if verify.FailedCheck(err) == "" {
				t.Fatalf("error without a check: %v", err)
			}
			return
		}
		if len(raw) == 0 {
			return
		}
		facts := got.EventLog()
		if !maps.EqualFunc(digestsByPCR(facts), digestsByPCR(want), slices.Equal) {
			t.Fatalf("accepted a log with other digests: %+v, genuine %+v", facts.Events, want.Events)
		}
		if facts.KernelCmdline != want.KernelCmdline && facts.KernelCmdline != "" {
			t.Fatalf("accepted a log with another kernel command line: %q, genuine %q", facts.KernelCmdline, want.KernelCmdline)
		}
		for _, app := range facts.BootApps {
			if !slices.Contains(want.BootApps, app) {
				t.Fatalf("accepted a log with a boot application the genuine log does not load: %s", app)
			}
		}
	})
}

// digestsByPCR lists the logged digests of each PCR in log order.
func digestsByPCR(f *verify.EventLogFacts) map[uint32][]string {
	out := map[uint32][]string{}
	for _, e := range f.Events {
		out[e.PCR] = append(out[e.PCR], e.Digest)
	}
	return out
}
