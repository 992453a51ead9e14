package e2e

// grpcurl: a generic gRPC client that learns the broker's API from server
// reflection, for the tpm2-tools node.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// grpcurlVersion is the grpcurl .ci/run builds from the module proxy; keep
// the two in step.
const grpcurlVersion = "v1.9.3"

// grpcurlEnv names a grpcurl binary to use instead of the cached build.
const grpcurlEnv = "KEYBROKER_GRPCURL"

// grpcurlPath finds grpcurl: $KEYBROKER_GRPCURL, else the build .ci/run
// caches in $HOME/.cache/keybroker/grpcurl-<version>/grpcurl. Without it the
// test is skipped, unless CI is set, where it fails.
func grpcurlPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv(grpcurlEnv)
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("unable to find the home directory: %v", err)
		}
		path = filepath.Join(home, ".cache", "keybroker", "grpcurl-"+grpcurlVersion, "grpcurl")
	}
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return path
	}
	msg := "grpcurl not found at " + path + " (build it with: GOBIN=" + filepath.Dir(path) +
		" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@" + grpcurlVersion + ", or set " + grpcurlEnv + ")"
	if os.Getenv("CI") == "" {
		t.Skip(msg + "; skipping, set CI to make this a failure")
	}
	t.Fatal(msg)
	return ""
}

// grpcurl calls the broker at b with TLS pinned to its CA.
type grpcurl struct {
	t   *testing.T
	bin string
	b   *brokerProc
}

// run runs grpcurl with args after the TLS flags and the address, feeding
// stdin; it returns stdout, or the error and stderr when grpcurl fails.
func (g *grpcurl) run(stdin []byte, args ...string) (string, string, error) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), processTimeout)
	defer cancel()
	full := append([]string{"-cacert", g.b.caFile}, args[:len(args)-1]...)
	full = append(full, g.b.addr, args[len(args)-1])
	cmd := exec.CommandContext(ctx, g.bin, full...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	g.t.Logf("$ grpcurl %s  → %v in %v", strings.Join(full, " "), err, time.Since(start).Round(time.Millisecond))
	return stdout.String(), stderr.String(), err
}

// call invokes method (e.g. keybroker.v1.Broker/Challenge) with req as JSON
// and decodes the JSON reply into resp, failing the test on any error.
func (g *grpcurl) call(method string, req any, resp proto.Message) {
	g.t.Helper()
	in, err := json.Marshal(req)
	if err != nil {
		g.t.Fatal(err)
	}
	out, stderr, err := g.run(in, "-d", "@", method)
	if err != nil {
		g.t.Fatalf("grpcurl %s: %v\n%s%s", method, err, out, stderr)
	}
	if err := protojson.Unmarshal([]byte(out), resp); err != nil {
		g.t.Fatalf("grpcurl %s replied with what is not a %T: %v\n%s", method, resp, err, out)
	}
}
