package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/cli"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// The demo's policy: the node's EK, its measured PCR 0 and 7, and a TLS
// certificate sealed to those PCRs.
const demoPolicy = `policy "demo" {
  select {
    ek_hashes = [%q]
  }
  require = [
    "pcrs.sha256[0] == '%s'",
    "pcrs.sha256[7] == '%s'",
  ]
  release "node-tls" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcr_bank    = "sha256"
    pcrs        = [0, 7]
    ttl         = "1h"
    common_name = "node-${ek_hash_short}"
    dns_names   = ["${ek_hash_short}.nodes.demo.keybroker"]
  }
}
`

const demoConfig = `listen   = "127.0.0.1:0"
data_dir = "broker"
policies = ["policy.hcl"]
ek_allow = [%q]
`

func demoCmd() *cobra.Command {
	var keep, akType string
	cmd := &cobra.Command{
		Use:   "demo [--keep DIR]",
		Short: "Broker and agent on the embedded TPM simulator",
		Long: `Starts a broker and runs the agent's bootstrap on the embedded TPM simulator:
a node whose measured boot matches the policy receives a TLS credential sealed
to its PCRs; after its boot chain changes, it is refused and nothing is
released.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.Code(demo(keep, akType, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	cmd.Flags().StringVar(&keep, "keep", "", "work in this directory and keep it (default: a temporary directory, removed)")
	cmd.Flags().StringVar(&akType, "ak", "rsa", "attestation key type: rsa or ecc")
	return cmd
}

func demo(keep, akType string, stdout, stderr io.Writer) int {
	dir := keep
	if dir == "" {
		tmp, err := os.MkdirTemp("", "keybroker-demo-")
		if err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	if err := runDemo(dir, akType, keep != "", stdout); err != nil {
		fmt.Fprintf(stderr, "demo FAILED: %v\n", err)
		return 1
	}
	return 0
}

func runDemo(dir, akType string, kept bool, out io.Writer) error {
	say := func(step string, took time.Duration, format string, args ...any) {
		fmt.Fprintf(out, "%-9s %8s  %s\n", step, took.Round(100*time.Microsecond), fmt.Sprintf(format, args...))
	}
	fmt.Fprintf(out, "keybroker demo in %s\n\n", dir)

	t := time.Now()
	rw, err := agent.OpenTPM("simulator")
	if err != nil {
		return err
	}
	defer rw.Close()
	// A measured boot: firmware into PCR 0, secure-boot state into PCR 7.
	if err := extend(rw, 0, "demo firmware v1"); err != nil {
		return err
	}
	if err := extend(rw, 7, "secure boot: enabled"); err != nil {
		return err
	}
	node, err := agent.NewNode(rw, agent.NodeOpts{AK: akType})
	if err != nil {
		return err
	}
	defer node.Close()
	ekHash, err := node.EKHash()
	if err != nil {
		return err
	}
	pcrs, err := client.ReadPCRs(rw, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		return fmt.Errorf("unable to read PCRs: %w", err)
	}
	say("tpm", time.Since(t), "embedded simulator up, measured boot in PCR 0 and 7, EK %s…, %s AK", ekHash[:16], akType)

	t = time.Now()
	policyFile := filepath.Join(dir, "policy.hcl")
	configFile := filepath.Join(dir, "broker.hcl")
	pol := fmt.Sprintf(demoPolicy, ekHash, hex.EncodeToString(pcrs.GetPcrs()[0]), hex.EncodeToString(pcrs.GetPcrs()[7]))
	if err := os.WriteFile(policyFile, []byte(pol), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(configFile, []byte(fmt.Sprintf(demoConfig, ekHash)), 0o600); err != nil {
		return err
	}
	cfg, err := broker.LoadConfig(configFile)
	if err != nil {
		return err
	}
	b, err := broker.Start(cfg, nil)
	if err != nil {
		return err
	}
	defer b.Stop()
	caPEM := b.CA.BundlePEM()
	say("broker", time.Since(t), "listening on %s (TLS, own CA); policy %s requires PCR 0 and 7", b.Addr(), policyFile)

	conn, err := agent.Dial(b.Addr(), caPEM, "")
	if err != nil {
		return err
	}
	defer conn.Close()
	brokerClient := pb.NewBrokerClient(conn)
	outDir := filepath.Join(dir, "node")
	progress := func(s agent.Step, took time.Duration, detail string) { say(string(s), took, "%s", detail) }

	fmt.Fprintln(out, "\n1. the node attests and receives a TLS credential sealed to its PCRs")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	total := time.Now()
	res, err := agent.Bootstrap(ctx, brokerClient, node, agent.BootstrapOpts{OutDir: outDir, Progress: progress})
	if err != nil {
		return err
	}
	say("total", time.Since(total), "receipt %s", res.ReceiptID)
	if err := checkWritten(outDir, caPEM); err != nil {
		return fmt.Errorf("written credential: %w", err)
	}
	say("check", 0, "cert.pem chains to the broker CA, key.pem (0600) matches it")

	fmt.Fprintln(out, "\n2. the boot chain changes (PCR 7 extended); the node asks again")
	if err := extend(rw, 7, "unknown bootloader"); err != nil {
		return err
	}
	before, _ := os.ReadFile(filepath.Join(outDir, agent.CertFile))
	_, err = agent.Bootstrap(ctx, brokerClient, node, agent.BootstrapOpts{OutDir: outDir, Progress: progress})
	var se *agent.StepError
	if !errors.As(err, &se) || se.Step != agent.StepAttest {
		return fmt.Errorf("a changed PCR was not refused at attest: %v", err)
	}
	say("refused", 0, "%v", se.Err)
	after, _ := os.ReadFile(filepath.Join(outDir, agent.CertFile))
	if string(before) != string(after) {
		return errors.New("the refused attempt changed the written credential")
	}
	say("check", 0, "nothing released; %s unchanged", outDir)

	if kept {
		fmt.Fprintf(out, "\ndemo OK: see 'keybroker receipts list --data-dir %s' for the decisions\n", filepath.Join(dir, "broker"))
	} else {
		fmt.Fprintln(out, "\ndemo OK (run 'keybroker demo --keep DIR' to keep the broker's data and read its receipts)")
	}
	return nil
}

func extend(rw io.ReadWriter, pcr int, event string) error {
	sum := sha256.Sum256([]byte(event))
	if err := tpm2.PCRExtend(rw, tpmutil.Handle(pcr), tpm2.AlgSHA256, sum[:], ""); err != nil {
		return fmt.Errorf("unable to extend PCR %d: %w", pcr, err)
	}
	return nil
}

// checkWritten verifies the bootstrap output: the certificate chains to the
// CA and the private key (mode 0600) belongs to it.
func checkWritten(dir string, caPEM []byte) error {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, agent.CertFile), filepath.Join(dir, agent.KeyFile))
	if err != nil {
		return err
	}
	fi, err := os.Stat(filepath.Join(dir, agent.KeyFile))
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != 0o600 {
		return fmt.Errorf("key.pem has mode %v, want 0600", fi.Mode().Perm())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}
