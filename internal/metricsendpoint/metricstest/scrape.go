// Package metricstest reads a /metrics endpoint in tests.
package metricstest

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Scrape GETs /metrics from addr, for tests, and returns each sample keyed
// by its series as exposed ("name{label=\"value\",...}", labels in name
// order) and the whole body.
func Scrape(tb testing.TB, addr string) (map[string]float64, string) {
	tb.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET /metrics: %s, %v", resp.Status, err)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if line == "" || strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			tb.Fatalf("malformed sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples, string(body)
}
