// Package metrics defines the node agent's Prometheus metrics (its
// attestations, the renewal loop, the SPIFFE Workload API) and serves them
// on their own HTTP listener (GET /metrics). Each Agent has its own
// registry, not the process-wide default one, so that tests and several
// agents in one process keep their counts apart.
//
// Every method of a nil *Agent does nothing, so that code holding no
// metrics needs no checks. Label values are bounded: outcomes, Workload API
// method names and gRPC codes, never a SPIFFE ID, an EK hash, a path or an
// address.
package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Attestation and renewal outcomes (label outcome).
const (
	Released = "released" // the broker released and the agent opened the credentials
	Refused  = "refused"  // the broker refused the node (a failed check)
	// Failed is any other failure: the TPM, the network, the broker
	// unavailable, a timeout, a credential that would not open.
	Failed = "error"
)

// Workload SVID rotation outcomes (label outcome).
const (
	RotationOK     = "ok"
	RotationFailed = "error"
)

// durationBuckets span 1ms to about 30s: an attestation is a few TPM
// commands (tens of milliseconds on a simulator, up to seconds on a slow
// TPM) and two round trips; a Workload API call well under a millisecond.
var durationBuckets = prometheus.ExponentialBuckets(0.001, 2.5, 12)

// Agent holds one agent's metrics and their registry.
type Agent struct {
	reg           *prometheus.Registry
	attestations  *prometheus.CounterVec
	attestSeconds *prometheus.HistogramVec
	renewals      *prometheus.CounterVec
	rotations     *prometheus.CounterVec
	calls         *prometheus.CounterVec
	callSeconds   *prometheus.HistogramVec
	streams       *prometheus.GaugeVec
	// notAfter is the node SVID's expiry in Unix nanoseconds; 0 before
	// the first.
	notAfter atomic.Int64
}

// New returns an Agent whose registry holds the agent's metrics and the Go
// runtime's and the process's (CPU seconds, resident memory).
func New() *Agent {
	a := &Agent{
		reg: prometheus.NewRegistry(),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_agent_attestations_total",
			Help: "Attestations to the broker (the first and each renewal), by outcome: released, refused (by the broker), error.",
		}, []string{"outcome"}),
		attestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_agent_attestation_duration_seconds",
			Help:    "Time of each attestation, from the challenge through the quote and Attest to the credentials opened in the TPM, by outcome.",
			Buckets: durationBuckets,
		}, []string{"outcome"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_agent_renewals_total",
			Help: "Re-attestations of the renewal loop (at half the node SVID's life, and retries), by outcome: released, refused, error.",
		}, []string{"outcome"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_agent_workload_svid_rotations_total",
			Help: "Requests for new workload X.509-SVIDs (after an attestation and at half each SVID's life), by outcome: ok, error.",
		}, []string{"outcome"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_agent_workload_api_calls_total",
			Help: "SPIFFE Workload API calls completed (unary calls and streams), by method and gRPC status code.",
		}, []string{"method", "code"}),
		callSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_agent_workload_api_handling_seconds",
			Help:    "Time to handle a unary SPIFFE Workload API call (FetchJWTSVID, ValidateJWTSVID), by method.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}, []string{"method"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keybroker_agent_workload_api_streams",
			Help: "SPIFFE Workload API streams open (FetchX509SVID, FetchX509Bundles, FetchJWTBundles), by method.",
		}, []string{"method"}),
	}
	a.reg.MustRegister(a.attestations, a.attestSeconds, a.renewals, a.rotations, a.calls, a.callSeconds, a.streams,
		expiryCollector{a},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return a
}

// Registry returns the registry holding a's metrics.
func (a *Agent) Registry() *prometheus.Registry {
	if a == nil {
		return nil
	}
	return a.reg
}

// Outcome classifies the result of an attestation: Released if err is
// nil, Refused if the broker answered with a refusal (PermissionDenied,
// FailedPrecondition or InvalidArgument: a check of the node failed),
// Failed otherwise.
func Outcome(err error) string {
	if err == nil {
		return Released
	}
	switch status.Code(err) {
	case codes.PermissionDenied, codes.FailedPrecondition, codes.InvalidArgument:
		return Refused
	}
	return Failed
}

// Attestation counts an attestation that ended with err (nil: released)
// and took d.
func (a *Agent) Attestation(err error, d time.Duration) {
	if a == nil {
		return
	}
	outcome := Outcome(err)
	a.attestations.WithLabelValues(outcome).Inc()
	a.attestSeconds.WithLabelValues(outcome).Observe(d.Seconds())
}

// Renewal counts a re-attestation of the renewal loop that ended with err.
func (a *Agent) Renewal(err error) {
	if a != nil {
		a.renewals.WithLabelValues(Outcome(err)).Inc()
	}
}

// Rotation counts a request for new workload X.509-SVIDs that ended with
// err.
func (a *Agent) Rotation(err error) {
	if a == nil {
		return
	}
	outcome := RotationOK
	if err != nil {
		outcome = RotationFailed
	}
	a.rotations.WithLabelValues(outcome).Inc()
}

// NodeSVIDExpires records the expiry of the node SVID now in use.
func (a *Agent) NodeSVIDExpires(notAfter time.Time) {
	if a != nil {
		a.notAfter.Store(notAfter.UnixNano())
	}
}

// expiryCollector reports the seconds until the node SVID expires, as of
// the scrape, once there is one.
type expiryCollector struct{ a *Agent }

var expiryDesc = prometheus.NewDesc("keybroker_agent_node_svid_remaining_seconds",
	"Seconds until the node X.509-SVID in use expires (negative once it has); absent before the first attestation.", nil, nil)

func (c expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (c expiryCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.a.notAfter.Load()
	if n == 0 {
		return
	}
	ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, time.Until(time.Unix(0, n)).Seconds())
}

// code is the status code a gRPC server sends for err, as it derives it.
func code(err error) string {
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err)
	}
	return s.Code().String()
}
