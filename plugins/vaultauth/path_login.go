package vaultauth

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/cidrutil"
	"github.com/hashicorp/vault/sdk/helper/policyutil"
	"github.com/hashicorp/vault/sdk/helper/wrapping"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/idlog"
	"github.com/keybroker/keybroker/policies"
)

// Input limits of the login path beyond those verify enforces; the same
// numbers as the broker's API.
const (
	maxChallengeIDSize = 256
	maxPCRValues       = 24
	maxPCRValueSize    = 64
)

// msgPolicyDenied is what a node denied by the role's policy is told; the
// failed conditions go to the log only.
const msgPolicyDenied = "policy: no policy allows this node"

func pathLogin(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "login$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "login",
		},
		Fields: loginFields(),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathLogin,
				Summary:  pathLoginHelpSyn,
				// The active node uses up challenges, under its locks.
				ForwardPerformanceStandby: true,
			},
			logical.ResolveRoleOperation: &framework.PathOperation{
				Callback: b.pathResolveRole,
			},
		},
		HelpSynopsis:    pathLoginHelpSyn,
		HelpDescription: pathLoginHelpDesc,
	}
}

// loginFields are the login's fields: the answer, and the EK and AK
// material the challenge was issued for.
func loginFields() map[string]*framework.FieldSchema {
	fields := evidenceFields("Required: the same as in the challenge request.")
	for name, f := range map[string]*framework.FieldSchema{
		"role": {
			Type:        framework.TypeLowerCaseString,
			Description: "The role to log in with. Required.",
		},
		"challenge_id": {
			Type:        framework.TypeString,
			Description: "The challenge_id the challenge path returned. Each challenge is accepted once. Required.",
		},
		"quotes": {
			Type: framework.TypeSlice,
			Description: fmt.Sprintf("1 to %d TPM2_Quote results by the AK, each with the activated challenge "+
				"secret as qualifying data: {\"attest\": base64 TPMS_ATTEST, \"signature\": base64 TPMT_SIGNATURE, "+
				"\"pcrs\": {\"hash_alg\": TPM_ALG_ID number or sha1/sha256/sha384/sha512, "+
				"\"values\": {\"<PCR index>\": base64 digest}}}. Required.", verify.MaxQuotes),
		},
		"ticket": {
			Type: framework.TypeString,
			Description: "Used by the auth method itself to complete the login of a role with token_envelope " +
				"(see the config's vault_addr): a single-use value valid for a few seconds. Nodes never send it.",
		},
		"event_log": {
			Type: framework.TypeString,
			Description: fmt.Sprintf("The TCG binary event log behind the quoted PCRs, base64; at most %d bytes. "+
				"Without it the policy sees eventlog.present == false.", verify.MaxEventLogSize),
		},
		"identity_log": {
			Type: framework.TypeString,
			Description: fmt.Sprintf("The agent's record of the identities it handed to workloads this boot, base64; "+
				"at most %d bytes. It must replay to the quoted sha256 value of the PCR it names, else the login is "+
				"refused (identity_log). Without it the policy sees identities.present == false.", idlog.MaxSize),
		},
	} {
		fields[name] = f
	}
	return fields
}

// pathResolveRole names the role of a login request, for role-based quotas.
func (b *tpmAuthBackend) pathResolveRole(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("role").(string)
	if name == "" {
		return logical.ErrorResponse("role is required"), nil
	}
	r, err := b.role(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return logical.ErrorResponse("role %q not found", name), nil
	}
	return logical.ResolveRoleResponse(name)
}

// loginRequest is a login's decoded input.
type loginRequest struct {
	challengeID string
	evidence    challenge.Evidence
	quotes      []attestation.Quote
	eventLog    []byte
	identityLog []byte
}

// pathLogin answers a challenge: it opens the challenge with the EK and AK
// material presented, verifies the node as the broker's Attest does
// (evidence.Verify, then evidence.WithHistory), evaluates the role's policy
// document, records the decision, which uses the challenge up whatever the
// outcome, and only then issues a token.
func (b *tpmAuthBackend) pathLogin(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	cfg, err := b.config(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("the TPM auth method is not configured"), nil
	}
	roleName := d.Get("role").(string)
	if roleName == "" {
		return logical.ErrorResponse("role is required"), nil
	}
	role, err := b.role(ctx, req.Storage, roleName)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return logical.ErrorResponse("role %q not found", roleName), nil
	}
	if t := d.Get("ticket").(string); t != "" {
		return b.pathLoginTicket(ctx, req, d, roleName, role, t)
	}
	if role.TokenEnvelope != "" && cfg.vault == nil {
		return logical.ErrorResponse("role %q seals tokens (token_envelope=%s) but the config has no vault_addr", roleName, role.TokenEnvelope), nil
	}
	if role.TokenEnvelope == policies.ModePCRSealed && !cfg.verify.Counts(role.envelopeBank()) {
		return logical.ErrorResponse("role %q seals tokens to %s PCRs but the config's pcr_banks leaves that bank out", roleName, role.EnvelopeBank), nil
	}
	if len(role.TokenBoundCIDRs) > 0 {
		if req.Connection == nil || !cidrutil.RemoteAddrIsOk(req.Connection.RemoteAddr, role.TokenBoundCIDRs) {
			b.Logger().Warn("login refused: client address not in token_bound_cidrs", "role", roleName)
			return nil, logical.ErrPermissionDenied
		}
	}
	in, err := decodeLogin(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	set, err := b.policy(roleName, role)
	if err != nil {
		return nil, fmt.Errorf("stored role %q is invalid: %w", roleName, err)
	}

	st := b.store(req.Storage)
	ch, err := b.issuer(req.Storage, cfg).Open(ctx, in.challengeID, in.evidence)
	switch {
	case errors.Is(err, challenge.ErrUnknown), errors.Is(err, challenge.ErrMismatch), errors.Is(err, challenge.ErrExpired):
		// Nothing is recorded: the answer is not verified, and an expired
		// challenge can no longer be used anyway.
		b.Logger().Warn("login refused", "role", roleName, "check", "challenge", "error", err)
		return logical.ErrorResponse("challenge: " + err.Error()), logical.ErrPermissionDenied
	case err != nil:
		b.Logger().Error("login failed: unable to open the challenge", "role", roleName, "error", err)
		return nil, err
	}
	rec := &store.Receipt{Time: b.now().UTC(), ChallengeID: ch.ID}
	ev := presented(ch, in, rec)
	v, decision, nodeRec, ref := b.attest(ctx, st, ev, cfg, set, rec)
	dec := &store.Decision{ChallengeID: ch.ID, ChallengeExpiry: ch.ExpiresAt, Receipt: rec, Node: nodeRec}
	switch {
	case ref != nil:
		rec.Allowed, rec.Check = false, ref.check
		if ref.deny && rec.EKHash != "" {
			dec.Deny = store.DenyAdd
		}
	case rec.EKHash != "":
		dec.Deny = store.DenyRemove
	}
	switch err := st.Record(ctx, dec); {
	case errors.Is(err, store.ErrConsumed):
		// A concurrent login used the challenge first; this one issues
		// nothing.
		b.Logger().Warn("challenge used by a concurrent login; nothing issued", "role", roleName, "challenge", ch.ID, "ek", rec.EKHash)
		return logical.ErrorResponse("challenge: " + challenge.ErrUnknown.Error()), logical.ErrPermissionDenied
	case err != nil:
		b.Logger().Error("decision not recorded; nothing issued", "role", roleName, "challenge", ch.ID, "error", err)
		return nil, err
	}
	if ref != nil {
		args := []any{"role", roleName, "challenge", ch.ID, "ek", rec.EKHash, "check", ref.check}
		if len(rec.Failures) > 0 {
			args = append(args, "failures", rec.Failures, "policy_hash", rec.PolicyHash)
		}
		if ref.cause != nil {
			args = append(args, "error", ref.cause)
		}
		b.Logger().Warn("login refused", args...)
		return ref.resp, ref.err
	}
	b.Logger().Info("login allowed", "role", roleName, "challenge", ch.ID, "ek", rec.EKHash,
		"policies", decision.Policies, "policy_hash", decision.PolicyHash)

	facts := factsOf(v, decision)
	if role.TokenEnvelope != "" {
		return b.loginSealed(ctx, req, cfg, roleName, role, v, facts)
	}
	resp := &logical.Response{Auth: newAuth(roleName, role, facts)}
	if role.ResponseWrapTTL > 0 {
		resp.WrapInfo = &wrapping.ResponseWrapInfo{TTL: role.ResponseWrapTTL}
	}
	return resp, nil
}

// nodeFacts are what a token says of the node it was issued to.
type nodeFacts struct {
	EKHash       string   `json:"ek_hash"`
	EKCA         string   `json:"ek_ca"`
	Manufacturer string   `json:"ek_manufacturer"`
	Policies     []string `json:"policies"`
	PolicyHash   string   `json:"policy_hash"`
}

func factsOf(v *verify.Verified, d policies.Decision) nodeFacts {
	f := nodeFacts{EKHash: v.EKHash(), EKCA: v.EKCA(), Policies: d.Policies, PolicyHash: d.PolicyHash}
	if c := v.EKCert(); c != nil {
		f.Manufacturer = c.Manufacturer
	}
	return f
}

// newAuth is the token Vault creates for an allowed node: its alias is the
// EK hash, so each machine is one identity entity.
func newAuth(roleName string, role *roleEntry, f nodeFacts) *logical.Auth {
	auth := &logical.Auth{
		DisplayName: f.EKHash[:min(16, len(f.EKHash))],
		Alias: &logical.Alias{
			Name:     f.EKHash,
			Metadata: map[string]string{"ek_ca": f.EKCA, "ek_manufacturer": f.Manufacturer},
		},
		InternalData: map[string]any{
			"role":        roleName,
			"policy_hash": f.PolicyHash,
		},
		Metadata: map[string]string{
			"role":                 roleName,
			"ek_hash":              f.EKHash,
			"ek_ca":                f.EKCA,
			"ek_manufacturer":      f.Manufacturer,
			"attestation_policies": strings.Join(f.Policies, ","),
			"policy_hash":          f.PolicyHash,
		},
	}
	role.PopulateTokenAuth(auth)
	return auth
}

// refusal is why a login issued nothing: resp and err go to the caller,
// check and cause to the log.
type refusal struct {
	check string
	resp  *logical.Response
	err   error
	cause error
	deny  bool // the node goes on the deny list (evidence.Refusal.Deny)
}

func checkRefusal(err error) *refusal {
	resp, rerr := checkResponse(err)
	check := string(verify.FailedCheck(err))
	if check == "" {
		check = "internal"
	}
	return &refusal{check: check, resp: resp, err: rerr, cause: err}
}

// attest decides on ev with the broker's pipeline (evidence.Decide): the
// node, its quotes and event log, its TPM counters against its last
// login's, then the role's policy. Once the answer verified (TPM counters
// included) it returns the node's new record, also when the policy then
// denies, as the broker does.
func (b *tpmAuthBackend) attest(ctx context.Context, st *vaultStore, ev attestation.Evidence, cfg *config, set *policies.Set, rec *store.Receipt) (*verify.Verified, policies.Decision, *store.NodeRecord, *refusal) {
	o := evidence.Decide(evidence.Inputs{
		Evidence: ev,
		Opts:     cfg.verify,
		Policies: set,
		Previous: func(ek string) (store.NodeRecord, error) { return st.GetNode(ctx, ek) },
	})
	o.FillReceipt(rec)
	if o.AKChanged {
		b.Logger().Warn("node attested with another AK than last time; its TPM counters cannot be compared", "ek", rec.EKHash)
	}
	nodeRec := o.NodeRecord
	switch r := o.Refusal; {
	case r == nil:
		rec.Allowed = true
		return o.Verified, o.Decision, nodeRec, nil
	case r.Check == evidence.CheckPolicy:
		return o.Verified, o.Decision, nodeRec, &refusal{check: r.Check, resp: logical.ErrorResponse(msgPolicyDenied), err: logical.ErrPermissionDenied, deny: r.Deny}
	default:
		ref := checkRefusal(r.Err)
		ref.deny = r.Deny
		return o.Verified, o.Decision, nodeRec, ref
	}
}

// presented is what the node presented: its EK and AK material, which the
// challenge was issued for, and its answer.
func presented(ch challenge.Challenge, in *loginRequest, rec *store.Receipt) attestation.Evidence {
	return attestation.Evidence{
		Time:            rec.Time,
		ChallengeID:     ch.ID,
		EKPublic:        ch.EKPublic,
		EKCertificate:   ch.EKCertificate,
		EKIntermediates: ch.EKIntermediates,
		AKPublic:        ch.AKPublic,
		SecretHash:      ch.SecretHash,
		Quotes:          in.quotes,
		EventLog:        in.eventLog,
		IdentityLog:     in.identityLog,
	}
}

// pathLoginRenew extends a token within its role's current settings. It
// fails once the role is gone or its token policies or policy document
// changed: the node must then log in again with a fresh attestation.
// Renewal itself proves nothing about the node; token_max_ttl bounds how
// long one attestation counts.
func (b *tpmAuthBackend) pathLoginRenew(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	if req.Auth == nil {
		return nil, errors.New("request auth was nil")
	}
	name, _ := req.Auth.InternalData["role"].(string)
	if name == "" {
		return nil, errors.New("token carries no role")
	}
	role, err := b.role(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return nil, fmt.Errorf("role %q no longer exists; log in again", name)
	}
	if !policyutil.EquivalentPolicies(role.TokenPolicies, req.Auth.TokenPolicies) {
		return nil, fmt.Errorf("token_policies of role %q changed; log in again", name)
	}
	set, err := b.policy(name, role)
	if err != nil {
		return nil, fmt.Errorf("stored role %q is invalid: %w", name, err)
	}
	if h, _ := req.Auth.InternalData["policy_hash"].(string); h != set.Hash() {
		return nil, fmt.Errorf("the policy of role %q changed; log in again", name)
	}
	resp := &logical.Response{Auth: req.Auth}
	resp.Auth.TTL = role.TokenTTL
	resp.Auth.MaxTTL = role.TokenMaxTTL
	resp.Auth.Period = role.TokenPeriod
	return resp, nil
}

const pathLoginHelpSyn = `Log in with a TPM attestation that answers a challenge.`

const pathLoginHelpDesc = `
Unauthenticated. The node activates the challenge's credential in its TPM
(TPM2_ActivateCredential), quotes its PCRs with its AK using the recovered
secret as qualifying data, and sends role, challenge_id, quotes, optionally
event_log and identity_log, and again the ek_public, ek_certificate, ek_intermediates and
ak_public of its challenge request, which the challenge was issued for.
Vault opens the challenge (refused if it is unknown, expired or was issued
for other EK or AK material), verifies the node, the quotes, the event log,
the identity log and the TPM counters against the node's last login exactly as the keybroker
broker does, evaluates the role's policy document over the verified facts,
and uses the challenge up (once, whatever the outcome).

On success it issues a token with the role's token settings. Its entity alias
is the EK hash; its metadata holds role, ek_hash, ek_ca, ek_manufacturer,
attestation_policies (the policy blocks that allowed the node) and
policy_hash (the SHA-256 of the role's policy document that decided). With the
role's response_wrap_ttl the response is response-wrapped. With the role's
token_envelope the response has no auth: data.token_envelope holds the
token sealed to the node's EK (keybroker's Credential message as JSON;
keybroker-agent vault-login opens it in the TPM) and data.auth the auth
object without client_token. The auth method obtains that token by logging
in with a single-use ticket at its own mount through vault_addr (the ticket
field); nodes never send a ticket.

A refused login issues nothing and answers "permission denied" with the
failed check: challenge, ek_trust, ak_attributes, quote_magic, quote_type,
quote_nonce, quote_signature, pcr_digest, pcr_bank, event_log, identity_log,
tpm_counters, or "policy: no policy allows this node". The failed policy conditions are
logged for operators and never returned. Malformed input is a 400 error.
`
