package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/cli"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// vaultLoginOutput is what --format=json prints: Vault's auth block under
// "auth", as `vault login -format=json` prints it, so that
// `jq -r .auth.client_token` works the same.
type vaultLoginOutput struct {
	Auth      *vaultapi.SecretAuth `json:"auth"`
	Unwrapped bool                 `json:"unwrapped,omitempty"`
	// Sealed is "tpm_bound" or "pcr_sealed" when the role sealed the
	// token to this TPM (token_envelope).
	Sealed    string `json:"sealed,omitempty"`
	TokenFile string `json:"token_file,omitempty"`
}

type vaultLoginOpts struct {
	node      nodeFlags
	addr      string
	role      string
	mount     string
	caCert    string
	tokenFile string
	format    string
	quiet     bool
	identity  identityFlags
}

func vaultLoginCmd() *cobra.Command {
	var o vaultLoginOpts
	cmd := &cobra.Command{
		Use:   "vault-login --vault-addr https://HOST:PORT --role ROLE",
		Short: "Log in to Vault's TPM auth method and keep the token",
		Long: `Runs challenge → activate credential → quote → login to Vault's TPM auth
method, then writes the token to ~/.vault-token (0600) or prints it as JSON
(--format=json).`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			caPEM := o.check(cmd, &p)
			in := o.node.check(&p)
			o.identity.check(&p)
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(vaultLogin(o, caPEM, in, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "vault-addr", os.Getenv("VAULT_ADDR"), "Vault's address, https://HOST:PORT (default $VAULT_ADDR; required)")
	f.StringVar(&o.role, "role", "", "the TPM auth method's role to log in with (required)")
	f.StringVar(&o.mount, "mount", agent.DefaultVaultMount, "the path the TPM auth method is enabled at (auth/<mount>/...)")
	f.StringVar(&o.caCert, "ca-cert", os.Getenv("VAULT_CACERT"), "PEM file with the CA bundle that Vault's TLS certificate must chain to (default $VAULT_CACERT; empty: the system's roots)")
	f.StringVar(&o.tokenFile, "token-file", "", "write the token here, mode 0600, atomically (default ~/.vault-token, where the vault CLI reads it; with --format=json no file unless this is set)")
	f.StringVar(&o.format, "format", "text", "output: text (steps, then where the token was written) or json (Vault's auth block, token included, on stdout)")
	o.node.register(f, "give up after this long")
	f.BoolVar(&o.quiet, "quiet", false, "text format: print only errors")
	o.identity.register(f)
	return cmd
}

// check records every problem with the Vault flags and returns the CA
// bundle read from --ca-cert, if set.
func (o *vaultLoginOpts) check(cmd *cobra.Command, p *cli.Problems) []byte {
	p.Required(cmd, "vault-addr", "role")
	if o.format != "text" && o.format != "json" {
		p.Addf("--format: unknown format %q: want text or json", o.format)
	}
	if o.tokenFile == "" && o.format == "text" {
		home, err := os.UserHomeDir()
		if err != nil {
			p.Addf("no --token-file and no home directory: %v", err)
		} else {
			o.tokenFile = filepath.Join(home, ".vault-token")
		}
	}
	if o.caCert == "" {
		return nil
	}
	caPEM, err := readPEMCerts(o.caCert, "Vault CA bundle")
	p.Check("ca-cert", err)
	return caPEM
}

// vaultLogin is `keybroker-agent vault-login`: attest to Vault's TPM auth
// method and keep the token it issues.
func vaultLogin(o vaultLoginOpts, caPEM []byte, in nodeInputs, stdout, stderr io.Writer) int {
	out := o.tokenFile
	client, err := agent.NewVaultClient(o.addr, agent.VaultClientOpts{CAPEM: caPEM, Timeout: o.node.timeout})
	if err != nil {
		fmt.Fprintf(stderr, "vault-login: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.node.timeout)
	defer cancel()

	rw, err := agent.OpenTPM(o.node.tpm)
	if err != nil {
		fmt.Fprintf(stderr, "vault-login failed at tpm: %v\n", err)
		return 1
	}
	defer rw.Close()
	identityLog, err := readIdentityLog(o.identity, rw)
	if err != nil {
		fmt.Fprintf(stderr, "vault-login failed at tpm: %v\n", err)
		return 1
	}
	node, err := agent.NewNode(rw, agent.NodeOpts{AK: o.node.ak, EKIntermediates: in.intermediates, PolicyCounter: in.counter,
		IdentityLog: func() []byte { return identityLog }})
	if err != nil {
		fmt.Fprintf(stderr, "vault-login failed at tpm: %v\n", err)
		return 1
	}
	defer node.Close()

	opts := agent.VaultLoginOpts{Role: o.role, Mount: o.mount, EventLog: in.eventLog}
	if o.format == "text" && !o.quiet {
		opts.Progress = func(s agent.Step, took time.Duration, detail string) {
			fmt.Fprintf(stdout, "%-9s %8s  %s\n", s, took.Round(100*time.Microsecond), detail)
		}
	}
	res, err := agent.VaultLogin(ctx, client, node, opts)
	if err != nil {
		var se *agent.StepError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "vault-login failed at %s: %v\n", se.Step, se.Err)
		} else {
			fmt.Fprintf(stderr, "vault-login failed: %v\n", err)
		}
		return 1
	}
	if out != "" {
		// No trailing newline: the vault CLI's token helper writes the
		// file the same way.
		if err := atomicfile.Write(out, []byte(res.Auth.ClientToken), 0o600); err != nil {
			fmt.Fprintf(stderr, "vault-login failed at write: %v\n", err)
			return 1
		}
	}
	if o.format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(vaultLoginOutput{Auth: res.Auth, Unwrapped: res.Unwrapped, Sealed: sealedName(res.Sealed), TokenFile: out}); err != nil {
			fmt.Fprintf(stderr, "vault-login: %v\n", err)
			return 1
		}
		return 0
	}
	if !o.quiet {
		fmt.Fprintf(stdout, "%-9s %8s  token written to %s (mode 0600)\n", agent.StepWrite, "", out)
	}
	return 0
}

// sealedName names an envelope mode as roles and policies do.
func sealedName(m pb.ReleaseMode) string {
	switch m {
	case pb.ReleaseMode_TPM_BOUND:
		return "tpm_bound"
	case pb.ReleaseMode_PCR_SEALED:
		return "pcr_sealed"
	}
	return ""
}
