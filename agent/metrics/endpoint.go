package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Endpoint is the HTTP listener that serves an Agent's metrics.
type Endpoint struct {
	lis net.Listener
	srv *http.Server
}

// Serve listens on addr (host:port) and serves a's metrics at GET
// /metrics, over plain HTTP, and nothing else (404), until Close.
func (a *Agent) Serve(addr string) (*Endpoint, error) {
	if a == nil {
		return nil, errors.New("no metrics to serve")
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("unable to listen on %s for metrics: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 10 * time.Second}))
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
