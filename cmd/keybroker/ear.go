package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/cli"
)

type earJWKSOpts struct {
	configPath string
}

func earJWKSCmd() *cobra.Command {
	return configKeyCmd("jwks", "Print the JWKS that verifies the broker's attestation results",
		`Print the JWK Set of the broker's attestation result key (kid, alg ES256,
use sig), as the GetAttestationResultKeys RPC publishes it, for relying
parties that verify the EAR attestation results nodes hand them. It reads
the key named by the attestation_results block (key_file, or the key the
broker made in data_dir/ear on its first start) and never creates one.`,
		"broker configuration file with an attestation_results block",
		func(path string, stdout, stderr io.Writer) int {
			return earJWKS(earJWKSOpts{configPath: path}, stdout, stderr)
		})
}

// configKeyCmd is a command that takes only --config (required) and prints
// a key the configuration names: ear jwks, pcr-policy keys.
func configKeyCmd(name, short, long, flagHelp string, run func(configPath string, stdout, stderr io.Writer) int) *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   name + " --config broker.hcl",
		Short: short,
		Long:  long,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			if configPath == "" {
				p.Addf("--config is required")
			}
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(run(configPath, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", flagHelp)
	return cmd
}

func earJWKS(o earJWKSOpts, stdout, stderr io.Writer) int {
	cfg, err := broker.LoadConfig(o.configPath)
	if err != nil {
		fmt.Fprintf(stderr, "ear jwks: invalid configuration:\n%v\n", err)
		return 1
	}
	if cfg.AttestationResults == nil {
		fmt.Fprintf(stderr, "ear jwks: %s has no attestation_results block\n", o.configPath)
		return 1
	}
	jwks, err := broker.LoadResultKeys(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "ear jwks: unable to load the result key (has the broker started with attestation_results?): %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", jwks)
	return 0
}
