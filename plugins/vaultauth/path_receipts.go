package vaultauth

import (
	"context"
	"encoding/hex"
	"errors"
	"strconv"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/store"
)

// The receipts of the auth method's decisions, as the broker keeps them:
// one per login that used a challenge, allowed or refused, written before
// the login answers.

func pathReceiptList(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "receipts/?",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "list",
			OperationSuffix: "receipts",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ListOperation: &framework.PathOperation{
				Callback: b.pathReceiptList,
				Summary:  pathReceiptListHelpSyn,
			},
		},
		HelpSynopsis:    pathReceiptListHelpSyn,
		HelpDescription: pathReceiptListHelpDesc,
	}
}

func pathReceipt(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "receipts/(?P<id>[0-9A-Za-z._-]+)",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "read",
			OperationSuffix: "receipt",
		},
		Fields: map[string]*framework.FieldSchema{
			"id": {Type: framework.TypeString, Description: "The receipt ID."},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathReceiptRead,
				Summary:  pathReceiptHelpSyn,
			},
		},
		HelpSynopsis:    pathReceiptHelpSyn,
		HelpDescription: pathReceiptHelpDesc,
	}
}

// pathReceiptList lists the receipt IDs, oldest first (they begin with
// their time).
func (b *tpmAuthBackend) pathReceiptList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	keys, err := req.Storage.List(ctx, receiptPrefix)
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(keys), nil
}

func (b *tpmAuthBackend) pathReceiptRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	encoded, r, err := b.store(req.Storage).receipt(ctx, d.Get("id").(string))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	data := map[string]any{
		"id":           r.ID,
		"time":         r.Time.UTC().Format(time.RFC3339Nano),
		"challenge_id": r.ChallengeID,
		"ek_hash":      r.EKHash,
		"allowed":      r.Allowed,
		"check":        r.Check,
		"policies":     r.Policies,
		"policy_hash":  r.PolicyHash,
		"failures":     r.Failures,
		"deny_listed":  r.DenyListed,
	}
	if len(r.QuoteDigest) > 0 {
		data["quote_digest"] = hex.EncodeToString(r.QuoteDigest)
	}
	if len(r.IdentityLogSHA256) > 0 {
		data["identity_log_sha256"] = hex.EncodeToString(r.IdentityLogSHA256)
		data["identity_log_pcr"] = hex.EncodeToString(r.IdentityLogPCR)
	}
	if r.Seq != 0 {
		// The stored canonical encoding, which the chain hashes:
		// "keybroker receipts export" writes it as it is.
		data["seq"] = strconv.FormatUint(r.Seq, 10)
		data["prev"] = r.Prev
		data["encoded"] = encoded // base64 in Vault's JSON
	}
	return &logical.Response{Data: data}, nil
}

const (
	pathReceiptListHelpSyn  = `List the receipts of the auth method's decisions.`
	pathReceiptListHelpDesc = `
Every login that answered a challenge, allowed or refused, has a receipt,
written before the login answers: no token exists without one. Receipt IDs
begin with their time (UTC), so they list oldest first. Read one at
receipts/<id>.`
	pathReceiptHelpSyn  = `Read one receipt.`
	pathReceiptHelpDesc = `
A receipt names the challenge, the node (EK hash), whether the login was
allowed, the failed check of a refusal, the policies that allowed it and
their hash, the policy failures, the digest of the verified quotes, and
whether the refusal put the node on the deny list. A chained receipt also
answers seq (its place in the chain, in decimal), prev (the hash of the
receipt before it) and encoded (base64 of the stored canonical encoding,
whose SHA-256 the next receipt's prev names): see checkpoints/ and
docs/receipts.md. Receipts written before the chain have none of these.`
)
