package e2e

// The cross-process harness: a broker process, agent runs, PCR measurements
// over the swtpm socket, and checks on what the agent wrote.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

const (
	brokerReadyTimeout = 15 * time.Second
	brokerStopTimeout  = 10 * time.Second
	processTimeout     = 90 * time.Second
	logWaitTimeout     = 10 * time.Second
	// brokerService is the gRPC service whose health the broker reports.
	brokerService = "keybroker.v1.Broker"
)

// skipUnlessE2E skips cross-process tests under -short.
func skipUnlessE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("cross-process e2e on swtpm; skipped with -short")
	}
}

// syncBuffer collects a child process's output while tests read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ekCA is an ek_ca block of the broker configuration.
type ekCA struct {
	name          string
	roots         []string
	intermediates []string
}

// swtpmCA trusts the local CA that signed tpm's EK certificate.
func swtpmCA(tpm *swtpmtest.TPM) ekCA {
	return ekCA{name: "swtpm", roots: []string{tpm.RootCAFile}, intermediates: []string{tpm.IntermediateCAFile}}
}

// brokerOpts configure startBroker.
type brokerOpts struct {
	ekCAs   []ekCA
	ekAllow []string
	policy  string // the content of policy.hcl
	extra   string // appended to broker.hcl, e.g. a spiffe block
	// prepare, if set, runs on the data directory (created 0700) before
	// the broker starts, e.g. to give a replica another broker's CA.
	prepare func(dataDir string)
}

// brokerProc is a running `keybroker serve`.
type brokerProc struct {
	dir        string // holds broker.hcl, policy.hcl and data/
	configFile string
	policyFile string
	dataDir    string
	caFile     string // data/ca/ca.pem, what agents pin
	addr       string // 127.0.0.1:port

	cmd    *exec.Cmd
	log    *syncBuffer // stdout and stderr
	done   chan struct{}
	exit   int // valid once done is closed
	exited bool
}

// startBroker writes broker.hcl and policy.hcl in a fresh directory, starts
// `keybroker serve --config broker.hcl` on a kernel-chosen loopback port and
// waits until its gRPC health service reports the broker SERVING over TLS
// pinned to data/ca/ca.pem. The broker's output goes to the test log when the
// test fails; t.Cleanup stops it.
func startBroker(t *testing.T, opts brokerOpts) *brokerProc {
	t.Helper()
	brokerBin, _ := binaries(t)
	dir := t.TempDir()
	b := &brokerProc{
		dir:        dir,
		configFile: filepath.Join(dir, "broker.hcl"),
		policyFile: filepath.Join(dir, "policy.hcl"),
		dataDir:    filepath.Join(dir, "data"),
		log:        &syncBuffer{},
		done:       make(chan struct{}),
	}
	b.caFile = filepath.Join(b.dataDir, "ca", "ca.pem")

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "listen   = %q\n", "127.0.0.1:0")
	fmt.Fprintf(&cfg, "data_dir = %q\n", "data")
	fmt.Fprintf(&cfg, "policies = [%q]\n", "policy.hcl")
	if len(opts.ekAllow) > 0 {
		fmt.Fprintf(&cfg, "ek_allow = %s\n", hclList(opts.ekAllow))
	}
	for _, ca := range opts.ekCAs {
		fmt.Fprintf(&cfg, "\nek_ca %q {\n  roots = %s\n", ca.name, hclList(ca.roots))
		if len(ca.intermediates) > 0 {
			fmt.Fprintf(&cfg, "  intermediates = %s\n", hclList(ca.intermediates))
		}
		cfg.WriteString("}\n")
	}
	cfg.WriteString(opts.extra)
	if !strings.Contains(opts.extra, "store \"") {
		cfg.WriteString(brokertest.EtcdBlock(t)) // KEYBROKER_TEST_STORE=etcd
	}
	writeFile(t, b.configFile, cfg.String())
	writeFile(t, b.policyFile, opts.policy)
	if opts.prepare != nil {
		if err := os.MkdirAll(b.dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		opts.prepare(b.dataDir)
	}

	b.cmd = exec.Command(brokerBin, "serve", "--config", b.configFile)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	killWithParent(b.cmd)
	start := time.Now()
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("unable to run keybroker serve: %v", err)
	}
	go func() {
		err := b.cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			b.exit = ee.ExitCode()
		default:
			b.exit = -1
		}
		close(b.done)
	}()
	t.Cleanup(func() {
		b.kill()
		if t.Failed() {
			t.Logf("keybroker serve output:\n%s", b.log.String())
		}
	})
	b.waitReady(t)
	t.Logf("broker serving on %s in %v", b.addr, time.Since(start).Round(time.Millisecond))
	return b
}

var listeningRE = regexp.MustCompile(`msg="broker listening" addr=(127\.0\.0\.1:\d+)`)

// waitReady finds the port in the broker's "broker listening" log line, then
// polls the gRPC health service until it reports the broker SERVING.
func (b *brokerProc) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(brokerReadyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-b.done:
			t.Fatalf("keybroker serve exited with %d before serving (its output follows)", b.exit)
		default:
		}
		if b.addr == "" {
			if m := listeningRE.FindStringSubmatch(b.log.String()); m != nil {
				b.addr = m[1]
			}
		}
		if b.addr != "" {
			if lastErr = b.checkHealth(); lastErr == nil {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("keybroker serve not healthy within %v (addr %q, last error %v; its output follows)",
		brokerReadyTimeout, b.addr, lastErr)
}

func (b *brokerProc) checkHealth() error {
	caPEM, err := os.ReadFile(b.caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no PEM certificate", b.caFile)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: brokerService})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health status %v", resp.GetStatus())
	}
	return nil
}

// signal sends sig to the broker.
func (b *brokerProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := b.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("unable to signal the broker: %v", err)
	}
}

// waitLog waits until the broker's output holds substr at least n times.
func (b *brokerProc) waitLog(t *testing.T, substr string, n int) {
	t.Helper()
	deadline := time.Now().Add(logWaitTimeout)
	for strings.Count(b.log.String(), substr) < n {
		select {
		case <-b.done:
			t.Fatalf("keybroker serve exited with %d while waiting for %q in its log", b.exit, substr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker did not log %q %d time(s) within %v", substr, n, logWaitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop sends SIGTERM and returns the broker's exit code.
func (b *brokerProc) stop(t *testing.T) int {
	t.Helper()
	b.signal(t, syscall.SIGTERM)
	select {
	case <-b.done:
		return b.exit
	case <-time.After(brokerStopTimeout):
		b.kill()
		t.Fatalf("keybroker serve did not stop within %v of SIGTERM", brokerStopTimeout)
		return -1
	}
}

// kill stops the broker if it still runs: SIGTERM, then SIGKILL.
func (b *brokerProc) kill() {
	select {
	case <-b.done:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(brokerStopTimeout):
		b.cmd.Process.Kill()
		<-b.done
	}
}

// result is how a command ended.
type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// run runs a binary under test to completion, logging its output.
func run(t *testing.T, bin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), processTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	killWithParent(cmd)
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("%s %s: %v (after %v)\nstdout:\n%s\nstderr:\n%s",
			filepath.Base(bin), strings.Join(args, " "), err, r.took, r.stdout, r.stderr)
	}
	t.Logf("$ %s %s  → exit %d in %v\n%s%s", filepath.Base(bin), strings.Join(args, " "), r.code,
		r.took.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

// agent runs keybroker-agent.
func agent(t *testing.T, args ...string) result {
	t.Helper()
	_, agentBin := binaries(t)
	return run(t, agentBin, args...)
}

// keybroker runs the keybroker command (not serve).
func keybroker(t *testing.T, args ...string) result {
	t.Helper()
	brokerBin, _ := binaries(t)
	return run(t, brokerBin, args...)
}

// bootstrap runs `keybroker-agent bootstrap` against b with tpm, writing to out.
func bootstrap(t *testing.T, tpm *swtpmtest.TPM, b *brokerProc, out string, extra ...string) result {
	t.Helper()
	args := []string{"bootstrap", "--tpm", "tcp://" + tpm.Addr, "--broker", b.addr, "--ca", b.caFile, "--out", out}
	return agent(t, append(args, extra...)...)
}

// wantExit fails the test unless r exited with code.
func wantExit(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

// wantContains fails the test unless s holds every one of subs.
func wantContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}

var (
	receiptRE = regexp.MustCompile(`(?m)^attest\s+\S+\s+receipt (\S+), 1 credential\(s\)$`)
	serialRE  = regexp.MustCompile(`(?m)^write\s+\S+\s+wrote .* \(serial ([0-9a-f]+), valid until `)
	refusedRE = regexp.MustCompile(`\(receipt (\S+)\)`)
)

// bootstrapped is what a successful agent run reported on stdout.
type bootstrapped struct {
	receipt, serial string
}

// wantBootstrapped checks that the agent succeeded and printed every step in
// order, and returns the receipt ID and serial it printed.
func wantBootstrapped(t *testing.T, r result, mode string) bootstrapped {
	t.Helper()
	wantExit(t, r, 0)
	if r.stderr != "" {
		t.Errorf("agent stderr not empty on success:\n%s", r.stderr)
	}
	var steps []string
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			steps = append(steps, f[0])
		}
	}
	want := []string{"challenge", "activate", "quote", "attest", "open", "write"}
	if len(steps) < len(want) || !slices.Equal(steps[:len(want)], want) {
		t.Errorf("agent steps = %v, want %v first", steps, want)
	}
	wantContains(t, "agent stdout", r.stdout,
		"credential activated: the AK and EK share this TPM",
		"1 bank(s) quoted", // swtpm_setup leaves only sha256 active
		"opened inside the TPM ("+mode+")")
	var got bootstrapped
	if m := receiptRE.FindStringSubmatch(r.stdout); m != nil {
		got.receipt = m[1]
	} else {
		t.Errorf("no receipt ID in agent stdout:\n%s", r.stdout)
	}
	if m := serialRE.FindStringSubmatch(r.stdout); m != nil {
		got.serial = m[1]
	} else {
		t.Errorf("no serial in agent stdout:\n%s", r.stdout)
	}
	return got
}

// pcrs models the sha256 PCRs 0 and 7 of one swtpm since its last reset.
type pcrs struct {
	tpm    *swtpmtest.TPM
	values map[int][]byte
}

func newPCRs(tpm *swtpmtest.TPM) *pcrs {
	return &pcrs{tpm: tpm, values: map[int][]byte{0: make([]byte, 32), 7: make([]byte, 32)}}
}

// measure extends sha256 PCR pcr with the digest of event over the swtpm
// socket, then reads PCR 0 and 7 back and checks them against the model. The
// connection is closed before it returns: swtpm serves one client at a time.
func (p *pcrs) measure(t *testing.T, pcr int, event string) {
	t.Helper()
	digest := sha256.Sum256([]byte(event))
	rw := p.tpm.Dial(t)
	defer rw.Close()
	if err := legacy.PCRExtend(rw, tpmutil.Handle(pcr), legacy.AlgSHA256, digest[:], ""); err != nil {
		t.Fatalf("unable to extend PCR %d: %v", pcr, err)
	}
	h := sha256.New()
	h.Write(p.values[pcr])
	h.Write(digest[:])
	p.values[pcr] = h.Sum(nil)
	for _, i := range []int{0, 7} {
		got, err := legacy.ReadPCR(rw, i, legacy.AlgSHA256)
		if err != nil {
			t.Fatalf("unable to read PCR %d: %v", i, err)
		}
		if !bytes.Equal(got, p.values[i]) {
			t.Fatalf("sha256 PCR %d = %x, want %x after extending %q", i, got, p.values[i], event)
		}
	}
}

// value returns the modelled value of PCR pcr in lowercase hex.
func (p *pcrs) value(pcr int) string { return hex.EncodeToString(p.values[pcr]) }

// bootMeasured extends PCR 0 and 7 as a firmware and a secure-boot state would.
func bootMeasured(t *testing.T, tpm *swtpmtest.TPM) *pcrs {
	t.Helper()
	p := newPCRs(tpm)
	p.measure(t, 0, "e2e firmware v1")
	p.measure(t, 7, "e2e secure boot: enabled")
	return p
}

// ekHashOf computes the hash of swtpm's certified RSA EK with go-tpm-tools
// and verify.EKHash, independently of the agent.
func ekHashOf(t *testing.T, tpm *swtpmtest.TPM) string {
	t.Helper()
	rw := tpm.Dial(t)
	defer rw.Close()
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatalf("unable to load the EK: %v", err)
	}
	defer ek.Close()
	h, err := verify.EKHash(ek.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// policyOpts describe the single policy "e2e" of a test.
type policyOpts struct {
	selector string   // the body of select, e.g. `ek_cas = ["swtpm"]`
	require  []string // CEL expressions
	mode     string   // pcr_sealed (sealed to sha256 PCR 0 and 7) or tpm_bound
}

func policyHCL(p policyOpts) string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy \"e2e\" {\n  select {\n    %s\n  }\n  require = [\n", p.selector)
	for _, r := range p.require {
		fmt.Fprintf(&b, "    %q,\n", r)
	}
	b.WriteString("  ]\n  release \"node-tls\" {\n    type        = \"tls_certificate\"\n")
	fmt.Fprintf(&b, "    mode        = %q\n", p.mode)
	if p.mode == "pcr_sealed" {
		b.WriteString("    pcr_bank    = \"sha256\"\n    pcrs        = [0, 7]\n")
	}
	b.WriteString("    ttl         = \"1h\"\n" +
		"    common_name = \"node-${ek_hash_short}\"\n" +
		"    dns_names   = [\"${ek_hash_short}.nodes.e2e.keybroker\"]\n" +
		"  }\n}\n")
	return b.String()
}

// pcrRequire is the require list pinning PCR 0 and 7 to the given values.
func pcrRequire(pcr0, pcr7 string) []string {
	return []string{
		"ek.certified",
		"pcrs.sha256[0] == '" + pcr0 + "'",
		"pcrs.sha256[7] == '" + pcr7 + "'",
	}
}

func hclList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// credFiles are the files bootstrap writes, sorted.
var credFiles = []string{"cert.pem", "chain.pem", "key.pem"}

// snapshot reads the credential files in dir.
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	for _, f := range credFiles {
		m[f] = readFile(t, filepath.Join(dir, f))
	}
	return m
}

// wantCredential checks what a bootstrap wrote in dir: exactly the three
// files (no temporary leftovers), key.pem mode 0600, cert.pem chaining to the
// broker CA (with chain.pem as intermediates) and matching key.pem, with the
// names and serial the policy and agent announced. It returns the leaf.
func wantCredential(t *testing.T, dir string, b *brokerProc, ekHash, serial string) *x509.Certificate {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, credFiles) {
		t.Errorf("%s holds %v, want exactly %v", dir, names, credFiles)
	}
	fi, err := os.Stat(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v, want 0600", fi.Mode().Perm())
	}
	certPEM, keyPEM := readFile(t, filepath.Join(dir, "cert.pem")), readFile(t, filepath.Join(dir, "key.pem"))
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("cert.pem and key.pem do not match: %v", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("cert.pem holds no PEM block")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(readFile(t, b.caFile)) {
		t.Fatal("ca.pem holds no certificate")
	}
	inter := x509.NewCertPool()
	if !inter.AppendCertsFromPEM(readFile(t, filepath.Join(dir, "chain.pem"))) {
		t.Error("chain.pem holds no certificate")
	}
	short := ekHash[:16]
	dnsName := short + ".nodes.e2e.keybroker"
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: dnsName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("cert.pem does not verify against the broker CA for %s: %v", dnsName, err)
	}
	if leaf.Subject.CommonName != "node-"+short {
		t.Errorf("cert.pem common name %q, want %q", leaf.Subject.CommonName, "node-"+short)
	}
	if got := leaf.SerialNumber.Text(16); got != serial {
		t.Errorf("cert.pem serial %s, agent printed %s", got, serial)
	}
	if ttl := time.Until(leaf.NotAfter); ttl < 50*time.Minute || ttl > 70*time.Minute {
		t.Errorf("cert.pem expires in %v, policy ttl is 1h", ttl)
	}
	return leaf
}

// receipts lists the broker's receipts with `keybroker receipts list --json`.
func receipts(t *testing.T, b *brokerProc) []store.Receipt {
	t.Helper()
	r := keybroker(t, "receipts", "list", "--config", b.configFile, "--json", "--limit", "1000")
	wantExit(t, r, 0)
	var rs []store.Receipt
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	for dec.More() {
		var rec store.Receipt
		if err := dec.Decode(&rec); err != nil {
			t.Fatalf("receipts list --json: %v\n%s", err, r.stdout)
		}
		rs = append(rs, rec)
	}
	return rs
}

// receiptByID finds one receipt.
func receiptByID(t *testing.T, rs []store.Receipt, id string) store.Receipt {
	t.Helper()
	for _, r := range rs {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("no receipt %s among %d", id, len(rs))
	return store.Receipt{}
}
