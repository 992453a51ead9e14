package verify_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// The software quotes of newQuoteSpec report clock 123456, reset count 7 and
// restart count 3.
func TestWithHistory(t *testing.T) {
	tests := []struct {
		name    string
		prev    *verify.ClockInfo
		want    verify.History
		wantMsg string // refused with CheckCounters and this message
	}{
		{name: "first attestation", prev: nil, want: verify.History{FirstSeen: true}},
		{name: "clock advanced", prev: &verify.ClockInfo{Clock: 100000, ResetCount: 7, RestartCount: 3}},
		{
			// The last attestation's quote again.
			name:    "same clock",
			prev:    &verify.ClockInfo{Clock: 123456, ResetCount: 7, RestartCount: 3},
			wantMsg: "TPM clock did not advance since the last attestation",
		},
		{
			name: "rebooted",
			prev: &verify.ClockInfo{Clock: 999999, ResetCount: 5, RestartCount: 9},
			want: verify.History{Rebooted: true, Resets: 2},
		},
		{
			// Reported counts carry a per-AK offset that may wrap.
			name: "rebooted across the wrap",
			prev: &verify.ClockInfo{Clock: 999999, ResetCount: 0xffff_fffe, RestartCount: 9},
			want: verify.History{Rebooted: true, Resets: 9},
		},
		{
			name: "restarted across the wrap",
			prev: &verify.ClockInfo{Clock: 1, ResetCount: 7, RestartCount: 0xffff_ffff},
			want: verify.History{Restarts: 4},
		},
		{
			name: "restarted",
			prev: &verify.ClockInfo{Clock: 100000, ResetCount: 7, RestartCount: 1},
			want: verify.History{Restarts: 2},
		},
		{
			name:    "clock went backwards",
			prev:    &verify.ClockInfo{Clock: 123457, ResetCount: 7, RestartCount: 3},
			wantMsg: "TPM clock went backwards without a reset",
		},
		{
			name:    "reset count went backwards",
			prev:    &verify.ClockInfo{Clock: 1, ResetCount: 8, RestartCount: 0},
			wantMsg: "TPM reset count went backwards",
		},
		{
			name:    "reset count far ahead counts as behind",
			prev:    &verify.ClockInfo{Clock: 1, ResetCount: 7 + 1<<31, RestartCount: 3},
			wantMsg: "TPM reset count went backwards",
		},
		{
			name:    "restart count went backwards",
			prev:    &verify.ClockInfo{Clock: 1, ResetCount: 7, RestartCount: 4},
			wantMsg: "TPM restart count went backwards without a reset",
		},
	}
	ak := defaultAK()
	node := trustedNode(t, ak)
	q := newQuoteSpec(tpm2.TPMAlgSHA256).quote(t, ak)
	v, err := verify.Quotes(node, testNonceHash(), []verify.Quote{q}, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	if v.History() != nil {
		t.Fatalf("History before WithHistory = %+v, want nil", v.History())
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.WithHistory(tt.prev)
			if tt.wantMsg != "" {
				assertCheck(t, err, verify.CheckCounters, tt.wantMsg)
				if !verify.FromTPM(err) {
					t.Errorf("FromTPM(%v) = false: counters are refused after the quote verified", err)
				}
				if got != nil {
					t.Errorf("refused WithHistory returned %+v", got)
				}
				return
			}
			assertCheck(t, err, "", "")
			if h := got.History(); h == nil || *h != tt.want {
				t.Errorf("History = %+v, want %+v", h, tt.want)
			}
			if got.Clock() != v.Clock() || got.EKHash() != v.EKHash() || got.QuoteDigest() != v.QuoteDigest() {
				t.Errorf("WithHistory changed the verified facts")
			}
			if v.History() != nil {
				t.Errorf("WithHistory changed its receiver")
			}
		})
	}
}

func TestWithHistoryNil(t *testing.T) {
	var v *verify.Verified
	_, err := v.WithHistory(nil)
	assertCheck(t, err, verify.CheckInput, "no verified quote")
}

// WithPrevious applies the AK rule: counters of the same AK are compared,
// another AK's are not, and the History says the AK changed.
func TestWithPrevious(t *testing.T) {
	ak := defaultAK()
	node := trustedNode(t, ak)
	v, err := verify.Quotes(node, testNonceHash(), []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(t, ak)}, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	backwards := verify.ClockInfo{Clock: 123457, ResetCount: 7, RestartCount: 3} // the quote's clock is 123456
	if _, err := v.WithPrevious(&verify.Previous{AKName: v.AKName(), Clock: backwards}); err == nil {
		t.Fatal("the same AK's counters going backwards were accepted")
	}
	got, err := v.WithPrevious(&verify.Previous{AKName: []byte("another AK"), Clock: backwards})
	if err != nil || *got.History() != (verify.History{FirstSeen: true, AKChanged: true}) {
		t.Fatalf("another AK: %+v, %v; want first seen, AK changed", got.History(), err)
	}
	got, err = v.WithPrevious(nil)
	if err != nil || *got.History() != (verify.History{FirstSeen: true}) {
		t.Fatalf("no previous attestation: %+v, %v", got.History(), err)
	}
	got, err = v.WithPrevious(&verify.Previous{AKName: v.AKName(), Clock: verify.ClockInfo{Clock: 100, ResetCount: 7, RestartCount: 3}})
	if err != nil || *got.History() != (verify.History{}) {
		t.Fatalf("the same AK, clock advanced: %+v, %v", got.History(), err)
	}
}
