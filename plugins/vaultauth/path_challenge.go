package vaultauth

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
)

func pathChallenge(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "challenge$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "challenge",
		},
		Fields: evidenceFields("Required."),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathChallengeWrite,
				Summary:  pathChallengeHelpSyn,
				// Challenges are issued on the active node, which also
				// adds the challenge keys, uses challenges up at login and
				// counts them for the rate limit.
				ForwardPerformanceStandby: true,
			},
		},
		HelpSynopsis:    pathChallengeHelpSyn,
		HelpDescription: pathChallengeHelpDesc,
	}
}

func (b *tpmAuthBackend) pathChallengeWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	cfg, err := b.config(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("the TPM auth method is not configured"), nil
	}
	var in inputErrors
	ev := decodeEvidence(&in, d)
	if err := in.err(); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}

	node, err := verify.Node(ev.EKPublic, ev.EKCertificate, ev.EKIntermediates, ev.AKPublic, cfg.verify)
	if err != nil {
		b.Logger().Warn("challenge refused", "check", verify.FailedCheck(err), "error", err)
		return checkResponse(err)
	}
	if !b.limiter.allow(node.EKHash(), b.now(), cfg.challengesPerMinute) {
		b.Logger().Warn("challenge refused: rate limit", "ek", node.EKHash(), "per_minute", cfg.challengesPerMinute)
		return nil, logical.CodedError(http.StatusTooManyRequests, "challenge: too many challenges for this EK; retry within a minute")
	}
	issued, err := b.issuer(req.Storage, cfg).Issue(ctx, node, ev)
	if err != nil {
		b.Logger().Error("challenge failed", "ek", node.EKHash(), "error", err)
		return nil, err
	}
	b.Logger().Info("challenge issued", "ek", node.EKHash(), "expires", issued.ExpiresAt.UTC())
	return &logical.Response{Data: map[string]any{
		"challenge_id":     issued.ID,
		"credential_blob":  base64.StdEncoding.EncodeToString(issued.CredentialBlob),
		"encrypted_secret": base64.StdEncoding.EncodeToString(issued.EncryptedSecret),
		"expires":          issued.ExpiresAt.UTC().Format(time.RFC3339Nano),
	}}, nil
}

// issuer returns the challenge issuer of cfg, whose keys are in s. It
// reads the keys from storage when it issues or opens a challenge, so
// every node of the cluster, and the next active node, uses the same keys.
func (b *tpmAuthBackend) issuer(s logical.Storage, cfg *config) *challenge.Issuer {
	return challenge.New(b.store(s), challenge.Opts{TTL: cfg.challengeTTL, Now: b.now})
}

// checkResponse translates a refusal by broker/verify into Vault's terms:
// malformed input is the caller's mistake (an error response, 400); any
// other failed check denies (403), naming the check and what failed, which
// verify words so that it never reveals trust configuration or secrets.
// Anything else is an internal fault.
func checkResponse(err error) (*logical.Response, error) {
	var ce *verify.CheckError
	if !errors.As(err, &ce) {
		return nil, err
	}
	resp := logical.ErrorResponse(string(ce.Check) + ": " + ce.Msg)
	if ce.Check == verify.CheckInput {
		return resp, nil
	}
	return resp, logical.ErrPermissionDenied
}

const pathChallengeHelpSyn = `Get a credential-activation challenge for a TPM's EK and AK.`

const pathChallengeHelpDesc = `
Unauthenticated. The node sends its EK public area (and certificate, with any
intermediates) and its AK public area. Vault checks that the EK is trusted
(config) and that the AK is a restricted signing key fixed to its TPM, then
makes a fresh 32-byte secret and encrypts it with TPM2_MakeCredential to the
EK for the AK's name: only the TPM holding both keys can recover it, with
TPM2_ActivateCredential. The response carries challenge_id, credential_blob
(TPM2B_ID_OBJECT) and encrypted_secret (TPM2B_ENCRYPTED_SECRET), both base64,
and expires (RFC 3339). The node answers at login, once, before expires.

challenge_id is a token sealed (AES-256-GCM) under a challenge key kept in
Vault storage, carrying the secret's SHA-256 (never the secret), the digest of
the EK and AK material sent and the expiry: issuing it writes nothing, and it
survives a restart or a leader change. The node sends the same ek_public,
ek_certificate, ek_intermediates and ak_public again at login. The first
login that presents it uses it up. Each EK may get at most
challenges_per_minute challenges per minute.
`
