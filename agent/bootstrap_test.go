package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// direct calls a Server in process; afterAttest runs once Attest returned,
// before the agent opens what it got.
type direct struct {
	pb.BrokerClient // the workload RPCs are not used here
	srv             *broker.Server
	afterAttest     func()
}

func (d direct) Challenge(ctx context.Context, in *pb.ChallengeRequest, _ ...grpc.CallOption) (*pb.ChallengeResponse, error) {
	return d.srv.Challenge(ctx, in)
}

func (d direct) Attest(ctx context.Context, in *pb.AttestRequest, _ ...grpc.CallOption) (*pb.AttestResponse, error) {
	resp, err := d.srv.Attest(ctx, in)
	if d.afterAttest != nil {
		d.afterAttest()
	}
	return resp, err
}

func readSet(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range []string{agent.KeyFile, agent.CertFile, agent.ChainFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		out[f] = string(b)
	}
	return out
}

func TestBootstrap(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	out := filepath.Join(t.TempDir(), "tls")
	var steps []agent.Step
	opts := agent.BootstrapOpts{OutDir: out, Progress: func(s agent.Step, _ time.Duration, _ string) { steps = append(steps, s) }}
	ctx := context.Background()

	res, err := agent.Bootstrap(ctx, direct{srv: env.Server}, env.Node, opts)
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	want := []agent.Step{agent.StepChallenge, agent.StepActivate, agent.StepQuote, agent.StepAttest, agent.StepOpen, agent.StepWrite}
	if !slices.Equal(steps, want) {
		t.Errorf("steps = %v, want %v", steps, want)
	}
	if !res.Changed || res.ReceiptID == "" || time.Until(res.NotAfter) < time.Hour {
		t.Errorf("result = %+v", res)
	}
	first := readSet(t, out)
	pair, err := tls.X509KeyPair([]byte(first[agent.CertFile]), []byte(first[agent.KeyFile]))
	if err != nil {
		t.Fatalf("key.pem does not match cert.pem: %v", err)
	}
	if !strings.HasPrefix(pair.Leaf.Subject.CommonName, "node-"+env.EKHash[:16]) {
		t.Errorf("certificate CN = %q, want the policy's template", pair.Leaf.Subject.CommonName)
	}
	if fi, _ := os.Stat(filepath.Join(out, agent.KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode = %v, want 0600", fi.Mode().Perm())
	}

	// Renewal: a fresh attestation, a new key and certificate.
	res2, err := agent.Bootstrap(ctx, direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out})
	if err != nil {
		t.Fatalf("second Bootstrap: %v", err)
	}
	if res2.Serial == res.Serial || !res2.Changed || readSet(t, out)[agent.KeyFile] == first[agent.KeyFile] {
		t.Error("second bootstrap did not write a new credential")
	}
}

func TestBootstrapFailuresKeepPreviousFiles(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	out := t.TempDir()
	ctx := context.Background()
	if _, err := agent.Bootstrap(ctx, direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out}); err != nil {
		t.Fatal(err)
	}
	before := readSet(t, out)

	t.Run("PCR changes between quote and open", func(t *testing.T) {
		// The broker sealed the credential to the quoted PCRs; PCR 7
		// moves before the agent opens it.
		d := direct{srv: env.Server, afterAttest: func() { brokertest.Extend(t, env.RW, 7, "late measurement") }}
		_, err := agent.Bootstrap(ctx, d, env.Node, agent.BootstrapOpts{OutDir: out})
		var se *agent.StepError
		if !errors.As(err, &se) || se.Step != agent.StepOpen || !strings.Contains(err.Error(), "is sealed to PCR values this TPM no longer holds") {
			t.Fatalf("Bootstrap = %v; want a failure at open saying the PCRs changed", err)
		}
	})
	t.Run("refused by policy", func(t *testing.T) {
		// PCR 7 no longer matches the policy (extended above).
		_, err := agent.Bootstrap(ctx, direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out})
		var se *agent.StepError
		if !errors.As(err, &se) || se.Step != agent.StepAttest || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "policy: no policy allows this node") {
			t.Fatalf("Bootstrap = %v; want a policy refusal at attest", err)
		}
	})
	if after := readSet(t, out); !maps.Equal(before, after) {
		t.Error("a failed bootstrap changed the written files")
	}
}

func TestOpenTPMErrors(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	tests := []struct {
		name    string
		spec    string
		wantErr string
	}{
		{"unknown kind", "usb:1", `unknown TPM "usb:1": want simulator, tcp://HOST:PORT or a device path`},
		{"nothing listening", "tcp://" + closed, "unable to connect to TPM at " + closed},
		{"missing device", "/dev/does-not-exist-tpm", "unable to open TPM device /dev/does-not-exist-tpm"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rw, err := agent.OpenTPM(tc.spec)
			if err == nil {
				rw.Close()
				t.Fatal("OpenTPM succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestReadEventLog(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "log.bin")
	if err := os.WriteFile(small, []byte("log"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.bin")
	if err := os.WriteFile(big, make([]byte, agent.MaxEventLogSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		spec    string
		want    string
		wantErr string
	}{
		{name: "none", spec: "none"},
		{name: "file", spec: small, want: "log"},
		{name: "missing file", spec: filepath.Join(dir, "missing"), wantErr: "unable to open event log"},
		{name: "too large", spec: big, wantErr: "exceeds 1048576 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := agent.ReadEventLog(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadEventLog(%q) = %v; want error %q", tc.spec, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("ReadEventLog(%q) = %q, %v; want %q", tc.spec, got, err, tc.want)
			}
		})
	}
}
