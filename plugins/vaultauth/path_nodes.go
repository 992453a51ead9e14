package vaultauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/store"
)

// The node records the auth method keeps, with the evidence of each node's
// last verified login, read as the broker's are: `keybroker policy eval
// --vault-mount` verifies the evidence again and tries a new role policy on
// it.

func pathNodeList(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "nodes/?",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "list",
			OperationSuffix: "nodes",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ListOperation: &framework.PathOperation{
				Callback: b.pathNodeList,
				Summary:  pathNodeListHelpSyn,
			},
		},
		HelpSynopsis:    pathNodeListHelpSyn,
		HelpDescription: pathNodeListHelpDesc,
	}
}

func pathNode(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "nodes/(?P<ek_hash>[0-9a-f]+)",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "read",
			OperationSuffix: "node",
		},
		Fields: map[string]*framework.FieldSchema{
			"ek_hash": {Type: framework.TypeString, Description: "The node's EK hash (lowercase hex SHA-256 of its PKIX public key)."},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathNodeRead,
				Summary:  pathNodeHelpSyn,
			},
		},
		HelpSynopsis:    pathNodeHelpSyn,
		HelpDescription: pathNodeHelpDesc,
	}
}

// pathNodeList lists the EK hashes of the nodes with a record, in order.
func (b *tpmAuthBackend) pathNodeList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	keys, err := req.Storage.List(ctx, nodePrefix)
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(keys), nil
}

// pathNodeRead answers a node's record: a summary, its deny-list entry,
// and the whole record (evidence and event log included) as the JSON of a
// store.NodeRecord, base64-encoded so that it reaches the reader through
// Vault's JSON unchanged (Vault's clients read numbers as floats).
func (b *tpmAuthBackend) pathNodeRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	st := b.store(req.Storage)
	ek := d.Get("ek_hash").(string)
	n, err := st.GetNode(ctx, ek)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	record, err := json.Marshal(n)
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"ek_hash":         n.EKHash,
		"first_seen":      n.FirstSeen.UTC().Format(time.RFC3339Nano),
		"last_seen":       n.LastSeen.UTC().Format(time.RFC3339Nano),
		"last_receipt_id": n.LastReceiptID,
		"deny_listed":     false,
		"record":          base64.StdEncoding.EncodeToString(record),
	}
	switch den, err := st.GetDenial(ctx, ek); {
	case err == nil:
		data["deny_listed"] = true
		data["denial"] = map[string]any{"check": den.Check, "receipt_id": den.ReceiptID, "time": den.Time.UTC().Format(time.RFC3339Nano)}
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	return &logical.Response{Data: data}, nil
}

const (
	pathNodeListHelpSyn  = `List the nodes the auth method keeps records of, by EK hash.`
	pathNodeListHelpDesc = `
A node has a record once one of its logins verified (allowed, or denied by
the role's policy): its TPM counters and the evidence of that login. Read one
at nodes/<ek_hash>.`
	pathNodeHelpSyn  = `Read a node's record and the evidence of its last verified login.`
	pathNodeHelpDesc = `
Answers ek_hash, first_seen, last_seen, last_receipt_id, deny_listed (and the
deny-list entry as denial) and record: the whole record — TPM counters, the
EK and AK publics and certificates, the quotes, the event log — as the JSON of
keybroker's store.NodeRecord, base64-encoded. 'keybroker policy eval
--vault-mount auth/<mount>' reads it, verifies the evidence again and
evaluates candidate policies on it.`
)
