package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/softtpm"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// NewFleet makes n software TPM nodes with opts, each with fresh keys (and
// with opts.EKCA its EK certificate, issued by it), generating them on
// every core. The nodes share opts' PCR values and event log.
func NewFleet(n int, opts softtpm.Opts) ([]*softtpm.Node, error) {
	return makeFleet(n, opts, new(atomic.Int64))
}

// makeFleet is NewFleet counting the nodes made in made.
func makeFleet(n int, opts softtpm.Opts, made *atomic.Int64) ([]*softtpm.Node, error) {
	nodes := make([]*softtpm.Node, n)
	errs := make([]error, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += len(errs) {
				node, err := softtpm.New(opts)
				if err != nil {
					errs[w] = fmt.Errorf("unable to make node %d: %w", i, err)
					return
				}
				nodes[i] = node
				made.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return nodes, nil
}

// EKHashes are the nodes' EK hashes, in fleet order.
func EKHashes(nodes []*softtpm.Node) []string {
	hashes := make([]string, len(nodes))
	for i, n := range nodes {
		hashes[i] = n.EKHash()
	}
	return hashes
}

// stageError is a failure on the node's side of a release (not a gRPC
// status from the broker); Stage names the step.
type stageError struct {
	Stage string
	Err   error
}

func (e *stageError) Error() string { return e.Stage + ": " + e.Err.Error() }
func (e *stageError) Unwrap() error { return e.Err }

// errorKey is how a failed release is counted: the gRPC code's name when
// the broker refused or the call failed, else the node-side stage.
func errorKey(err error) string {
	var se *stageError
	if errors.As(err, &se) {
		return se.Stage
	}
	if s, ok := status.FromError(err); ok {
		return s.Code().String()
	}
	return "other"
}

// release runs one node through the protocol on a fresh connection to
// addr with tlsCfg (one TLS handshake per node, as a booting machine) and
// checks that the released TLS key matches its certificate.
func release(ctx context.Context, node *softtpm.Node, addr string, tlsCfg *tls.Config) error {
	conn, err := agent.DialConfig(addr, tlsCfg)
	if err != nil {
		return &stageError{"dial", err}
	}
	defer conn.Close()
	c := pb.NewBrokerClient(conn)
	ch, err := c.Challenge(ctx, node.ChallengeRequest())
	if err != nil {
		return fmt.Errorf("challenge: %w", err)
	}
	secret, err := node.Activate(ch)
	if err != nil {
		return &stageError{"activate", err}
	}
	quotes, err := node.Quote(secret)
	if err != nil {
		return &stageError{"quote", err}
	}
	resp, err := c.Attest(ctx, node.AttestRequest(ch.GetChallengeId(), quotes))
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	return openTLS(node, resp.GetCredentials())
}

// openTLS opens the one TLS credential released and checks its key pair.
func openTLS(node *softtpm.Node, creds []*pb.Credential) error {
	tc, err := openCredential(node, creds)
	if err != nil {
		return err
	}
	if _, err := tls.X509KeyPair(tc.GetCertificatePem(), tc.GetKeyPem()); err != nil {
		return &stageError{"key_mismatch", err}
	}
	return nil
}

// openCredential opens the one TLS credential released and decodes it.
func openCredential(node *softtpm.Node, creds []*pb.Credential) (*pb.TLSCredential, error) {
	if len(creds) != 1 || creds[0].GetType() != pb.CredentialType_TLS_CERTIFICATE {
		return nil, &stageError{"no_credential", fmt.Errorf("%d credentials released, want one TLS certificate", len(creds))}
	}
	payload, err := node.Open(creds[0])
	if err != nil {
		return nil, &stageError{"open", err}
	}
	tc := new(pb.TLSCredential)
	if err := proto.Unmarshal(payload, tc); err != nil {
		return nil, &stageError{"open", fmt.Errorf("unable to decode the TLS credential: %w", err)}
	}
	return tc, nil
}
