// Package metricsendpoint serves a Prometheus registry over plain HTTP at
// GET /metrics and nothing else, for the broker's and the agent's metrics
// listeners (metrics_listen, --metrics-listen).
package metricsendpoint

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Endpoint is a listener serving one registry.
type Endpoint struct {
	lis net.Listener
	srv *http.Server
}

// Serve listens on addr (host:port) and serves reg at GET /metrics, over
// plain HTTP, and nothing else (404), until Close. Scrapes are bounded:
// four at a time, ten seconds each.
func Serve(addr string, reg *prometheus.Registry) (*Endpoint, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("unable to listen on %s for metrics: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 10 * time.Second}))
	e := &Endpoint{lis: lis, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      15 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}}
	go e.srv.Serve(lis)
	return e, nil
}

// Addr returns the listening address.
func (e *Endpoint) Addr() string { return e.lis.Addr().String() }

// Close stops serving; scrapes in progress are cut off.
func (e *Endpoint) Close() error { return e.srv.Close() }
