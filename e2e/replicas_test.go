package e2e

// Several broker replicas on one etcd: a challenge from one replica is
// answered at another, a challenge is used once whichever replicas its
// answers reach, and the replicas ride out etcd member and replica failures.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	kbagent "github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/internal/swtpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// etcdStore is the store block of a broker on c, under prefix.
func etcdStore(c *etcdtest.Cluster, prefix string) string {
	var eps []string
	for _, e := range c.Endpoints() {
		eps = append(eps, fmt.Sprintf("%q", e))
	}
	return fmt.Sprintf("\nstore \"etcd\" {\n  endpoints = [%s]\n  prefix = %q\n  dial_timeout = \"2s\"\n}\n", strings.Join(eps, ", "), prefix)
}

// startReplicas starts n brokers sharing the etcd store and the first
// one's CA (every replica mounts the same CA, as README's "Running several
// brokers" says), trusting tpms' EK CAs, releasing a tpm_bound TLS
// certificate.
func startReplicas(t *testing.T, c *etcdtest.Cluster, tpms []*swtpmtest.TPM, n int) []*brokerProc {
	t.Helper()
	var cas []ekCA
	var names []string
	for i, tpm := range tpms {
		ca := swtpmCA(tpm)
		ca.name = fmt.Sprintf("swtpm-%d", i)
		cas = append(cas, ca)
		names = append(names, fmt.Sprintf("%q", ca.name))
	}
	opts := brokerOpts{
		ekCAs:  cas,
		policy: policyHCL(policyOpts{selector: "ek_cas = [" + strings.Join(names, ", ") + "]", mode: "tpm_bound"}),
		// No admission limits: the tests send hundreds of answers from one
		// address and EK on purpose.
		extra: etcdStore(c, fmt.Sprintf("/kb-%d/", time.Now().UnixNano())) +
			"\nlimits {\n  challenge_per_ek = \"off\"\n  challenge_per_address = \"off\"\n  attest_per_ek = \"off\"\n  attest_per_address = \"off\"\n  outstanding_challenges_per_ek = 0\n}\n",
	}
	first := startBroker(t, opts)
	out := []*brokerProc{first}
	for range n - 1 {
		o := opts
		o.prepare = func(dataDir string) { copyDir(t, filepath.Join(first.dataDir, "ca"), filepath.Join(dataDir, "ca")) }
		out = append(out, startBroker(t, o))
	}
	return out
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// brokerClient is a gRPC client of b, pinning its CA.
func brokerClient(t *testing.T, b *brokerProc) pb.BrokerClient {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(readFile(t, b.caFile)) {
		t.Fatal("ca.pem holds no certificate")
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewBrokerClient(conn)
}

// tpmNode is a node on swtpm driven in process, so that its answers can be
// sent to any replica, any number of times.
type tpmNode struct {
	mu   sync.Mutex // swtpm takes one client at a time
	node *kbagent.Node
	req  *pb.ChallengeRequest
}

func newTPMNode(t *testing.T, tpm *swtpmtest.TPM) *tpmNode {
	t.Helper()
	conn := tpm.Dial(t)
	node, err := kbagent.NewNode(conn, kbagent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	req, err := node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	return &tpmNode{node: node, req: req}
}

// challenge asks via c and answers in the TPM.
func (n *tpmNode) challenge(ctx context.Context, c pb.BrokerClient) (*pb.AttestRequest, error) {
	ch, err := c.Challenge(ctx, n.req)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	secret, err := n.node.Activate(ch)
	if err != nil {
		return nil, err
	}
	quotes, err := n.node.Quote(secret)
	if err != nil {
		return nil, err
	}
	return &pb.AttestRequest{ChallengeId: ch.GetChallengeId(), Quotes: quotes,
		EkPublic: n.req.EkPublic, EkCertificate: n.req.EkCertificate, EkIntermediates: n.req.EkIntermediates, AkPublic: n.req.AkPublic}, nil
}

// A challenge issued by replica A is answered at replica B; 200 concurrent
// answers to one challenge spread over both replicas release exactly once,
// with exactly one receipt.
func TestReplicasShareChallenges(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	c := etcdtest.Start(t, etcdtest.Opts{})
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	bs := startReplicas(t, c, []*swtpmtest.TPM{tpm}, 2)
	a, b := brokerClient(t, bs[0]), brokerClient(t, bs[1])
	node := newTPMNode(t, tpm)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	req, err := node.challenge(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.Attest(ctx, req)
	if err != nil || len(resp.GetCredentials()) != 1 {
		t.Fatalf("challenge of A answered at B: %v, %v", resp, err)
	}
	if _, err := a.Attest(ctx, req); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the same answer replayed at A: %v; want PermissionDenied", err)
	}

	req, err = node.challenge(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	var wins, refusals atomic.Int32
	var receipt atomic.Value
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := a
			if i%2 == 1 {
				c = b
			}
			resp, err := c.Attest(ctx, req)
			switch {
			case err == nil:
				wins.Add(1)
				receipt.Store(resp.GetReceiptId())
			case status.Code(err) == codes.PermissionDenied:
				refusals.Add(1)
			default:
				t.Errorf("attest %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || refusals.Load() != 199 {
		t.Fatalf("%d releases and %d refusals of one challenge; want 1 and 199", wins.Load(), refusals.Load())
	}
	n := 0
	for _, r := range receipts(t, bs[0]) {
		if r.ID == receipt.Load() {
			n++
		}
		if r.Allowed {
			continue
		}
		t.Errorf("unexpected refusal receipt %+v", r)
	}
	if rs := receipts(t, bs[1]); len(rs) != 2 || n != 1 {
		t.Fatalf("receipts: %d (%d for the winner), want 2 in all, read the same from either replica: %+v", len(rs), n, rs)
	}
}
