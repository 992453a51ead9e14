package loadgen

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Names of the broker's process collector's figures (client_golang's,
// read from the broker's own /proc) on its metrics endpoint.
const (
	metricCPU   = "process_cpu_seconds_total"
	metricRSS   = "process_resident_memory_bytes"
	metricStart = "process_start_time_seconds"
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

// redacted is raw, a URL CheckMetricsURL accepted, without its password.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Redacted()
}

// metricsClient scrapes a broker's metrics endpoint, which does not
// redirect: a redirect is refused rather than followed elsewhere.
var metricsClient = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// processFigures are the broker's process figures read in one scrape.
type processFigures struct {
	cpu   time.Duration // CPU time so far
	rss   int64         // resident memory now
	start float64       // the process's start time (Unix seconds): a new value is a new process
}

// scrapeBroker reads the broker's process figures from its metrics
// endpoint at addr (metrics_listen's /metrics), as its process collector
// reports them.
func scrapeBroker(ctx context.Context, addr string) (processFigures, error) {
	p, err := scrape(ctx, addr)
	if err != nil {
		return processFigures{}, fmt.Errorf("unable to read the broker's metrics at %s: %w", redacted(addr), err)
	}
	return p, nil
}

func scrape(ctx context.Context, addr string) (processFigures, error) {
	var p processFigures
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr, nil)
	if err != nil {
		return p, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := metricsClient.Do(req)
	if err != nil {
		return p, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return p, fmt.Errorf("HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetricsBytes+1))
	if err != nil {
		return p, err
	}
	if len(body) > maxMetricsBytes {
		return p, fmt.Errorf("over %d bytes", maxMetricsBytes)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return p, err
	}
	// Seconds and bytes that fit a time.Duration and an int64.
	const maxSeconds, maxBytes = float64(math.MaxInt64 / int64(time.Second)), float64(1 << 62)
	cpu, err := single(families[metricCPU], dto.MetricType_COUNTER, maxSeconds)
	if err != nil {
		return p, err
	}
	rss, err := single(families[metricRSS], dto.MetricType_GAUGE, maxBytes)
	if err != nil {
		return p, err
	}
	if p.start, err = single(families[metricStart], dto.MetricType_GAUGE, math.MaxFloat64); err != nil {
		return p, err
	}
	p.cpu, p.rss = time.Duration(cpu*float64(time.Second)), int64(rss)
	return p, nil
}

// single is the value of family f: one series, of type typ (or untyped),
// finite, from 0 to below limit.
func single(f *dto.MetricFamily, typ dto.MetricType, limit float64) (float64, error) {
	if f == nil {
		return 0, errNoProcessMetrics
	}
	if len(f.GetMetric()) != 1 {
		return 0, fmt.Errorf("%s has %d series, want 1", f.GetName(), len(f.GetMetric()))
	}
	m := f.GetMetric()[0]
	var v float64
	switch {
	case f.GetType() == dto.MetricType_UNTYPED && m.GetUntyped() != nil:
		v = m.GetUntyped().GetValue()
	case f.GetType() != typ:
		return 0, fmt.Errorf("%s is a %s, want a %s", f.GetName(), strings.ToLower(f.GetType().String()), strings.ToLower(typ.String()))
	case typ == dto.MetricType_COUNTER:
		v = m.GetCounter().GetValue()
	default:
		v = m.GetGauge().GetValue()
	}
	if math.IsNaN(v) || v < 0 || v >= limit {
		return 0, fmt.Errorf("%s is %v", f.GetName(), v)
	}
	return v, nil
}

var errNoProcessMetrics = errors.New("no " + metricCPU + ", " + metricRSS + " or " + metricStart + " (the broker's process figures, on Linux)")

// rssPoller samples the broker's resident memory on its metrics endpoint
// every interval until stopped, keeping the highest reading of the
// process it started with.
type rssPoller struct {
	cancel context.CancelFunc
	stop   func()

	mu     sync.Mutex
	peak   int64
	failed int
	err    error // the first failed reading
}

func pollRSS(addr string, interval time.Duration, first processFigures) *rssPoller {
	ctx, cancel := context.WithCancel(context.Background())
	p := &rssPoller{cancel: cancel, peak: first.rss}
	p.stop = repeat(interval, false, func() bool {
		got, err := scrapeBroker(ctx, addr)
		if err == nil && got.start != first.start {
			err = errRestarted
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				p.failed++
				p.err = cmp.Or(p.err, err)
			}
			return true
		}
		p.peak = max(p.peak, got.rss)
		return true
	})
	return p
}

// errRestarted: the broker's process changed during the run.
var errRestarted = errors.New("the broker restarted during the run (its process start time changed)")

// Stop ends the sampling, cutting a reading in progress short, and
// returns the highest resident memory read, and how many readings failed
// with the first failure.
func (p *rssPoller) Stop() (peak int64, failed int, err error) {
	p.cancel()
	p.stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak, p.failed, p.err
}
