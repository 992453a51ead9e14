package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/vaultrecords"
	"github.com/keybroker/keybroker/internal/cli"
)

// vaultFlags name a Vault auth method (plugins/vaultauth) whose records a
// command reads instead of the broker's store.
type vaultFlags struct {
	addr, mount string
}

func (v *vaultFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&v.mount, "vault-mount", "", "read the Vault auth method mounted here (such as auth/tpm) instead of the broker's store; "+
		"the token is VAULT_TOKEN (or ~/.vault-token), Vault's CA VAULT_CACERT, as for the vault CLI")
	f.StringVar(&v.addr, "vault-addr", "", "Vault's address, with --vault-mount (default $VAULT_ADDR)")
}

// check reports flags that contradict each other; configured says whether
// the broker's store was named too.
func (v *vaultFlags) check(p *cli.Problems, configured bool) {
	switch {
	case v.mount == "" && v.addr != "":
		p.Addf("--vault-addr needs --vault-mount")
	case v.mount != "" && configured:
		p.Addf("--vault-mount reads Vault instead of the broker: leave out --config and --data-dir")
	}
}

func (v *vaultFlags) set() bool { return v.mount != "" }

// open returns the mount's reader; a failure is reported on stderr,
// prefixed by name.
func (v *vaultFlags) open(name string, stderr io.Writer) (*vaultrecords.Reader, bool) {
	r, err := vaultrecords.New(vaultrecords.Opts{Address: v.addr, Mount: v.mount})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return nil, false
	}
	return r, true
}

// nodeSource is where node records are read: the broker's store or a
// Vault auth method.
type nodeSource interface {
	GetNode(ctx context.Context, ekHash string) (store.NodeRecord, error)
	ListNodes(ctx context.Context, opts store.ListNodesOpts) ([]store.NodeRecord, error)
}

// vaultNodes reads the node records of a Vault auth method, a node named
// by its EK hash or a prefix as with the broker.
type vaultNodes struct{ r broker.NodeReader }

func (v vaultNodes) GetNode(ctx context.Context, ekRef string) (store.NodeRecord, error) {
	return broker.FindNode(ctx, v.r, ekRef)
}

func (v vaultNodes) ListNodes(ctx context.Context, opts store.ListNodesOpts) ([]store.NodeRecord, error) {
	return v.r.ListNodes(ctx, opts)
}

// brokerNodes reads the node records of the broker cfg names.
type brokerNodes struct{ cfg *broker.Config }

func (b brokerNodes) GetNode(ctx context.Context, ekHash string) (store.NodeRecord, error) {
	return broker.GetNode(ctx, b.cfg, ekHash)
}

func (b brokerNodes) ListNodes(ctx context.Context, opts store.ListNodesOpts) ([]store.NodeRecord, error) {
	return broker.ListNodes(ctx, b.cfg, opts)
}
