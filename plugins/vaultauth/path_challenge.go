package vaultauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
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
		Fields: map[string]*framework.FieldSchema{
			"ek_public": {
				Type:        framework.TypeString,
				Description: "The EK public area (TPMT_PUBLIC), base64. Required.",
			},
			"ek_certificate": {
				Type:        framework.TypeString,
				Description: "The EK certificate (DER), base64, as the TPM holds it. Needed when the EK is trusted through ek_ca.",
			},
			"ek_intermediates": {
				Type: framework.TypeStringSlice,
				Description: fmt.Sprintf("Intermediate CA certificates (DER, base64 each) that issued the EK certificate, "+
					"to chain it to an ek_ca root; at most %d.", verify.MaxIntermediates),
			},
			"ak_public": {
				Type: framework.TypeString,
				Description: "The AK public area (TPMT_PUBLIC), base64: a restricted signing key " +
					"(fixedTPM, fixedParent, sensitiveDataOrigin), RSA-2048+ or ECC P-256/P-384. Required.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathChallengeWrite,
				Summary:  pathChallengeHelpSyn,
				// Challenges are issued on the active node, which also
				// consumes them and counts them for the rate limit.
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
	ev := challenge.Evidence{
		EKPublic:      in.base64(d, "ek_public", true),
		EKCertificate: in.base64(d, "ek_certificate", false),
		AKPublic:      in.base64(d, "ak_public", true),
	}
	for i, s := range d.Get("ek_intermediates").([]string) {
		ev.EKIntermediates = append(ev.EKIntermediates, in.decode(fmt.Sprintf("ek_intermediates[%d]", i), s))
	}
	if err := in.err(); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}

	node, err := verify.Node(ev.EKPublic, ev.EKCertificate, ev.EKIntermediates, ev.AKPublic, cfg.trust)
	if err != nil {
		b.Logger().Warn("challenge refused", "check", verify.FailedCheck(err), "error", err)
		return checkResponse(err)
	}
	if !b.limiter.allow(node.EKHash(), b.now(), cfg.challengesPerMinute) {
		b.Logger().Warn("challenge refused: rate limit", "ek", node.EKHash(), "per_minute", cfg.challengesPerMinute)
		return nil, logical.CodedError(http.StatusTooManyRequests, "challenge: too many challenges for this EK; retry within a minute")
	}
	issuer := challenge.New(b.store(req.Storage), challenge.Opts{TTL: cfg.challengeTTL, Now: b.now})
	issued, err := issuer.Issue(ctx, node, ev)
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

// inputErrors collects every problem with a request's fields.
type inputErrors struct{ errs []error }

// base64 returns the decoded field, recording an error if it is missing
// (and required) or not base64.
func (in *inputErrors) base64(d *framework.FieldData, field string, required bool) []byte {
	s := d.Get(field).(string)
	if s == "" {
		if required {
			in.errs = append(in.errs, fmt.Errorf("%s is required", field))
		}
		return nil
	}
	return in.decode(field, s)
}

func (in *inputErrors) decode(what, s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		in.errs = append(in.errs, fmt.Errorf("%s is not base64: %w", what, err))
		return nil
	}
	return b
}

func (in *inputErrors) add(format string, args ...any) {
	in.errs = append(in.errs, fmt.Errorf(format, args...))
}

func (in *inputErrors) err() error { return errors.Join(in.errs...) }

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

Only the secret's SHA-256 is stored, in Vault storage, so a challenge survives
a restart or a leader change; it is consumed by the first login that presents
it. Each EK may get at most challenges_per_minute challenges per minute.
`
