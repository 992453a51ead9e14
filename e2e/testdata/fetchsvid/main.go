// Command fetchsvid is a plain go-spiffe workload for the e2e tests: it
// fetches its X.509-SVID from the Workload API at SPIFFE_ENDPOINT_SOCKET
// with go-spiffe's workloadapi, prints the SPIFFE ID and exits 0, or
// prints the error and exits 1, after FETCHSVID_TIMEOUT (default 10s:
// go-spiffe retries refusals until then). The e2e tests sign its executable, and
// change one byte of marker to make a modified copy that still runs.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// marker is a string the tests find in the executable and change.
var marker = "keybroker-e2e-fetchsvid-marker-A"

func main() {
	timeout := 10 * time.Second
	if v := os.Getenv("FETCHSVID_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "FETCHSVID_TIMEOUT: %v\n", err)
			os.Exit(2)
		}
		timeout = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fetch failed (%s): %v\n", marker, err)
		os.Exit(1)
	}
	fmt.Println(svid.ID)
}
