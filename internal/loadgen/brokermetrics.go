package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Names of the broker's process collector's figures (client_golang's,
// read from the broker's own /proc) on its metrics endpoint.
const (
	metricCPU = "process_cpu_seconds_total"
	metricRSS = "process_resident_memory_bytes"
)

// maxMetricsBytes bounds a scrape of the broker's metrics endpoint.
const maxMetricsBytes = 8 << 20

// CheckMetricsURL reports whether raw is a URL a broker's metrics can be
// read at: http or https, with a host.
func CheckMetricsURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http or https URL with a host: want http://HOST:PORT/metrics (the broker's metrics_listen)", raw)
	}
	return nil
}

// metricsClient scrapes a broker's metrics endpoint.
var metricsClient = &http.Client{Timeout: 10 * time.Second}

// scrapeBroker reads the broker's CPU time so far and its resident memory
// now from its metrics endpoint at addr (metrics_listen's /metrics), as
// its process collector reports them.
func scrapeBroker(ctx context.Context, addr string) (time.Duration, int64, error) {
	cpu, rss, err := scrape(ctx, addr)
	if err != nil {
		return 0, 0, fmt.Errorf("unable to read the broker's metrics at %s: %w", addr, err)
	}
	return cpu, rss, nil
}

func scrape(ctx context.Context, addr string) (time.Duration, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr, nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := metricsClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetricsBytes+1))
	if err != nil {
		return 0, 0, err
	}
	if len(body) > maxMetricsBytes {
		return 0, 0, fmt.Errorf("over %d bytes", maxMetricsBytes)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	cpu, err := single(families[metricCPU], func(f float64) bool { return f >= 0 })
	if err != nil {
		return 0, 0, err
	}
	rss, err := single(families[metricRSS], func(f float64) bool { return f >= 0 && f < math.MaxInt64 })
	if err != nil {
		return 0, 0, err
	}
	return time.Duration(cpu * float64(time.Second)), int64(rss), nil
}

// single is the value of a family with one metric (a counter, a gauge,
// or untyped) that passes ok.
func single(f *dto.MetricFamily, ok func(float64) bool) (float64, error) {
	if f == nil {
		return 0, errNoProcessMetrics
	}
	if len(f.GetMetric()) != 1 {
		return 0, fmt.Errorf("%s has %d series, want 1", f.GetName(), len(f.GetMetric()))
	}
	m := f.GetMetric()[0]
	var v float64
	switch {
	case m.GetCounter() != nil:
		v = m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		v = m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		v = m.GetUntyped().GetValue()
	default:
		return 0, fmt.Errorf("%s is not a counter or a gauge", f.GetName())
	}
	if math.IsNaN(v) || !ok(v) {
		return 0, fmt.Errorf("%s is %v", f.GetName(), v)
	}
	return v, nil
}

var errNoProcessMetrics = errors.New("no " + metricCPU + " or " + metricRSS + " (the broker's process figures, on Linux)")

// rssPoller samples the broker's resident memory on its metrics endpoint
// every interval until stopped, keeping the highest.
type rssPoller struct {
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	peak int64
	err  error
}

func pollRSS(addr string, interval time.Duration, start int64) *rssPoller {
	p := &rssPoller{stop: make(chan struct{}), done: make(chan struct{}), peak: start}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			_, rss, err := scrapeBroker(context.Background(), addr)
			p.mu.Lock()
			if err != nil && p.err == nil {
				p.err = err
			}
			p.peak = max(p.peak, rss)
			p.mu.Unlock()
		}
	}()
	return p
}

// Stop ends the sampling and returns the highest resident memory seen,
// with end (a last reading) among them, and the first failed scrape.
func (p *rssPoller) Stop(end int64) (int64, error) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.peak, end), p.err
}
