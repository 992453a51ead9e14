package vaultauth

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/store"
)

// The checkpoints of the auth method's receipt chain and the public key
// that verifies them (checkpoints.go, docs/receipts.md).

func pathCheckpointList(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "checkpoints/?",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationSuffix: "checkpoints",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ListOperation: &framework.PathOperation{
				Callback: b.pathCheckpointList,
				Summary:  pathCheckpointListHelpSyn,
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathCheckpointSign,
				Summary:  "Sign the receipt chain's head now.",
				// The active node signs: it holds the chain.
				ForwardPerformanceStandby: true,
			},
		},
		HelpSynopsis:    pathCheckpointListHelpSyn,
		HelpDescription: pathCheckpointListHelpDesc,
	}
}

func pathCheckpoint(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "checkpoints/(?P<seq>[0-9]+)",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "read",
			OperationSuffix: "checkpoint",
		},
		Fields: map[string]*framework.FieldSchema{
			"seq": {Type: framework.TypeString, Description: "The seq of the receipt the checkpoint signs."},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathCheckpointRead,
				Summary:  pathCheckpointHelpSyn,
			},
		},
		HelpSynopsis:    pathCheckpointHelpSyn,
		HelpDescription: pathCheckpointListHelpDesc,
	}
}

func pathCheckpointKey(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "checkpoint-key",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "read",
			OperationSuffix: "checkpoint-key",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathCheckpointKeyRead,
				Summary:  pathCheckpointKeyHelpSyn,
			},
		},
		HelpSynopsis:    pathCheckpointKeyHelpSyn,
		HelpDescription: pathCheckpointKeyHelpDesc,
	}
}

// pathCheckpointList lists the seqs of the checkpoints, lowest first (20
// digits each).
func (b *tpmAuthBackend) pathCheckpointList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	keys, err := req.Storage.List(ctx, checkpointPrefix)
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(keys), nil
}

// pathCheckpointSign signs the chain head when it moved since the last
// checkpoint, as "keybroker receipts export" asks before it reads.
func (b *tpmAuthBackend) pathCheckpointSign(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	head, err := b.signCheckpoint(ctx, req.Storage, true)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{"seq": head.Seq, "head": head.Hash}}, nil
}

func (b *tpmAuthBackend) pathCheckpointRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	seq, ok := parseSeq(d.Get("seq").(string))
	if !ok {
		return logical.ErrorResponse("seq must be a decimal number from 1"), nil
	}
	c, err := b.store(req.Storage).GetCheckpoint(ctx, seq)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"seq":       strconv.FormatUint(c.Seq, 10),
		"head":      c.Head,
		"time":      c.Time.UTC().Format(time.RFC3339Nano),
		"key_id":    c.KeyID,
		"signature": c.Signature, // base64 in Vault's JSON
	}}, nil
}

// pathCheckpointKeyRead answers the public checkpoint key as a PEM
// "PUBLIC KEY", making the key when there is none yet.
func (b *tpmAuthBackend) pathCheckpointKeyRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	_, signer, err := b.checkpointer(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	pemKey, err := signer.PublicKeyPEM()
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{"public_key": string(pemKey), "key_id": signer.KeyID()}}, nil
}

const (
	pathCheckpointListHelpSyn  = `List the signed checkpoints of the receipt chain, or sign its head now.`
	pathCheckpointListHelpDesc = `
The auth method's receipts form a hash chain (each names its seq and the
hash of the receipt before it). A checkpoint is the chain head (seq, hash)
signed with the auth method's own ECDSA P-256 key (checkpoint-key): every
checkpoint_every receipts (config; 1000: at each multiple), and, while receipts are added,
once checkpoint_interval (config; 60s) passed, checked by the periodic
function about once a minute. List gives the seqs, 20 digits each, lowest first; read
checkpoints/<seq> gives one (seq, head, time, key_id, signature in base64,
the format of docs/receipts.md). A write to checkpoints signs the head now
when it moved since the last checkpoint (as "keybroker receipts export
--vault-mount" asks) and answers the seq and head covered.`
	pathCheckpointHelpSyn     = `Read one signed checkpoint of the receipt chain.`
	pathCheckpointKeyHelpSyn  = `Read the public key that verifies the receipt chain's checkpoints.`
	pathCheckpointKeyHelpDesc = `
Answers public_key, the PEM "PUBLIC KEY" (PKIX, ECDSA P-256) of the auth
method's checkpoint key, and its key_id, as "keybroker receipts
checkpoint-key" prints the broker's. Publish it for auditors, who pass it
to "keybroker receipts verify --key". The private key is made on first use
and kept seal-wrapped in the auth method's local storage.`
)
