package broker

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/metrics"
	"github.com/keybroker/keybroker/broker/ratelimit"
)

// Operations that admission limits, as named in its messages.
const (
	opChallenge = "challenge"
	opAttest    = "attest"
)

// admission enforces the limits block on Challenge and Attest: per source
// address before anything is verified, per EK once the EK is known, and
// the bound on challenges an EK holds. Each check answers nil or a
// ResourceExhausted status naming the limit and when to retry; it logs
// nothing. The limits hold per broker process (see package ratelimit).
type admission struct {
	limits      LimitsConfig
	address     map[string]*ratelimit.Limiter // by op
	ek          map[string]*ratelimit.Limiter // by op
	outstanding *ratelimit.Limiter
	now         func() time.Time
	metrics     *metrics.Broker // nil: no metrics
}

// newAdmission builds the limiters of cfg; a limit that is off admits
// everything.
func newAdmission(cfg LimitsConfig) *admission {
	var opts ratelimit.Opts
	return &admission{
		limits: cfg,
		address: map[string]*ratelimit.Limiter{
			opChallenge: cfg.ChallengePerAddress.Limiter(opts),
			opAttest:    cfg.AttestPerAddress.Limiter(opts),
		},
		ek: map[string]*ratelimit.Limiter{
			opChallenge: cfg.ChallengePerEK.Limiter(opts),
			opAttest:    cfg.AttestPerEK.Limiter(opts),
		},
		outstanding: cfg.OutstandingChallengesPerEK.Limiter(opts),
		now:         time.Now,
	}
}

// admitAddress spends one op request of the caller's source address (gRPC
// peer; IPv6 grouped by /64). A call without a peer, made in process, is
// admitted.
func (a *admission) admitAddress(ctx context.Context, op string) error {
	l, ok := a.address[op]
	if !ok {
		return unknownOp(op)
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return nil
	}
	if ok, wait := l.Allow(addressKey(p.Addr), a.now()); !ok {
		a.metrics.AdmissionRefused(op, metrics.LimitAddress)
		return exhausted(op, "too many requests from this address (limit %s)", wait, a.rate(op, false))
	}
	return nil
}

// admitEK spends one op request of the EK whose hash is ekHash.
func (a *admission) admitEK(op, ekHash string) error {
	l, ok := a.ek[op]
	if !ok {
		return unknownOp(op)
	}
	if ok, wait := l.Allow(ekHash, a.now()); !ok {
		a.metrics.AdmissionRefused(op, metrics.LimitEK)
		return exhausted(op, "too many requests for this EK (limit %s)", wait, a.rate(op, true))
	}
	return nil
}

// admitOutstanding spends one challenge of the EK's budget of challenges
// per challenge_ttl; call it just before issuing a challenge.
func (a *admission) admitOutstanding(ekHash string) error {
	if ok, wait := a.outstanding.Allow(ekHash, a.now()); !ok {
		a.metrics.AdmissionRefused(opChallenge, metrics.LimitOutstanding)
		r := a.limits.OutstandingChallengesPerEK
		return exhausted(opChallenge, "too many outstanding challenges for this EK (at most %s)", wait,
			fmt.Sprintf("%d per %s", r.Count, r.Per))
	}
	return nil
}

func (a *admission) rate(op string, perEK bool) ratelimit.Rate {
	switch {
	case op == opChallenge && perEK:
		return a.limits.ChallengePerEK
	case op == opChallenge:
		return a.limits.ChallengePerAddress
	case perEK:
		return a.limits.AttestPerEK
	}
	return a.limits.AttestPerAddress
}

// exhausted is the ResourceExhausted status of a limit hit: "op: what;
// retry in Ns", with wait rounded up to the second.
func exhausted(op, what string, wait time.Duration, limit any) error {
	secs := time.Duration(math.Ceil(wait.Seconds())) * time.Second
	return status.Errorf(codes.ResourceExhausted, "%s: "+what+"; retry in %s", op, limit, max(secs, time.Second))
}

func unknownOp(op string) error {
	return status.Errorf(codes.Internal, "admission: unknown operation %q", op)
}

// addressKey is the bucket of a peer address: an IPv4 address, the /64 of
// an IPv6 address (one host commonly holds a whole /64), or the network
// for anything else (every Unix socket caller shares one bucket).
func addressKey(addr net.Addr) string {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.AddrPort().Addr()
	default:
		ap, err := netip.ParseAddrPort(addr.String())
		if err != nil {
			return addr.Network()
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	prefix, err := ip.Prefix(64)
	if err != nil {
		return addr.Network()
	}
	return prefix.String()
}
