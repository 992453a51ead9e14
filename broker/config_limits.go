package broker

import (
	"time"

	"github.com/keybroker/keybroker/broker/ratelimit"
)

// LimitsFile is the limits block: how many Challenge and Attest calls the
// broker admits per EK and per source address, each a rate such as "10/m"
// ("0" or "off": no limit), and how many challenges an EK may hold per
// challenge_ttl. An attribute left out, or the whole block, takes its
// default (DefaultLimits).
//
//	limits {
//	  challenge_per_ek              = "10/m"
//	  challenge_per_address         = "120/m"  # IPv6 addresses grouped by /64
//	  attest_per_ek                 = "10/m"
//	  attest_per_address            = "120/m"
//	  outstanding_challenges_per_ek = 4        # per challenge_ttl; 0: no limit
//	}
type LimitsFile struct {
	ChallengePerEK             string `hcl:"challenge_per_ek,optional"`
	ChallengePerAddress        string `hcl:"challenge_per_address,optional"`
	AttestPerEK                string `hcl:"attest_per_ek,optional"`
	AttestPerAddress           string `hcl:"attest_per_address,optional"`
	OutstandingChallengesPerEK int    `hcl:"outstanding_challenges_per_ek,optional"`
}

// LimitsConfig is the parsed limits block. A zero Rate is no limit, so the
// zero LimitsConfig limits nothing; ParseConfig starts from DefaultLimits.
// The limits hold per broker process: across R replicas an EK or address
// gets up to R times each (see package ratelimit).
type LimitsConfig struct {
	ChallengePerEK      ratelimit.Rate
	ChallengePerAddress ratelimit.Rate
	AttestPerEK         ratelimit.Rate
	AttestPerAddress    ratelimit.Rate
	// OutstandingChallengesPerEK bounds the challenges an EK can hold,
	// which are never stored: outstanding_challenges_per_ek per
	// challenge_ttl (ratelimit.Budget).
	OutstandingChallengesPerEK ratelimit.Rate
}

// Default limits. A node attests once at start and again at half its node
// SVID's life; a failing one retries after 1s, doubling up to a minute:
// 7 attempts in its first minute (0, 1, 3, 7, 15, 31, 63s), one a minute
// after. Each attempt is one Challenge and one Attest, so 10 a minute per
// EK never refuses it, and 4 challenges per 60s challenge_ttl (one more
// every 15s) admits every one of those attempts too. A flood from one EK
// gets 10 calls a minute. Per address the budget is larger, for nodes
// behind one NAT; a broker behind a proxy or load balancer sees the
// proxy's address, and should raise or switch off the address limits.
const (
	DefaultLimitPerEK        = "10/m"
	DefaultLimitPerAddress   = "120/m"
	DefaultOutstandingPerEK  = 4
	MaxOutstandingPerEK      = 1000
	defaultOutstandingWindow = DefaultChallengeTTL
)

// DefaultLimits returns the limits of a broker.hcl without a limits block
// whose challenge_ttl is ttl.
func DefaultLimits(ttl time.Duration) LimitsConfig {
	perEK, _ := ratelimit.ParseRate(DefaultLimitPerEK)
	perAddress, _ := ratelimit.ParseRate(DefaultLimitPerAddress)
	return LimitsConfig{
		ChallengePerEK:             perEK,
		ChallengePerAddress:        perAddress,
		AttestPerEK:                perEK,
		AttestPerAddress:           perAddress,
		OutstandingChallengesPerEK: ratelimit.Rate{Count: DefaultOutstandingPerEK, Per: ttl},
	}
}

// build applies the defaults and validates the limits block (lf may be
// nil: no block); ttl is the parsed challenge_ttl.
func (lf *LimitsFile) build(ttl time.Duration, at spot, p *problems) LimitsConfig {
	if ttl <= 0 {
		ttl = defaultOutstandingWindow
	}
	lc := DefaultLimits(ttl)
	if lf == nil {
		return lc
	}
	rate := func(name, s string, into *ratelimit.Rate) {
		if !at.has(name) {
			return
		}
		r, err := ratelimit.ParseRate(s)
		if err != nil {
			p.at(at.attr(name), "limits: %s %q: %v", name, s, err)
			return
		}
		*into = r
	}
	rate("challenge_per_ek", lf.ChallengePerEK, &lc.ChallengePerEK)
	rate("challenge_per_address", lf.ChallengePerAddress, &lc.ChallengePerAddress)
	rate("attest_per_ek", lf.AttestPerEK, &lc.AttestPerEK)
	rate("attest_per_address", lf.AttestPerAddress, &lc.AttestPerAddress)
	const name = "outstanding_challenges_per_ek"
	switch n := lf.OutstandingChallengesPerEK; {
	case !at.has(name):
	case n < 0 || n > MaxOutstandingPerEK:
		p.at(at.attr(name), "limits: %s must be between 0 (no limit) and %d", name, MaxOutstandingPerEK)
	case n == 0:
		lc.OutstandingChallengesPerEK = ratelimit.Rate{}
	default:
		lc.OutstandingChallengesPerEK = ratelimit.Rate{Count: n, Per: ttl}
	}
	return lc
}
