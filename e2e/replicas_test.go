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
	verifyReplicaChain(t, bs, 2)
}

// verifyReplicaChain exports the receipt chain the replicas bs share and
// verifies it under their checkpoint keys, published by
// "receipts checkpoint-key": one chain of want receipts.
func verifyReplicaChain(t *testing.T, bs []*brokerProc, want int) {
	t.Helper()
	dir := t.TempDir()
	var keyArgs []string
	for i, b := range bs {
		r := keybroker(t, "receipts", "checkpoint-key", "--config", b.configFile)
		wantExit(t, r, 0)
		path := filepath.Join(dir, fmt.Sprintf("checkpoint-%d.pem", i))
		if err := os.WriteFile(path, []byte(r.stdout), 0o600); err != nil {
			t.Fatal(err)
		}
		keyArgs = append(keyArgs, "--key", path)
	}
	r := keybroker(t, "receipts", "export", "--config", bs[1].configFile)
	wantExit(t, r, 0)
	export := filepath.Join(dir, "export.jsonl")
	if err := os.WriteFile(export, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	r = keybroker(t, append([]string{"receipts", "verify", export}, keyArgs...)...)
	wantExit(t, r, 0)
	if line := fmt.Sprintf("receipts: %d chained, seq 1 to %d\n", want, want); !strings.Contains(r.stdout, line) {
		t.Errorf("receipts verify: want %q:\n%s", line, r.stdout)
	}
}

// faultRun is a set of nodes attesting in a loop against replicas, each
// answer sent twice (to two replicas at once), recording what came back.
type faultRun struct {
	mu       sync.Mutex
	released map[string]int    // challenge ID -> releases
	receipts map[string]string // receipt ID -> challenge ID
	refused  map[codes.Code]int
	errs     []string
}

func (r *faultRun) note(challenge string, resp *pb.AttestResponse, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.released[challenge]++
		r.receipts[resp.GetReceiptId()] = challenge
		return
	}
	code := status.Code(err)
	r.refused[code]++
	if code != codes.PermissionDenied && len(r.errs) < 20 {
		r.errs = append(r.errs, err.Error())
	}
}

// attestLoop makes node answer challenges until ctx ends, through the
// clients that alive reports as up; it returns the number of rounds.
func (r *faultRun) attestLoop(ctx context.Context, node *tpmNode, clients []pb.BrokerClient, alive func(int) bool) int {
	rounds := 0
	for i := 0; ctx.Err() == nil; i++ {
		var up []pb.BrokerClient
		for j, c := range clients {
			if alive(j) {
				up = append(up, c)
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		req, err := node.challenge(cctx, up[i%len(up)])
		if err != nil {
			cancel()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var wg sync.WaitGroup
		for k := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := up[(i+k)%len(up)].Attest(cctx, req)
				r.note(req.GetChallengeId(), resp, err)
			}()
		}
		wg.Wait()
		cancel()
		rounds++
	}
	return rounds
}

// A 3-member etcd cluster and two replicas, 20 agents on 4 TPMs attesting
// in a loop (each answer sent to both replicas at once): one etcd member is killed
// (kill -9) and then one replica: no challenge is released twice, every
// release has its receipt, and the nodes keep getting credentials. Then all
// of etcd stops: Attest answers Unavailable, releasing nothing, and serves
// again, without a restart, once etcd is back.
func TestReplicasRideOutFaults(t *testing.T) {
	skipUnlessE2E(t)
	c := etcdtest.Start(t, etcdtest.Opts{Members: 3})
	var tpms []*swtpmtest.TPM
	for range 4 {
		tpms = append(tpms, swtpmtest.Start(t, swtpmtest.Opts{}))
	}
	bs := startReplicas(t, c, tpms, 2)
	clients := []pb.BrokerClient{brokerClient(t, bs[0]), brokerClient(t, bs[1])}
	var down atomic.Int32 // replica index + 1 that was killed
	alive := func(i int) bool { return int(down.Load()) != i+1 }
	run := &faultRun{released: map[string]int{}, receipts: map[string]string{}, refused: map[codes.Code]int{}}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var rounds atomic.Int32
	var nodes []*tpmNode
	// 20 agents: five loops on each of the 4 TPMs (a TPM answers one
	// challenge at a time; the loops' Challenge and Attest calls overlap).
	for _, tpm := range tpms {
		node := newTPMNode(t, tpm)
		nodes = append(nodes, node)
		for range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rounds.Add(int32(run.attestLoop(ctx, node, clients, alive)))
			}()
		}
	}
	releasesNow := func() int {
		run.mu.Lock()
		defer run.mu.Unlock()
		return len(run.receipts)
	}
	waitReleases := func(more int, what string) {
		t.Helper()
		want, deadline := releasesNow()+more, time.Now().Add(90*time.Second)
		for releasesNow() < want {
			if time.Now().After(deadline) {
				cancel()
				wg.Wait()
				t.Fatalf("%s: %d releases, want %d; errors %q", what, releasesNow(), want, run.errs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitReleases(20, "before any fault")
	c.Kill(1)
	t.Log("killed etcd member 1")
	waitReleases(20, "with an etcd member killed")
	down.Store(1)
	bs[0].kill()
	t.Log("killed replica A")
	waitReleases(20, "with replica A killed")
	cancel()
	wg.Wait()

	run.mu.Lock()
	for ch, n := range run.released {
		if n != 1 {
			t.Errorf("challenge %s released %d times", ch, n)
		}
	}
	t.Logf("%d rounds, %d releases, refusals %v", rounds.Load(), len(run.receipts), run.refused)
	run.mu.Unlock()
	stored := map[string]bool{}
	for _, r := range receipts(t, bs[1]) {
		stored[r.ID] = r.Allowed
	}
	for id, ch := range run.receipts {
		if !stored[id] {
			t.Errorf("release of challenge %s has no allowed receipt %s in the store", ch, id)
		}
	}

	// All of etcd down: refused as Unavailable, nothing released.
	node := nodes[0]
	req, err := node.challenge(context.Background(), clients[1])
	if err != nil {
		t.Fatal(err)
	}
	c.StopAll()
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
	resp, err := clients[1].Attest(actx, req)
	acancel()
	if resp != nil || status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "store is unavailable") {
		t.Fatalf("Attest with etcd stopped = %v, %v; want Unavailable naming the store", resp, err)
	}
	c.StartAll()
	deadline := time.Now().Add(60 * time.Second)
	for {
		actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, err := node.challenge(actx, clients[1])
		if err == nil {
			_, err = clients[1].Attest(actx, req)
		}
		acancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica B did not recover after etcd came back: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
