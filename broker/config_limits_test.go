package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/ratelimit"
)

// limitsBase is a valid broker.hcl that a test appends lines to.
var limitsBase = `data_dir = "d"
policies = ["p"]
ek_allow = ["` + strings.Repeat("ab", 32) + `"]
`

func TestLimitsConfig(t *testing.T) {
	perMinute := func(n int) ratelimit.Rate { return ratelimit.Rate{Count: n, Per: time.Minute} }
	tests := []struct {
		name string
		src  string
		want broker.LimitsConfig
	}{{
		name: "no block: the defaults",
		src:  "",
		want: broker.LimitsConfig{
			ChallengePerEK: perMinute(10), ChallengePerAddress: perMinute(120),
			AttestPerEK: perMinute(10), AttestPerAddress: perMinute(120),
			OutstandingChallengesPerEK: ratelimit.Rate{Count: 4, Per: time.Minute},
		},
	}, {
		name: "outstanding follows challenge_ttl",
		src:  "challenge_ttl = \"5m\"\nlimits {}\n",
		want: broker.LimitsConfig{
			ChallengePerEK: perMinute(10), ChallengePerAddress: perMinute(120),
			AttestPerEK: perMinute(10), AttestPerAddress: perMinute(120),
			OutstandingChallengesPerEK: ratelimit.Rate{Count: 4, Per: 5 * time.Minute},
		},
	}, {
		name: "every limit set",
		src: `limits {
  challenge_per_ek = "3/s"
  challenge_per_address = "1000/h"
  attest_per_ek = "5/30s"
  attest_per_address = "60/m"
  outstanding_challenges_per_ek = 2
}
`,
		want: broker.LimitsConfig{
			ChallengePerEK:             ratelimit.Rate{Count: 3, Per: time.Second},
			ChallengePerAddress:        ratelimit.Rate{Count: 1000, Per: time.Hour},
			AttestPerEK:                ratelimit.Rate{Count: 5, Per: 30 * time.Second},
			AttestPerAddress:           perMinute(60),
			OutstandingChallengesPerEK: ratelimit.Rate{Count: 2, Per: time.Minute},
		},
	}, {
		name: "switched off",
		src: `limits {
  challenge_per_ek = "off"
  challenge_per_address = "0"
  attest_per_address = 0
  outstanding_challenges_per_ek = 0
}
`,
		want: broker.LimitsConfig{AttestPerEK: perMinute(10)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := broker.ParseConfig([]byte(limitsBase+tt.src), "broker.hcl")
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Limits != tt.want {
				t.Errorf("Limits = %+v\nwant %+v", cfg.Limits, tt.want)
			}
		})
	}
}

// TestLimitsConfigMistakes: each mistake in the limits block is reported
// at its attribute, with the others of the file.
func TestLimitsConfigMistakes(t *testing.T) {
	src := limitsBase + `limits {
  challenge_per_ek = "10/min"
  challenge_per_address = "0/m"
  attest_per_ek = "5/100ms"
  attest_per_address = ""
  outstanding_challenges_per_ek = -1
  outstanding = 3
}
`
	want := []string{
		`broker.hcl:5:22: limits: challenge_per_ek "10/min": not a rate such as "10/m" (per s, m, h or a duration such as 10m), "0" or "off"`,
		`broker.hcl:6:27: limits: challenge_per_address "0/m": count cannot be 0; write "off" to switch the limit off`,
		`broker.hcl:7:19: limits: attest_per_ek "5/100ms": period must be between 1s and 24h0m0s`,
		`broker.hcl:8:24: limits: attest_per_address "": not a rate such as "10/m" (per s, m, h or a duration such as 10m), "0" or "off"`,
		`broker.hcl:9:35: limits: outstanding_challenges_per_ek must be between 0 (no limit) and 1000`,
		`broker.hcl:10:3: unsupported argument: an argument named "outstanding" is not expected here`,
	}
	cfg, err := broker.ParseConfig([]byte(src), "broker.hcl")
	if err == nil {
		t.Fatalf("ParseConfig accepted a limits block full of mistakes: %+v", cfg.Limits)
	}
	got := strings.Split(err.Error(), "\n")
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			t.Errorf("missing line %d: %s", i+1, want[i])
		case i >= len(want):
			t.Errorf("unexpected line %d: %s", i+1, got[i])
		case got[i] != want[i]:
			t.Errorf("line %d:\n got: %s\nwant: %s", i+1, got[i], want[i])
		}
	}
}

func TestLimitsConfigTwice(t *testing.T) {
	_, err := broker.ParseConfig([]byte(limitsBase+"limits {}\nlimits {}\n"), "broker.hcl")
	if err == nil || !strings.Contains(err.Error(), `broker.hcl:5:1: duplicate limits block`) {
		t.Fatalf("two limits blocks: err = %v, want a duplicate block at 5:1", err)
	}
}
