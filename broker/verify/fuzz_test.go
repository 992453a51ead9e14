package verify_test

import (
	"crypto"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/evidencetest"
)

// FuzzEventLog feeds arbitrary bytes to the event-log check of a node whose
// quote verified (signed by a software AK over PCR values replayed from a
// realistic log, so no TPM is needed and the fuzzer runs fast): it must never
// panic, refuse with a named check, and whatever it accepts must carry the
// genuine log's facts, since only the genuine events replay to those PCRs.
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
	node, err := verify.Node(tpm2.Marshal(ekPublicECC(ekKey)), nil, nil, ak.publicBytes(),
		verify.Trust{EKHashes: []string{mustEKHash(f, ekKey)}})
	if err != nil {
		f.Fatal(err)
	}
	v, err := verify.Quotes(node, testNonceHash(), []verify.Quote{spec.quote(f, ak)}, verify.QuoteOpts{})
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
		if facts.KernelCmdline != want.KernelCmdline || facts.SecureBoot != want.SecureBoot || len(facts.BootApps) != len(want.BootApps) {
			t.Fatalf("accepted a log with other facts: %+v, genuine %+v", facts, want)
		}
	})
}
