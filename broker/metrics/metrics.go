// Package metrics defines the broker's Prometheus metrics and serves them
// on their own HTTP listener (GET /metrics). Each Broker has its own
// registry, not the process-wide default one, so that several brokers in
// one process, and tests, keep their counts apart.
//
// Every method of a nil *Broker does nothing, so that code holding no
// metrics needs no checks. Label values are bounded: check, stage, op,
// limit, outcome and gRPC method and code names, never an EK hash, a
// receipt or challenge ID, or an address.
package metrics

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/keybroker/keybroker/internal/metricsendpoint"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Attestation outcomes (label outcome of keybroker_attestations_total).
const (
	Released = "released"
	Refused  = "refused"
	// Failed is an attestation whose decision could not be recorded (the
	// store is unavailable): nothing released, no receipt.
	Failed = "error"
)

// Stages of Attest (label stage of keybroker_attest_stage_duration_seconds).
const (
	StageOpen    = "open"    // open the challenge
	StageVerify  = "verify"  // verify the evidence and the node's history
	StagePolicy  = "policy"  // evaluate the policies
	StageRelease = "release" // issue and seal every release
	StageIssue   = "issue"   // issue one credential (part of release; release.StageIssue)
	StageSeal    = "seal"    // seal one credential to the node's TPM (part of release; release.StageSeal)
	StageCommit  = "commit"  // record the decision durably
)

// Policy reload outcomes (label outcome of keybroker_policy_reloads_total).
const (
	ReloadInstalled = "reloaded"
	ReloadUnchanged = "unchanged"
	ReloadRefused   = "refused"
)

// Admission limits (label limit of keybroker_admission_refusals_total).
const (
	LimitAddress     = "address"
	LimitEK          = "ek"
	LimitOutstanding = "outstanding"
)

// durationBuckets span 100µs to about 6s: a stage of the release pipeline
// takes well under a millisecond, an RPC under load seconds.
var durationBuckets = prometheus.ExponentialBuckets(0.0001, 2.5, 12)

// Broker holds one broker's metrics and their registry.
type Broker struct {
	reg          *prometheus.Registry
	attestations *prometheus.CounterVec
	challenges   prometheus.Counter
	chRefused    *prometheus.CounterVec
	stages       *prometheus.HistogramVec
	commits      *prometheus.HistogramVec
	batches      *prometheus.HistogramVec
	reloads      *prometheus.CounterVec
	admission    *prometheus.CounterVec
	grpcHandled  *prometheus.CounterVec
	grpcSeconds  *prometheus.HistogramVec
	vaultCalls   *prometheus.CounterVec
	vaultSeconds *prometheus.HistogramVec
	outstanding  *outstanding
}

// New returns a Broker whose registry holds the broker's metrics and the
// Go runtime's and the process's (CPU seconds, resident memory).
func New() *Broker {
	b := &Broker{
		reg:         prometheus.NewRegistry(),
		outstanding: newOutstanding(MaxTrackedChallenges),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_attestations_total",
			Help: "Attest calls by outcome (released, refused, error) and, for refusals, the failed check of the receipt (challenge, input, ek_trust, quote_nonce, policy, release, ...).",
		}, []string{"outcome", "check"}),
		challenges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keybroker_challenges_issued_total",
			Help: "Challenges issued.",
		}),
		chRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_challenges_refused_total",
			Help: "Challenge calls refused by a check of the node (input, ek_trust, ak_attributes, ...) or because a challenge could not be issued (internal).",
		}, []string{"check"}),
		stages: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_attest_stage_duration_seconds",
			Help:    "Time spent in each stage of Attest that was reached: open, verify, policy, release (issue and seal every credential), commit; and issue and seal for each credential.",
			Buckets: durationBuckets,
		}, []string{"stage"}),
		commits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_store_commit_duration_seconds",
			Help:    "Time to record a decision (challenge used, receipt, node record) durably, by outcome: ok, consumed (a concurrent answer won), error.",
			Buckets: durationBuckets,
		}, []string{"outcome"}),
		batches: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_store_transaction_decisions",
			Help:    "Decisions carried by each write transaction of the embedded (bolt) store, which concurrent decisions share (one fsync), by outcome: ok, error.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9),
		}, []string{"outcome"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_policy_reloads_total",
			Help: "Policy reloads by outcome: reloaded (a new set installed), unchanged, refused (the previous set keeps serving).",
		}, []string{"outcome"}),
		admission: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_admission_refusals_total",
			Help: "Requests refused by an admission limit, by op (challenge, attest) and limit (address, ek, outstanding).",
		}, []string{"op", "limit"}),
		grpcHandled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_grpc_server_handled_total",
			Help: "Unary gRPC calls completed, by service, method and status code.",
		}, []string{"service", "method", "code"}),
		grpcSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_grpc_server_handling_seconds",
			Help:    "Time to handle a unary gRPC call, by service and method.",
			Buckets: durationBuckets,
		}, []string{"service", "method"}),
		vaultCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_vault_calls_total",
			Help: "Calls to Vault by op (login, renew, kv_read, pki_issue, pki_revoke, token_create, token_role_read, token_revoke) and outcome: ok, refused (Vault answered with an error), unavailable (unreachable, sealed, a server error).",
		}, []string{"op", "outcome"}),
		vaultSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_vault_call_duration_seconds",
			Help:    "Time of a call to Vault, whatever its outcome, by op (login, kv_read, pki_issue, pki_revoke, token_create, token_role_read, token_revoke; token renewals are not timed).",
			Buckets: durationBuckets,
		}, []string{"op"}),
	}
	outstanding := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keybroker_challenges_outstanding",
		Help: "Challenges this broker issued that have neither been answered here nor expired.",
	}, func() float64 { return float64(b.outstanding.count(time.Now())) })
	b.reg.MustRegister(b.attestations, b.challenges, b.chRefused, b.stages, b.commits, b.batches, b.reloads, b.admission,
		b.grpcHandled, b.grpcSeconds, b.vaultCalls, b.vaultSeconds, outstanding,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return b
}

// Registry returns the registry holding b's metrics.
func (b *Broker) Registry() *prometheus.Registry {
	if b == nil {
		return nil
	}
	return b.reg
}

// Attestation counts an Attest call that ended in outcome; check is the
// failed check of a refusal (empty when released).
func (b *Broker) Attestation(outcome, check string) {
	if b == nil {
		return
	}
	if outcome == Released {
		check = ""
	} else {
		check = bounded(check)
	}
	b.attestations.WithLabelValues(outcome, check).Inc()
}

// ChallengeIssued counts an issued challenge.
func (b *Broker) ChallengeIssued() {
	if b != nil {
		b.challenges.Inc()
	}
}

// ChallengeOutstanding counts challenge id, issued here and expiring at
// expires, as outstanding until it is answered here (ChallengeAnswered) or
// expires.
func (b *Broker) ChallengeOutstanding(id string, expires time.Time) {
	if b != nil {
		b.outstanding.issued(id, expires, time.Now())
	}
}

// ChallengeAnswered uncounts challenge id from the outstanding ones; an ID
// this broker did not issue, or one answered already, changes nothing.
func (b *Broker) ChallengeAnswered(id string) {
	if b != nil {
		b.outstanding.answered(id, time.Now())
	}
}

// ChallengeRefused counts a Challenge call refused by check.
func (b *Broker) ChallengeRefused(check string) {
	if b != nil {
		b.chRefused.WithLabelValues(bounded(check)).Inc()
	}
}

// Commit observes the time d one decision took to record; outcome is
// "ok", "consumed" or "error".
func (b *Broker) Commit(outcome string, d time.Duration) {
	if b == nil {
		return
	}
	b.commits.WithLabelValues(outcome).Observe(d.Seconds())
	b.stages.WithLabelValues(StageCommit).Observe(d.Seconds())
}

// StoreTransaction observes one write transaction of the bolt store that
// carried decisions (store.CommitObserver); err is its failure, if any.
func (b *Broker) StoreTransaction(decisions int, _ time.Duration, err error) {
	if b == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	b.batches.WithLabelValues(outcome).Observe(float64(decisions))
}

// PolicyReload counts a policy reload that ended in outcome.
func (b *Broker) PolicyReload(outcome string) {
	if b != nil {
		b.reloads.WithLabelValues(outcome).Inc()
	}
}

// AdmissionRefused counts a request of op refused by limit.
func (b *Broker) AdmissionRefused(op, limit string) {
	if b != nil {
		b.admission.WithLabelValues(op, limit).Inc()
	}
}

// VaultCall counts a call to Vault of op that ended in outcome
// (vaultsource.Opts.Observe) and observes the time it took, unless took is
// negative (not measured).
func (b *Broker) VaultCall(op, outcome string, took time.Duration) {
	if b == nil {
		return
	}
	op, outcome = bounded(op), bounded(outcome)
	b.vaultCalls.WithLabelValues(op, outcome).Inc()
	if took >= 0 {
		b.vaultSeconds.WithLabelValues(op).Observe(took.Seconds())
	}
}

// ReleaseStage observes the time one credential's issue (StageIssue) or
// seal (StageSeal) took (release.Opts.Observe).
func (b *Broker) ReleaseStage(stage string, took time.Duration) {
	if b == nil || (stage != StageIssue && stage != StageSeal) {
		return
	}
	b.stages.WithLabelValues(stage).Observe(took.Seconds())
}

// Stages times the stages of one Attest call: each Done observes the time
// since the previous one (or since Stages).
type Stages struct {
	b    *Broker
	last time.Time
}

// Stages starts timing the stages of one Attest call.
func (b *Broker) Stages() *Stages {
	if b == nil {
		return nil
	}
	return &Stages{b: b, last: time.Now()}
}

// Done observes the time stage took, up to now.
func (s *Stages) Done(stage string) {
	if s == nil {
		return
	}
	now := time.Now()
	s.b.stages.WithLabelValues(stage).Observe(now.Sub(s.last).Seconds())
	s.last = now
}

// maxLabelSize bounds a check name taken as a label value.
const maxLabelSize = 32

// bounded returns check if it is a check name (lowercase letters and
// underscores, as verify.Check and the receipt's checks are), else
// "other": a label never carries anything else.
func bounded(check string) string {
	if check == "" || len(check) > maxLabelSize {
		return "other"
	}
	for i := 0; i < len(check); i++ {
		if c := check[i]; (c < 'a' || c > 'z') && c != '_' {
			return "other"
		}
	}
	return check
}

// UnaryServerInterceptor counts every unary call by service, method and
// status code and observes its handling time. The gRPC server calls
// interceptors only for the methods it has registered, so the labels stay
// bounded. On a nil Broker it only calls the handler.
func (b *Broker) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if b == nil {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		service, method := splitMethod(info.FullMethod)
		b.grpcSeconds.WithLabelValues(service, method).Observe(time.Since(start).Seconds())
		b.grpcHandled.WithLabelValues(service, method, status.Code(err).String()).Inc()
		return resp, err
	}
}

// splitMethod splits "/package.Service/Method".
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", "unknown"
}

// Endpoint is the HTTP listener that serves a Broker's metrics.
type Endpoint = metricsendpoint.Endpoint

// Serve listens on addr (host:port) and serves b's metrics at GET
// /metrics, over plain HTTP, and nothing else (404), until Close.
func (b *Broker) Serve(addr string) (*Endpoint, error) {
	if b == nil {
		return nil, errors.New("no metrics to serve")
	}
	return metricsendpoint.Serve(addr, b.reg)
}
