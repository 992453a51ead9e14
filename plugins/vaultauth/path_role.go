package vaultauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/tokenutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/policies"
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
			"wrap_token_to_tpm": {
				Type:    framework.TypeBool,
				Default: false,
				Description: "Not supported; must be false. Vault creates the token after the auth method " +
					"answers and returns it to the caller in the clear (auth.client_token, or wrap_info.token " +
					"when wrapped), so an auth method cannot seal it to the node's TPM. See response_wrap_ttl.",
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
	if d.Get("wrap_token_to_tpm").(bool) {
		errs = append(errs, errors.New("wrap_token_to_tpm is not supported: Vault returns the token it creates to the "+
			"login caller in the clear, so an auth method cannot seal it to the TPM; use response_wrap_ttl for a "+
			"single-use wrapping token"))
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

A write to an existing role changes the fields it names. Renewing a token
fails once its role is deleted, its token policies changed or its policy
document changed: the node then logs in again, with a fresh attestation.
`
