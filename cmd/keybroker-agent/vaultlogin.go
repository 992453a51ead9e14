package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/cli"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// vaultLoginOutput is what -format=json prints: Vault's auth block under
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

// vaultLogin is `keybroker-agent vault-login`: attest to Vault's TPM auth
// method and keep the token it issues.
func vaultLogin(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vault-login", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmSpec := tpmFlag(fs)
	addr := fs.String("vault-addr", os.Getenv("VAULT_ADDR"), "Vault's address, https://HOST:PORT (default $VAULT_ADDR; required)")
	role := fs.String("role", "", "the TPM auth method's role to log in with (required)")
	mount := fs.String("mount", agent.DefaultVaultMount, "the path the TPM auth method is enabled at (auth/<mount>/...)")
	caCert := fs.String("ca-cert", os.Getenv("VAULT_CACERT"), "PEM file with the CA bundle that Vault's TLS certificate must chain to (default $VAULT_CACERT; empty: the system's roots)")
	tokenFile := fs.String("token-file", "", "write the token here, mode 0600, atomically (default ~/.vault-token, where the vault CLI reads it; with -format=json no file unless this is set)")
	format := fs.String("format", "text", "output: text (steps, then where the token was written) or json (Vault's auth block, token included, on stdout)")
	akType := fs.String("ak", "rsa", "attestation key type: rsa (RSA-2048) or ecc (P-256)")
	eventLog := fs.String("event-log", "auto", "TCG binary event log to send: auto (the kernel's, if present), none, or a file")
	ekIntermediates := fs.String("ek-intermediates", "", "PEM file with intermediate CA certificates to send with the EK certificate (at most 8)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	quiet := fs.Bool("quiet", false, "text format: print only errors")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vault-login: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if !cli.Required(fs, stderr, "--vault-addr", "--role") {
		return 2
	}
	if *format != "text" && *format != "json" {
		fmt.Fprintf(stderr, "vault-login: unknown -format %q: want text or json\n", *format)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "vault-login: --timeout must be > 0")
		return 2
	}
	out := *tokenFile
	if out == "" && *format == "text" {
		home, err := os.UserHomeDir()
		if err != nil {
			fmt.Fprintf(stderr, "vault-login: no --token-file and no home directory: %v\n", err)
			return 2
		}
		out = filepath.Join(home, ".vault-token")
	}

	var caPEM []byte
	if *caCert != "" {
		var err error
		if caPEM, err = os.ReadFile(*caCert); err != nil {
			fmt.Fprintf(stderr, "vault-login: unable to read --ca-cert: %v\n", err)
			return 1
		}
	}
	client, err := agent.NewVaultClient(*addr, agent.VaultClientOpts{CAPEM: caPEM, Timeout: *timeout})
	if err != nil {
		fmt.Fprintf(stderr, "vault-login: %v\n", err)
		return 1
	}
	logBytes, err := agent.ReadEventLog(*eventLog)
	if err != nil {
		fmt.Fprintf(stderr, "vault-login: %v\n", err)
		return 1
	}
	var intermediates [][]byte
	if *ekIntermediates != "" {
		if intermediates, err = agent.ReadEKIntermediates(*ekIntermediates); err != nil {
			fmt.Fprintf(stderr, "vault-login: %v\n", err)
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	rw, err := agent.OpenTPM(*tpmSpec)
	if err != nil {
		fmt.Fprintf(stderr, "vault-login failed at tpm: %v\n", err)
		return 1
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{AK: *akType, EKIntermediates: intermediates})
	if err != nil {
		fmt.Fprintf(stderr, "vault-login failed at tpm: %v\n", err)
		return 1
	}
	defer node.Close()

	opts := agent.VaultLoginOpts{Role: *role, Mount: *mount, EventLog: logBytes}
	if *format == "text" && !*quiet {
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
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(vaultLoginOutput{Auth: res.Auth, Unwrapped: res.Unwrapped, Sealed: sealedName(res.Sealed), TokenFile: out}); err != nil {
			fmt.Fprintf(stderr, "vault-login: %v\n", err)
			return 1
		}
		return 0
	}
	if !*quiet {
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
