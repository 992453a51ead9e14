package metrics

import (
	"errors"

	"github.com/keybroker/keybroker/internal/metricsendpoint"
)

// Endpoint is the HTTP listener that serves an Agent's metrics.
type Endpoint = metricsendpoint.Endpoint

// Serve listens on addr (host:port) and serves a's metrics at GET
// /metrics, over plain HTTP, and nothing else (404), until Close.
func (a *Agent) Serve(addr string) (*Endpoint, error) {
	if a == nil {
		return nil, errors.New("no metrics to serve")
	}
	return metricsendpoint.Serve(addr, a.reg)
}
