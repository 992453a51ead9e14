package vaultauth

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/idlog"
)

// Defaults and limits of the config path.
const (
	defaultChallengesPerMinute = 10
	maxChallengesPerMinute     = 1000
	// The receipt chain's checkpoints (checkpoints.go), as the broker's
	// receipt_checkpoints.
	defaultCheckpointEvery    = 1000
	maxCheckpointEvery        = 1_000_000
	defaultCheckpointInterval = time.Minute
	maxCheckpointInterval     = 24 * time.Hour
)

func pathConfig(b *tpmAuthBackend) *framework.Path {
	return &framework.Path{
		Pattern: "config",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: "tpm",
		},
		Fields: map[string]*framework.FieldSchema{
			"ek_allow": {
				Type: framework.TypeCommaStringSlice,
				Description: "EKs trusted by hash, with or without a certificate: the lowercase hex SHA-256 " +
					"of the EK public key in PKIX DER form (keybroker-agent ek-hash prints it).",
			},
			"ek_ca": {
				Type: framework.TypeMap,
				Description: `EK certificate authorities by name: {"<name>": {"roots": "<PEM>", "intermediates": "<PEM>"}}. ` +
					"An EK is trusted if its certificate chains to the roots of one of them (through its intermediates " +
					"and those the node sends); policies select nodes by these names (select { ek_cas = [...] }). " +
					"PEM blocks other than CERTIFICATE are skipped; roots are required.",
			},
			"allow_sha1": {
				Type:        framework.TypeBool,
				Default:     false,
				Description: "Accept SHA-1 PCR banks, quote signatures and AK names. Default false: refused.",
			},
			"pcr_banks": {
				Type: framework.TypeCommaStringSlice,
				Description: "The PCR banks whose quotes count: sha256, sha384, sha512 (sha1 with allow_sha1). " +
					"Quotes of other banks are skipped (neither verified nor seen by role policies); a login " +
					"without a quote of these banks is refused (pcr_bank). Default: every bank counts.",
			},
			"identity_log_pcr": {
				Type:    framework.TypeInt,
				Default: idlog.DefaultPCR,
				Description: "The PCR (SHA-256 bank, 10-15) that holds the nodes' record of issued identities: a log " +
					"naming another PCR is refused, and so is a login without a log while this PCR is extended. " +
					"0 turns the record off (no log required, any log refused). Default 15.",
			},
			"challenge_ttl": {
				Type:        framework.TypeDurationSecond,
				Default:     int(challenge.DefaultTTL / time.Second),
				Description: fmt.Sprintf("How long a challenge may be answered with a login; between 1s and %s. Default 60s.", challenge.MaxTTL),
			},
			"vault_addr": {
				Type: framework.TypeString,
				Description: "The address (https://host:port) at which this plugin reaches Vault's own API. " +
					"Needed only by roles with token_envelope: the plugin then completes the login against " +
					"this address, so that Vault creates the token, and seals the token to the node's TPM. " +
					"Use an address of this Vault cluster's listener (a standby forwards the login to the active node).",
			},
			"vault_ca_cert": {
				Type:        framework.TypeString,
				Description: "PEM certificates that verify vault_addr's TLS server certificate. Default: the system roots.",
			},
			"vault_tls_server_name": {
				Type:        framework.TypeString,
				Description: "The name vault_addr's TLS certificate must hold, when it differs from vault_addr's host.",
			},
			"checkpoint_every": {
				Type:    framework.TypeInt,
				Default: defaultCheckpointEvery,
				Description: fmt.Sprintf("Sign a checkpoint of the receipt chain whenever its seq is a multiple of this: at most this many receipts apart; "+
					"1 to %d. Default %d.", maxCheckpointEvery, defaultCheckpointEvery),
			},
			"checkpoint_interval": {
				Type:    framework.TypeDurationSecond,
				Default: int(defaultCheckpointInterval / time.Second),
				Description: "Sign a checkpoint of the receipt chain at least this often while receipts are added; 1s to 24h. " +
					"Default 60s. It is checked by the periodic function, which Vault runs about once a minute.",
			},
			"challenges_per_minute": {
				Type:    framework.TypeInt,
				Default: defaultChallengesPerMinute,
				Description: fmt.Sprintf("Challenges issued per EK per minute, at most; 1 to %d. Default %d. "+
					"Counted on the active node, in memory.", maxChallengesPerMinute, defaultChallengesPerMinute),
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathConfigRead,
				Summary:      "Read the TPM auth method's configuration.",
				DisplayAttrs: &framework.DisplayAttributes{OperationSuffix: "configuration"},
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				Summary:      "Configure EK trust and challenges.",
				Description:  pathConfigHelpDesc,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
			},
		},
		HelpSynopsis:    pathConfigHelpSyn,
		HelpDescription: pathConfigHelpDesc,
	}
}

// configEntry is the stored configuration (sealwrapped).
type configEntry struct {
	EKAllow   []string             `json:"ek_allow"`
	EKCAs     map[string]ekCAEntry `json:"ek_ca"`
	AllowSHA1 bool                 `json:"allow_sha1"`
	PCRBanks  []string             `json:"pcr_banks,omitempty"`
	// IdentityLogPCR: nil (a configuration written before it existed) is
	// the default.
	IdentityLogPCR      *int          `json:"identity_log_pcr,omitempty"`
	ChallengeTTL        time.Duration `json:"challenge_ttl"`
	ChallengesPerMinute int           `json:"challenges_per_minute"`
	VaultAddr           string        `json:"vault_addr,omitempty"`
	VaultCACert         string        `json:"vault_ca_cert,omitempty"`
	VaultTLSServerName  string        `json:"vault_tls_server_name,omitempty"`
	// CheckpointEvery and CheckpointInterval: 0 (a configuration written
	// before they existed) is the default.
	CheckpointEvery    int           `json:"checkpoint_every,omitempty"`
	CheckpointInterval time.Duration `json:"checkpoint_interval,omitempty"`
}

// ekCAEntry is one named EK certificate authority, as PEM.
type ekCAEntry struct {
	Roots         string `json:"roots"`
	Intermediates string `json:"intermediates,omitempty"`
}

// config is a validated configEntry in the form the pipeline uses.
type config struct {
	entry               configEntry
	verify              verify.Opts // indexed
	challengeTTL        time.Duration
	challengesPerMinute int
	checkpointEvery     uint64
	checkpointInterval  time.Duration
	// vault completes logins of roles with token_envelope; nil without
	// vault_addr.
	vault *selfClient
}

// build validates e and returns its parsed form, or every problem at once.
func (e configEntry) build() (*config, error) {
	c := &config{entry: e, challengeTTL: e.ChallengeTTL, challengesPerMinute: e.ChallengesPerMinute}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	oc := verify.OptsConfig{EKAllow: e.EKAllow, AllowSHA1: e.AllowSHA1, PCRBanks: e.PCRBanks, IdentityLogPCR: e.IdentityLogPCR}
	for _, name := range slices.Sorted(maps.Keys(e.EKCAs)) {
		oc.EKCAs = append(oc.EKCAs, verify.CAConfig{Name: name,
			Roots: verify.PEMBundle(e.EKCAs[name].Roots), Intermediates: verify.PEMBundle(e.EKCAs[name].Intermediates)})
	}
	opts, problems := verify.ParseOpts(oc)
	for _, p := range problems {
		errs = append(errs, p)
	}
	c.verify = opts.Index()
	if e.ChallengeTTL < time.Second || e.ChallengeTTL > challenge.MaxTTL {
		bad("challenge_ttl must be between 1s and %s", challenge.MaxTTL)
	}
	if e.ChallengesPerMinute < 1 || e.ChallengesPerMinute > maxChallengesPerMinute {
		bad("challenges_per_minute must be between 1 and %d", maxChallengesPerMinute)
	}
	c.checkpointEvery, c.checkpointInterval = defaultCheckpointEvery, defaultCheckpointInterval
	switch {
	case e.CheckpointEvery < 0 || e.CheckpointEvery > maxCheckpointEvery:
		bad("checkpoint_every must be between 1 and %d", maxCheckpointEvery)
	case e.CheckpointEvery > 0:
		c.checkpointEvery = uint64(e.CheckpointEvery)
	}
	switch {
	case e.CheckpointInterval < 0 || e.CheckpointInterval > maxCheckpointInterval:
		bad("checkpoint_interval must be between 1s and %s", maxCheckpointInterval)
	case e.CheckpointInterval > 0:
		c.checkpointInterval = e.CheckpointInterval
	}
	if e.VaultAddr != "" || e.VaultCACert != "" || e.VaultTLSServerName != "" {
		v, err := newSelfClient(e.VaultAddr, e.VaultCACert, e.VaultTLSServerName)
		if err != nil {
			errs = append(errs, err)
		}
		c.vault = v
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// config returns the cached configuration, loading it on first use; nil if
// the auth method is not configured.
func (b *tpmAuthBackend) config(ctx context.Context, s logical.Storage) (*config, error) {
	b.l.RLock()
	c := b.cachedConfig
	b.l.RUnlock()
	if c != nil {
		return c, nil
	}
	b.l.Lock()
	defer b.l.Unlock()
	if b.cachedConfig != nil {
		return b.cachedConfig, nil
	}
	raw, err := s.Get(ctx, configPath)
	if err != nil || raw == nil {
		return nil, err
	}
	var e configEntry
	if err := raw.DecodeJSON(&e); err != nil {
		return nil, fmt.Errorf("unable to decode the configuration: %w", err)
	}
	if c, err = e.build(); err != nil {
		return nil, fmt.Errorf("stored configuration is invalid: %w", err)
	}
	b.cachedConfig = c
	return c, nil
}

func (b *tpmAuthBackend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	c, err := b.config(ctx, req.Storage)
	if err != nil || c == nil {
		return nil, err
	}
	cas := map[string]any{}
	for name, ca := range c.entry.EKCAs {
		cas[name] = map[string]any{"roots": ca.Roots, "intermediates": ca.Intermediates}
	}
	allow := c.entry.EKAllow
	if allow == nil {
		allow = []string{}
	}
	banks := c.entry.PCRBanks
	if banks == nil {
		banks = []string{}
	}
	identityLogPCR := idlog.DefaultPCR
	if c.entry.IdentityLogPCR != nil {
		identityLogPCR = *c.entry.IdentityLogPCR
	}
	return &logical.Response{Data: map[string]any{
		"ek_allow":              allow,
		"ek_ca":                 cas,
		"allow_sha1":            c.entry.AllowSHA1,
		"pcr_banks":             banks,
		"identity_log_pcr":      identityLogPCR,
		"challenge_ttl":         int64(c.challengeTTL / time.Second),
		"challenges_per_minute": c.challengesPerMinute,
		"checkpoint_every":      c.checkpointEvery,
		"checkpoint_interval":   int64(c.checkpointInterval / time.Second),
		"vault_addr":            c.entry.VaultAddr,
		"vault_ca_cert":         c.entry.VaultCACert,
		"vault_tls_server_name": c.entry.VaultTLSServerName,
	}}, nil
}

// pathConfigWrite updates the fields given and keeps the others (defaults
// for a first write), validates the result as a whole, and stores it.
func (b *tpmAuthBackend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	b.l.Lock()
	defer b.l.Unlock()
	e := configEntry{
		ChallengeTTL:        challenge.DefaultTTL,
		ChallengesPerMinute: defaultChallengesPerMinute,
	}
	switch raw, err := req.Storage.Get(ctx, configPath); {
	case err != nil:
		return nil, err
	case raw != nil:
		if err := raw.DecodeJSON(&e); err != nil {
			return nil, fmt.Errorf("unable to decode the configuration: %w", err)
		}
	}
	var errs []error
	if v, ok := d.GetOk("ek_allow"); ok {
		e.EKAllow = v.([]string)
	}
	if v, ok := d.GetOk("ek_ca"); ok {
		cas, err := parseEKCAs(v.(map[string]any))
		if err != nil {
			errs = append(errs, err)
		}
		e.EKCAs = cas
	}
	if v, ok := d.GetOk("allow_sha1"); ok {
		e.AllowSHA1 = v.(bool)
	}
	if v, ok := d.GetOk("pcr_banks"); ok {
		// An empty list resets to the default: every bank counts.
		if e.PCRBanks = v.([]string); len(e.PCRBanks) == 0 {
			e.PCRBanks = nil
		}
	}
	if v, ok := d.GetOk("identity_log_pcr"); ok {
		pcr := v.(int)
		e.IdentityLogPCR = &pcr
	}
	if v, ok := d.GetOk("challenge_ttl"); ok {
		e.ChallengeTTL = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("challenges_per_minute"); ok {
		e.ChallengesPerMinute = v.(int)
	}
	if v, ok := d.GetOk("checkpoint_every"); ok {
		if e.CheckpointEvery = v.(int); e.CheckpointEvery == 0 {
			e.CheckpointEvery = -1 // refused: 0 is the stored form of the default
		}
	}
	if v, ok := d.GetOk("checkpoint_interval"); ok {
		if e.CheckpointInterval = time.Duration(v.(int)) * time.Second; e.CheckpointInterval == 0 {
			e.CheckpointInterval = -1
		}
	}
	if v, ok := d.GetOk("vault_addr"); ok {
		e.VaultAddr = strings.TrimRight(strings.TrimSpace(v.(string)), "/")
	}
	if v, ok := d.GetOk("vault_ca_cert"); ok {
		e.VaultCACert = v.(string)
	}
	if v, ok := d.GetOk("vault_tls_server_name"); ok {
		e.VaultTLSServerName = strings.TrimSpace(v.(string))
	}
	c, err := e.build()
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return logical.ErrorResponse(errors.Join(errs...).Error()), nil
	}
	entry, err := logical.StorageEntryJSON(configPath, e)
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, err
	}
	b.cachedConfig = c
	return nil, nil
}

// parseEKCAs reads the ek_ca field: a map from name to an object with a
// roots and an optional intermediates PEM string. Certificates are checked
// by configEntry.build.
func parseEKCAs(raw map[string]any) (map[string]ekCAEntry, error) {
	out := map[string]ekCAEntry{}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(raw)) {
		obj, ok := raw[name].(map[string]any)
		if !ok {
			errs = append(errs, fmt.Errorf(`ek_ca %q must be an object {"roots": "<PEM>", "intermediates": "<PEM>"}`, name))
			continue
		}
		var ca ekCAEntry
		ok = true
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			s, isString := obj[k].(string)
			switch {
			case k != "roots" && k != "intermediates":
				errs = append(errs, fmt.Errorf("ek_ca %q: unknown field %q (want roots, intermediates)", name, k))
				ok = false
			case !isString:
				errs = append(errs, fmt.Errorf("ek_ca %q: %s must be a PEM string", name, k))
				ok = false
			case k == "roots":
				ca.Roots = s
			default:
				ca.Intermediates = s
			}
		}
		if ok {
			out[name] = ca
		}
	}
	return out, errors.Join(errs...)
}

const pathConfigHelpSyn = `Configure which TPM endorsement keys are trusted, and challenges.`

const pathConfigHelpDesc = `
An EK is trusted if its hash is in ek_allow, or if the EK certificate the node
sends with its challenge chains to the roots of an ek_ca entry. A write
changes the fields it names and keeps the others; the resulting configuration
is validated as a whole and every problem is reported at once. The
configuration is stored seal-wrapped where the seal supports it.

  ek_allow               EK hashes (lowercase hex SHA-256 of the PKIX DER public key)
  ek_ca                  {"<name>": {"roots": "<PEM>", "intermediates": "<PEM>"}}
  allow_sha1             accept SHA-1 banks, signatures and AK names (default false)
  pcr_banks              banks whose quotes count, e.g. sha256,sha384 (default all)
  identity_log_pcr       PCR of the nodes' identity record, 10-15 (default 15); 0: off
  challenge_ttl          how long a challenge may be answered (default 60s, at most 10m)
  challenges_per_minute  challenges per EK per minute (default 10)
  checkpoint_every       sign a receipt chain checkpoint every this many receipts (default 1000)
  checkpoint_interval    and at least this often while receipts are added (default 60s, 1s-24h;
                         checked about once a minute)
  vault_addr             this Vault's API address, for roles with token_envelope
  vault_ca_cert          PEM roots for vault_addr (default: system roots)
  vault_tls_server_name  name in vault_addr's certificate, if not its host

ek_ca is a nested object: write it with a JSON body, for example
"vault write auth/tpm/config @config.json".
`
