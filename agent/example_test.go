package agent_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/workload"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// What `keybroker-agent run` does: attest, install the node SVID and
// workload entries, serve the Workload API, and keep the identities
// current.
func ExampleSVIDManager_Run() {
	ctx := context.Background()
	caPEM, _ := os.ReadFile("/etc/keybroker/broker-ca.pem")
	conn, err := agent.Dial("broker.example.com:8443", caPEM, "")
	if err != nil {
		return
	}
	defer conn.Close()
	rw, err := agent.OpenTPM("/dev/tpmrm0")
	if err != nil {
		return
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		return
	}
	defer node.Close()
	attest := func(ctx context.Context) (*agent.Attestation, error) {
		return agent.Attest(ctx, pb.NewBrokerClient(conn), node, agent.AttestOpts{})
	}

	mgr, err := agent.NewSVIDManager(agent.BrokerTarget{Addr: "broker.example.com:8443", CAPEM: caPEM},
		agent.WithGrace(0), agent.WithRetry(time.Second, time.Minute))
	if err != nil {
		return
	}
	att, err := attest(ctx)
	if err != nil {
		slog.Error("attestation failed", "error", err)
		return
	}
	if err := mgr.Update(ctx, att); err != nil {
		slog.Warn("some workload SVIDs are not issued yet; Run retries", "error", err)
	}
	lis, err := workload.Listen(workload.DefaultSocket)
	if err != nil {
		return
	}
	go workload.NewServer(mgr).Serve(ctx, lis)
	mgr.Run(ctx, attest) // until ctx is done
}

// What `keybroker-agent vault-login` does: log in to Vault's TPM auth
// method with this node's TPM and keep the token where the vault CLI reads
// it.
func ExampleVaultLogin() {
	caPEM, _ := os.ReadFile("/etc/keybroker/vault-ca.pem")
	c, err := agent.NewVaultClient("https://vault.example.com:8200", agent.VaultClientOpts{CAPEM: caPEM})
	if err != nil {
		return
	}
	rw, err := agent.OpenTPM("/dev/tpmrm0")
	if err != nil {
		return
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		return
	}
	defer node.Close()
	eventLog, _ := agent.ReadEventLog("auto")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := agent.VaultLogin(ctx, c, node, agent.VaultLoginOpts{Role: "web", EventLog: eventLog})
	if err != nil {
		slog.Error("vault login failed", "error", err) // a *StepError naming the stage
		return
	}
	home, _ := os.UserHomeDir()
	os.WriteFile(filepath.Join(home, ".vault-token"), []byte(res.Auth.ClientToken), 0o600)
}
