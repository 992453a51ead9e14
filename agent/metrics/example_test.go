package metrics_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/keybroker/keybroker/agent/metrics"
)

// The agent's metrics, served on their own listener: the SVID manager
// (agent.WithMetrics), attestations (AttestOpts.Metrics) and the Workload
// API (workload.WithInterceptors) report to one Agent.
func ExampleAgent_Serve() {
	m := metrics.New()
	e, err := m.Serve("127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()

	m.Attestation(nil, 40*time.Millisecond) // a released attestation

	resp, err := http.Get("http://" + e.Addr() + "/metrics")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "keybroker_agent_attestations_total") {
			fmt.Println(line)
		}
	}
	// Output: keybroker_agent_attestations_total{outcome="released"} 1
}
