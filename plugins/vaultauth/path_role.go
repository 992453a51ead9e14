package vaultauth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/tokenutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/policies"
	"github.com/keybroker/keybroker/resident"
)

func pathRoleList(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "role/?",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationVerb:   "list",
			OperationSuffix: "roles",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ListOperation: &framework.PathOperation{
				Callback: b.pathRoleList,
				Summary:  pathRoleListHelpSyn,
			},
		},
		HelpSynopsis:    pathRoleListHelpSyn,
		HelpDescription: pathRoleListHelpDesc,
	}
}

func pathRole(b *tpmAuthBackend) *framework.Path {
	p := &framework.Path{
		Pattern: "role/" + framework.GenericNameRegex("name"),
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
			OperationSuffix: "role",
		},
		Fields: map[string]*framework.FieldSchema{
			"name": {
				Type:        framework.TypeLowerCaseString,
				Description: "Name of the role.",
			},
			"policy": {
				Type: framework.TypeString,
				Description: "Policy document in keybroker's policy language (HCL): policy blocks whose select " +
					"and require decide which attested nodes may log in with this role, and optional node blocks " +
					"labelling nodes. release and workload blocks are refused: a login issues a Vault token, " +
					"not credentials. Required when the role is created.",
			},
			"response_wrap_ttl": {
				Type: framework.TypeDurationSecond,
				Description: "If set, Vault response-wraps every login response of this role with this TTL: " +
					"the login returns a single-use wrapping token (wrap_info), not auth.client_token, and the " +
					"node unwraps it with sys/wrapping/unwrap. Default 0: not wrapped.",
			},
			"token_envelope": {
				Type:          framework.TypeLowerCaseString,
				Default:       envelopeNone,
				AllowedValues: []any{envelopeNone, string(policies.ModeTPMBound), string(policies.ModePCRSealed)},
				Description: "How the token reaches the node. \"none\" (default): in the login response, as Vault " +
					"returns tokens. \"tpm_bound\": sealed to the node's TPM in the broker's envelope " +
					"(response field token_envelope), so only that TPM can open it and a copied response is " +
					"useless; \"pcr_sealed\": the same, and the TPM opens it only while token_envelope_pcrs " +
					"hold the values just attested. Needs vault_addr in config.",
			},
			"token_envelope_pcrs": {
				Type:        framework.TypeCommaIntSlice,
				Description: "With token_envelope=pcr_sealed: the PCRs (0-22 but 16) the token is sealed to. Required then. 16 and 23 are refused: software can reset them.",
			},
			"token_envelope_pcr_bank": {
				Type:        framework.TypeLowerCaseString,
				Default:     "sha256",
				Description: "With token_envelope=pcr_sealed: the bank of token_envelope_pcrs, sha256 (default), sha384 or sha512.",
			},
		},
		ExistenceCheck: b.pathRoleExistenceCheck,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathRoleRead,
				Summary:  "Read a role.",
			},
			logical.CreateOperation: &framework.PathOperation{
				Callback: b.pathRoleWrite,
				Summary:  "Create a role.",
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathRoleWrite,
				Summary:  "Update a role.",
			},
			logical.DeleteOperation: &framework.PathOperation{
				Callback: b.pathRoleDelete,
				Summary:  "Delete a role.",
			},
		},
		HelpSynopsis:    pathRoleHelpSyn,
		HelpDescription: pathRoleHelpDesc,
	}
	tokenutil.AddTokenFields(p.Fields)
	return p
}

// roleEntry is a stored role.
type roleEntry struct {
	tokenutil.TokenParams

	// Policy is the policy document's source.
	Policy string `json:"policy"`
	// ResponseWrapTTL, when non-zero, makes Vault wrap the login response.
	ResponseWrapTTL time.Duration `json:"response_wrap_ttl"`
	// TokenEnvelope is how the token reaches the node: "" (in the
	// response), tpm_bound or pcr_sealed (sealed to its TPM).
	TokenEnvelope policies.Mode `json:"token_envelope,omitempty"`
	// EnvelopeBank and EnvelopePCRs are the PCRs a pcr_sealed token is
	// sealed to.
	EnvelopeBank string   `json:"token_envelope_pcr_bank,omitempty"`
	EnvelopePCRs []uint32 `json:"token_envelope_pcrs,omitempty"`
}

// envelopeNone is token_envelope's default: the token in the response.
const envelopeNone = "none"

// envelopeBank is the bank of a pcr_sealed role's PCRs.
func (r *roleEntry) envelopeBank() tpm2.TPMAlgID {
	b, _ := policies.SealBank(r.EnvelopeBank)
	return b
}

func (b *tpmAuthBackend) role(ctx context.Context, s logical.Storage, name string) (*roleEntry, error) {
	raw, err := s.Get(ctx, rolePrefix+name)
	if err != nil || raw == nil {
		return nil, err
	}
	r := &roleEntry{}
	if err := raw.DecodeJSON(r); err != nil {
		return nil, fmt.Errorf("unable to decode role %q: %w", name, err)
	}
	return r, nil
}

func (b *tpmAuthBackend) pathRoleExistenceCheck(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	r, err := b.role(ctx, req.Storage, d.Get("name").(string))
	return r != nil, err
}

func (b *tpmAuthBackend) pathRoleList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(names), nil
}

func (b *tpmAuthBackend) pathRoleRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, err := b.role(ctx, req.Storage, d.Get("name").(string))
	if err != nil || r == nil {
		return nil, err
	}
	data := map[string]any{
		"policy":            r.Policy,
		"response_wrap_ttl": int64(r.ResponseWrapTTL / time.Second),
		"token_envelope":    envelopeNone,
	}
	if r.TokenEnvelope != "" {
		data["token_envelope"] = string(r.TokenEnvelope)
	}
	if r.TokenEnvelope == policies.ModePCRSealed {
		data["token_envelope_pcr_bank"] = r.EnvelopeBank
		data["token_envelope_pcrs"] = r.EnvelopePCRs
	}
	r.PopulateTokenData(data)
	return &logical.Response{Data: data}, nil
}

func (b *tpmAuthBackend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := req.Storage.Delete(ctx, rolePrefix+name); err != nil {
		return nil, err
	}
	b.invalidate(ctx, rolePrefix+name)
	return nil, nil
}

// pathRoleWrite creates a role or updates the fields given, validates the
// result as a whole and stores it. Every problem is reported at once.
func (b *tpmAuthBackend) pathRoleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	r, err := b.role(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		r = &roleEntry{}
	}
	var errs []error
	if err := r.ParseTokenFields(req, d); err != nil {
		errs = append(errs, err)
	}
	if maxTTL := b.System().MaxLeaseTTL(); r.TokenPeriod > maxTTL {
		errs = append(errs, fmt.Errorf("token_period %s is greater than the mount's maximum lease TTL %s", r.TokenPeriod, maxTTL))
	}
	if v, ok := d.GetOk("policy"); ok {
		r.Policy = v.(string)
	}
	if v, ok := d.GetOk("response_wrap_ttl"); ok {
		r.ResponseWrapTTL = time.Duration(v.(int)) * time.Second
	}
	if maxTTL := b.System().MaxLeaseTTL(); r.ResponseWrapTTL > maxTTL {
		errs = append(errs, fmt.Errorf("response_wrap_ttl %s is greater than the mount's maximum lease TTL %s", r.ResponseWrapTTL, maxTTL))
	}
	errs = append(errs, r.parseEnvelope(d)...)
	if r.TokenEnvelope == policies.ModePCRSealed {
		if cfg, err := b.config(ctx, req.Storage); err == nil && cfg != nil && !cfg.verify.Counts(r.envelopeBank()) {
			errs = append(errs, fmt.Errorf("token_envelope_pcr_bank %s is not among the config's pcr_banks: no login could be sealed", r.EnvelopeBank))
		}
	}
	if strings.TrimSpace(r.Policy) == "" {
		errs = append(errs, errors.New("policy cannot be empty: a role without a policy allows no node"))
	} else if _, err := parseRolePolicy(name, r.Policy); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return logical.ErrorResponse(errors.Join(errs...).Error()), nil
	}
	entry, err := logical.StorageEntryJSON(rolePrefix+name, r)
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, err
	}
	b.invalidate(ctx, rolePrefix+name)
	return nil, nil
}

// parseEnvelope updates the token_envelope fields given and checks them
// together with response_wrap_ttl.
func (r *roleEntry) parseEnvelope(d *framework.FieldData) []error {
	var errs []error
	if v, ok := d.GetOk("token_envelope"); ok {
		switch m := v.(string); m {
		case envelopeNone:
			r.TokenEnvelope, r.EnvelopeBank, r.EnvelopePCRs = "", "", nil
		case string(policies.ModeTPMBound), string(policies.ModePCRSealed):
			r.TokenEnvelope = policies.Mode(m)
		default:
			errs = append(errs, fmt.Errorf("token_envelope %q is not none, tpm_bound or pcr_sealed", m))
		}
	}
	_, bankGiven := d.GetOk("token_envelope_pcr_bank")
	_, pcrsGiven := d.GetOk("token_envelope_pcrs")
	if r.TokenEnvelope != policies.ModePCRSealed {
		if bankGiven || pcrsGiven {
			errs = append(errs, errors.New("token_envelope_pcrs and token_envelope_pcr_bank are only allowed with token_envelope=pcr_sealed"))
		}
		r.EnvelopeBank, r.EnvelopePCRs = "", nil
	} else {
		if bankGiven || r.EnvelopeBank == "" {
			r.EnvelopeBank = d.Get("token_envelope_pcr_bank").(string)
		}
		if _, ok := policies.SealBank(r.EnvelopeBank); !ok {
			errs = append(errs, fmt.Errorf("token_envelope_pcr_bank %q is not sha256, sha384 or sha512", r.EnvelopeBank))
		}
		if pcrsGiven {
			r.EnvelopePCRs = nil
			seen := map[int]bool{}
			for _, i := range d.Get("token_envelope_pcrs").([]int) {
				switch {
				case i < 0 || i > 23:
					errs = append(errs, fmt.Errorf("token_envelope_pcrs: %d is not a PCR index 0-23", i))
				case resident.CheckBindable(uint32(i)) != nil:
					errs = append(errs, fmt.Errorf("token_envelope_pcrs: %w", resident.CheckBindable(uint32(i))))
				case !seen[i]:
					seen[i] = true
					r.EnvelopePCRs = append(r.EnvelopePCRs, uint32(i))
				}
			}
			slices.Sort(r.EnvelopePCRs)
		}
		if len(r.EnvelopePCRs) == 0 {
			errs = append(errs, errors.New("token_envelope=pcr_sealed needs token_envelope_pcrs"))
		}
	}
	if r.TokenEnvelope != "" && r.ResponseWrapTTL > 0 {
		errs = append(errs, errors.New("token_envelope and response_wrap_ttl exclude each other: "+
			"a sealed token is already useless to anyone but the node's TPM"))
	}
	return errs
}

// parseRolePolicy parses a role's policy document with the broker's
// parser (errors as "role/<name>:line:column: message") and refuses the
// blocks that only make sense for the broker: release and workload.
func parseRolePolicy(name, src string) (*policies.Set, error) {
	filename := rolePrefix + name
	var errs []error
	if file, diags := hclsyntax.ParseConfig([]byte(src), filename, hcl.InitialPos); !diags.HasErrors() {
		if body, ok := file.Body.(*hclsyntax.Body); ok {
			for _, blk := range body.Blocks {
				if blk.Type != "policy" {
					continue
				}
				for _, inner := range blk.Body.Blocks {
					if inner.Type == "release" || inner.Type == "workload" {
						r := inner.DefRange()
						errs = append(errs, fmt.Errorf("%s:%d:%d: %s blocks are not supported by the Vault auth method: "+
							"a login issues a Vault token, not credentials", r.Filename, r.Start.Line, r.Start.Column, inner.Type))
					}
				}
			}
		}
	}
	set, err := policies.Parse([]byte(src), filename)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

const pathRoleListHelpSyn = `List the roles.`

const pathRoleListHelpDesc = `Lists the names of the roles nodes can log in with.`

const pathRoleHelpSyn = `Manage a role: the policy a node must satisfy, and the token it gets.`

const pathRoleHelpDesc = `
A role holds a policy document in keybroker's policy language and the
settings of the tokens it issues (token_policies, token_ttl, token_max_ttl,
token_bound_cidrs, token_period, token_type, token_num_uses, ...).

At login the node's attestation is verified exactly as the keybroker broker
verifies it and the document is evaluated over the verified facts (pcrs, ek,
tpm, history, eventlog, node.labels): the node may log in if at least one
policy block selects it and all of that block's require expressions hold.
release and workload blocks are refused when the role is written: the Vault
auth method issues a Vault token and nothing else. ek_cas in select names the
ek_ca entries of the config.

  policy "web" {
    select  { ek_cas = ["vendor"] }
    require = [
      "pcrs.sha256[7] == '<hex>'",
      "eventlog.secure_boot",
    ]
  }

token_envelope=tpm_bound or pcr_sealed returns the token sealed to the
node's TPM instead of in the clear (see the config's vault_addr and the
login help); response_wrap_ttl response-wraps the login instead.

A write to an existing role changes the fields it names. Renewing a token
fails once its role is deleted, its token policies changed or its policy
document changed: the node then logs in again, with a fresh attestation.
`
