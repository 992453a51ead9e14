package loadgen

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/softtpm"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Broker is a keybroker serve process started by StartBroker.
type Broker struct {
	Addr  string
	CAPEM []byte
	// Dir holds keybroker.hcl, nodes.hcl, broker.log and data/.
	Dir  string
	cmd  *exec.Cmd
	exit chan error
}

// startTimeout bounds how long the broker may take to serve.
const startTimeout = 30 * time.Second

// StartBroker runs exe serve with a configuration in a new temporary
// directory that trusts every node by EK hash (ek_allow) or, with ekCA,
// through ekCA's root (an ek_ca block), has no admission limits, and a
// policy releasing a TPM-bound TLS certificate to the nodes (selected by EK
// hash, or by the EK CA) while their sha256 PCRs 0 and 7 hold their
// values (and, when the nodes send an event log, it verified:
// eventlog.present); it returns once the broker answers health checks. Stop it, then
// Cleanup.
func StartBroker(ctx context.Context, exe string, nodes []*softtpm.Node, ekCA *softtpm.EKCA) (*Broker, error) {
	dir, err := os.MkdirTemp("", "keybroker-loadgen-")
	if err != nil {
		return nil, fmt.Errorf("unable to make the broker's directory: %w", err)
	}
	b := &Broker{Dir: dir, exit: make(chan error, 1)}
	if err := b.start(ctx, exe, nodes, ekCA); err != nil {
		_ = b.Stop()
		b.Cleanup()
		return nil, err
	}
	return b, nil
}

func (b *Broker) start(ctx context.Context, exe string, nodes []*softtpm.Node, ekCA *softtpm.EKCA) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	cfgPath, err := WriteConfig(b.Dir, addr, nodes, ekCA)
	if err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(b.Dir, "broker.log"))
	if err != nil {
		return fmt.Errorf("unable to create the broker's log: %w", err)
	}
	defer logFile.Close()
	b.cmd = exec.Command(exe, "serve", "--config", cfgPath)
	b.cmd.Stdout, b.cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C stops the run, then the run stops
	// the broker; it dies with the load generator.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := b.cmd.Start(); err != nil {
		b.cmd = nil
		return fmt.Errorf("unable to start %s serve: %w", exe, err)
	}
	go func() { b.exit <- b.cmd.Wait() }()
	b.Addr = addr
	return b.waitServing(ctx)
}

// waitServing polls for the broker's CA and a SERVING health check.
func (b *Broker) waitServing(ctx context.Context) error {
	deadline := time.Now().Add(startTimeout)
	caPath := filepath.Join(b.Dir, "data", "ca", "ca.pem")
	for time.Now().Before(deadline) {
		select {
		case err := <-b.exit:
			b.exit <- err
			return fmt.Errorf("the broker exited before serving (%v): %s", err, b.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		ca, err := os.ReadFile(caPath)
		if err != nil {
			continue
		}
		if healthy(ctx, b.Addr, ca) {
			b.CAPEM = ca
			return nil
		}
	}
	return fmt.Errorf("the broker did not serve within %v: %s", startTimeout, b.logTail())
}

func healthy(ctx context.Context, addr string, caPEM []byte) bool {
	conn, err := agent.Dial(addr, caPEM, "")
	if err != nil {
		return false
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: pb.Broker_ServiceDesc.ServiceName})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// logTail is the end of the broker's log, for errors.
func (b *Broker) logTail() string {
	raw, _ := os.ReadFile(filepath.Join(b.Dir, "broker.log"))
	s := strings.TrimSpace(string(raw))
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	return s
}

// PID is the broker's process id.
func (b *Broker) PID() int { return b.cmd.Process.Pid }

// StorePath is the broker's bolt store file.
func (b *Broker) StorePath() string { return filepath.Join(b.Dir, "data", "store.db") }

// Stop sends SIGTERM and waits for the broker to exit (SIGKILL after 10s).
func (b *Broker) Stop() error {
	if b.cmd == nil {
		return nil
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-b.exit:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		err = <-b.exit
		err = fmt.Errorf("the broker did not stop on SIGTERM: %w", err)
	}
	b.cmd = nil
	if err != nil {
		return fmt.Errorf("the broker failed: %w: %s", err, b.logTail())
	}
	return nil
}

// Cleanup removes the broker's directory.
func (b *Broker) Cleanup() { _ = os.RemoveAll(b.Dir) }

// freeAddr is a loopback address with a port free right now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("unable to find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// EKCAName is the name of the ek_ca block WriteConfig writes for the
// fleet's EK CA, and EKCAFile the file in the broker's directory that holds
// its root.
const (
	EKCAName = "loadgen"
	EKCAFile = "ek-ca.pem"
)

// WriteConfig writes keybroker.hcl and nodes.hcl into dir for a broker on
// addr that trusts nodes, and returns the configuration's path. Without
// ekCA, it trusts them by EK hash (ek_allow) and its policy selects them by
// EK hash; with ekCA, it writes ekCA's root to EKCAFile, trusts it (an
// ek_ca block named EKCAName, no ek_allow) and its policy selects the
// nodes by that CA (ek_cas). The policy requires the first node's sha256
// PCRs 0 and 7 and, if it sends an event log, eventlog.present.
func WriteConfig(dir, addr string, nodes []*softtpm.Node, ekCA *softtpm.EKCA) (string, error) {
	if len(nodes) == 0 {
		return "", errors.New("no nodes to trust")
	}
	pcrs, err := nodes[0].PCRs(tpm2.TPMAlgSHA256)
	if err != nil {
		return "", err
	}
	var trust, selector string
	if ekCA == nil {
		hashes := hclList(EKHashes(nodes))
		trust, selector = "ek_allow = "+hashes, "ek_hashes = "+hashes
	} else {
		if err := os.WriteFile(filepath.Join(dir, EKCAFile), ekCA.RootPEM(), 0o600); err != nil {
			return "", fmt.Errorf("unable to write the EK CA: %w", err)
		}
		trust = fmt.Sprintf("ek_ca %q {\n  roots = [%q]\n}", EKCAName, EKCAFile)
		selector = fmt.Sprintf("ek_cas = [%q]", EKCAName)
	}
	require := []string{
		fmt.Sprintf("pcrs.sha256[0] == '%s'", hex.EncodeToString(pcrs[0])),
		fmt.Sprintf("pcrs.sha256[7] == '%s'", hex.EncodeToString(pcrs[7])),
	}
	if nodes[0].EventLog() != nil {
		require = append(require, "eventlog.present")
	}
	policy := fmt.Sprintf(policyHCL, selector, hclList(require))
	cfg := fmt.Sprintf(configHCL, addr, trust)
	if err := os.WriteFile(filepath.Join(dir, "nodes.hcl"), []byte(policy), 0o600); err != nil {
		return "", fmt.Errorf("unable to write the policy: %w", err)
	}
	path := filepath.Join(dir, "keybroker.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", fmt.Errorf("unable to write the configuration: %w", err)
	}
	return path, nil
}

func hclList(items []string) string {
	var b strings.Builder
	b.WriteString("[\n")
	for _, it := range items {
		fmt.Fprintf(&b, "    %q,\n", it)
	}
	b.WriteString("  ]")
	return b.String()
}

// configHCL: address, the nodes' trust (ek_allow or an ek_ca block). A boot storm is what admission limits
// would throttle: they are off.
const configHCL = `listen               = %q
data_dir             = "data"
server_names         = ["127.0.0.1"]
policies             = ["nodes.hcl"]
policy_poll_interval = "0"
%s
limits {
  challenge_per_ek              = "off"
  challenge_per_address         = "off"
  attest_per_ek                 = "off"
  attest_per_address            = "off"
  outstanding_challenges_per_ek = 0
}
`

// policyHCL: the selector (ek_hashes or ek_cas), the requirements (sha256
// PCR 0 and 7: every node boots the same).
const policyHCL = `policy "loadgen" {
  select {
    %s
  }
  require = %s
  release "node-tls" {
    type        = "tls_certificate"
    mode        = "tpm_bound"
    ttl         = "2h"
    common_name = "node-${ek_hash_short}"
    dns_names   = ["${ek_hash_short}.nodes.test"]
  }
}
`

// countReceipts sets sum.Receipts to the fleet's nodes with an allowed
// receipt that records a release, read from the stopped broker's store.
func (b *Broker) countReceipts(ctx context.Context, nodes []*softtpm.Node, sum *Summary) error {
	n, err := CountReleaseReceipts(ctx, filepath.Join(b.Dir, "data"), EKHashes(nodes))
	if err != nil {
		return err
	}
	sum.Receipts = &n
	return nil
}

// CountReleaseReceipts counts the EK hashes among ekHashes that have an
// allowed receipt with a release in the store of dataDir.
func CountReleaseReceipts(ctx context.Context, dataDir string, ekHashes []string) (int, error) {
	want := make(map[string]bool, len(ekHashes))
	for _, h := range ekHashes {
		want[h] = true
	}
	cfg := &broker.Config{DataDir: dataDir}
	seen := map[string]bool{}
	before := ""
	for {
		rs, err := broker.ListReceipts(ctx, cfg, store.ListOpts{Limit: store.MaxListLimit, Before: before})
		if err != nil {
			return 0, fmt.Errorf("unable to read the receipts: %w", err)
		}
		for _, r := range rs {
			if r.Allowed && len(r.Released) > 0 && want[r.EKHash] {
				seen[r.EKHash] = true
			}
		}
		if len(rs) < store.MaxListLimit {
			return len(seen), nil
		}
		before = rs[len(rs)-1].ID
	}
}
