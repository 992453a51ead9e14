package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/cli"
)

const evidenceShowLong = `Prints, as JSON, the evidence of the node's last verified attestation: the EK
and AK publics and certificates, the challenge's secret hash, the quotes and
the event log as the node sent them, and the counters they were compared
with. 'keybroker policy eval --evidence FILE' evaluates policies on it.`

type evidenceOpts struct {
	configPath, dataDir, ekHash string
}

func evidenceShowCmd() *cobra.Command {
	var o evidenceOpts
	cmd := &cobra.Command{
		Use:   "show (--config broker.hcl | --data-dir DIR) --node EKHASH",
		Short: "Print a node's last verified evidence, as JSON",
		Long:  evidenceShowLong,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			if o.configPath == "" && o.dataDir == "" {
				p.Addf("--config or --data-dir is required")
			}
			p.Required(cmd, "node")
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(evidenceShow(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configPath, "config", "", "broker configuration file (its data_dir holds the store)")
	f.StringVar(&o.dataDir, "data-dir", "", "the broker's data directory (instead of --config)")
	f.StringVar(&o.ekHash, "node", "", "the node's EK hash (required)")
	return cmd
}

func evidenceShow(o evidenceOpts, stdout, stderr io.Writer) int {
	where, ok := (&storeFlags{configPath: o.configPath, dataDir: o.dataDir}).load("evidence", stderr)
	if !ok {
		return 1
	}
	n, err := broker.GetNode(context.Background(), where, o.ekHash)
	if err != nil {
		fmt.Fprintf(stderr, "evidence: node %s: %v\n", o.ekHash, err)
		return 1
	}
	b, err := json.MarshalIndent(n.Evidence, "", "  ")
	if err != nil {
		fmt.Fprintf(stderr, "evidence: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}

// readEvidence reads a attestation.Evidence as `keybroker evidence show` prints it.
func readEvidence(path string) (attestation.Evidence, error) {
	var ev attestation.Evidence
	b, err := os.ReadFile(path)
	if err != nil {
		return ev, fmt.Errorf("unable to read evidence: %w", err)
	}
	if len(b) > 2*store.MaxNodeRecordBytes {
		return ev, fmt.Errorf("%s is too large to be evidence", path)
	}
	if err := json.Unmarshal(b, &ev); err != nil {
		return ev, fmt.Errorf("%s is not evidence JSON: %w", path, err)
	}
	if len(ev.EKPublic) == 0 || len(ev.Quotes) == 0 {
		return ev, fmt.Errorf("%s holds no evidence (no ek_public or quotes)", path)
	}
	return ev, nil
}
