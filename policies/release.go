package policies

import (
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/zclconf/go-cty/cty"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/internal/hcldiag"
	"github.com/keybroker/keybroker/resident"
)

// Mode says how a release is sealed to the node's TPM.
type Mode string

const (
	// ModeTPMBound wraps the release to the node's EK without a PCR policy:
	// only that TPM can open it.
	ModeTPMBound Mode = "tpm_bound"
	// ModePCRSealed wraps the release to the node's EK under a PolicyPCR
	// over the release's PCRs: only that TPM can open it, and only while
	// those PCRs hold the values it attested.
	ModePCRSealed Mode = "pcr_sealed"
	// ModeTPMResident releases only a certificate, for a key the node
	// created inside its TPM and certified with its AK for this
	// attestation: no private key travels. tls_certificate and x509_svid
	// (the node SVID, whose TLS handshakes the agent signs in the TPM);
	// an x509_svid may also name pcrs (and pcr_bank): the key must then
	// sign only while those PCRs hold the values quoted (PolicyPCR).
	ModeTPMResident Mode = "tpm_resident"
)

// Release types.
const (
	// TypeTLSCertificate is a TLS certificate and its key from the broker
	// CA.
	TypeTLSCertificate = "tls_certificate"
	// TypeX509SVID is the node's X.509-SVID and its key from the broker's
	// SPIFFE authority, with the trust domain's bundle.
	TypeX509SVID = "x509_svid"
	// TypeVaultKV is a secret read from a Vault KV version 2 path.
	TypeVaultKV = "vault_kv"
	// TypeVaultPKI is a TLS certificate and its key issued by a Vault PKI
	// role (pki/issue/<role>).
	TypeVaultPKI = "vault_pki"
	// TypeVaultToken is a Vault token created through a token role
	// (auth/token/create/<role>), valid for at most the release's ttl.
	TypeVaultToken = "vault_token"
	// TypeKubelet is a kubelet's client certificate for system:node:<name>
	// from the broker's Kubernetes client CA (the kubernetes block of
	// broker.hcl), with what the agent needs to write its kubeconfig.
	TypeKubelet = "kubelet"
)

// Kubelet authentication modes (kubelet_auth).
const (
	// KubeletClientCertificate: the broker signs the kubelet's client
	// certificate itself, with a CA kube-apiserver trusts
	// (--client-ca-file).
	KubeletClientCertificate = "client_certificate"
	// KubeletBootstrapToken: the broker creates a short-lived bootstrap
	// token (a Secret in kube-system) and the kubelet does the standard TLS
	// bootstrap with it: its certificate is then signed by the cluster's
	// own signer, for the node name the kubelet asks for.
	KubeletBootstrapToken = "bootstrap_token"
)

// Bootstrap token lifetimes: a bootstrap token only starts the kubelet's
// TLS bootstrap.
const (
	DefaultBootstrapTokenTTL = 15 * time.Minute
	MaxBootstrapTokenTTL     = 24 * time.Hour
)

// releaseTypes lists the release types, for messages.
var releaseTypes = []string{TypeTLSCertificate, TypeX509SVID, TypeVaultKV, TypeVaultPKI, TypeVaultToken, TypeKubelet}

// IsVault reports whether a release type takes its material from Vault.
func IsVault(typ string) bool {
	return typ == TypeVaultKV || typ == TypeVaultPKI || typ == TypeVaultToken
}

// Release TTL bounds.
const (
	DefaultTTL = 24 * time.Hour
	MaxTTL     = 8760 * time.Hour
	// MaxSVIDTTL bounds the ttl of an x509_svid release and of a workload
	// entry: the SPIFFE authority signs no longer SVID.
	MaxSVIDTTL = issue.MaxSVIDTTL
	// MaxTokenTTL bounds the ttl of a vault_token release: Vault's own
	// default maximum lease TTL (32 days). A token is a bearer secret; it
	// must not outlive the attestation that released it by much.
	MaxTokenTTL = 768 * time.Hour
	// MaxKubeletTTL bounds the ttl of a kubelet release. Kubernetes checks
	// no revocation of client certificates: a node that stops attesting
	// keeps its access until its certificate expires, so it is short.
	MaxKubeletTTL = 7 * 24 * time.Hour
)

// Release is what an allowing policy releases to the node, with its
// templates rendered for that node.
type Release struct {
	Name        string        // the release block's label, unique in its Set
	Type        string        // TypeTLSCertificate, TypeX509SVID, TypeVaultKV, TypeVaultPKI or TypeVaultToken
	Mode        Mode          // ModeTPMBound, ModePCRSealed or ModeTPMResident
	PCRBank     tpm2.TPMAlgID // ModePCRSealed, ModeTPMResident with PCRs: the bank of PCRs; zero otherwise
	PCRs        []uint32      // ModePCRSealed: the PCRs to seal to, ascending, all quoted; ModeTPMResident: the PCRs the key's PolicyPCR must cover (x509_svid only), or none
	TTL         time.Duration // DefaultTTL unless set; at most MaxTTL, MaxSVIDTTL for TypeX509SVID, MaxTokenTTL for TypeVaultToken
	CommonName  string        // TypeTLSCertificate, TypeVaultPKI: rendered, may be empty
	DNSNames    []string      // TypeTLSCertificate, TypeVaultPKI: rendered
	IPAddresses []net.IP      // TypeTLSCertificate, TypeVaultPKI: rendered and parsed
	// PCRPolicy is, for ModePCRSealed, what the blob is bound to:
	// PCRPolicyLiteral (the attested values) or PCRPolicyAuthorized
	// (approvals by the broker's PCR-policy signing key); empty otherwise.
	PCRPolicy PCRPolicy
	// ExpectedStates are, for PCRPolicyAuthorized, states the policy
	// approves besides the attested one: values of PCRBank for each of
	// PCRs.
	ExpectedStates []map[uint32][]byte
	// Path is the Vault path of TypeVaultKV (a KV v2 data path such as
	// "secret/data/nodes/web", rendered) and TypeVaultPKI (the issue
	// endpoint "pki/issue/<role>"); empty otherwise.
	Path string
	// SPIFFEID is the node's SPIFFE ID for TypeX509SVID, rendered and
	// parsed; zero otherwise. Whether it is in the broker's trust domain
	// is for the broker to check.
	SPIFFEID spiffeid.ID
	// NodeName is the Kubernetes node name of TypeKubelet, rendered and
	// checked as a DNS subdomain (RFC 1123); empty otherwise.
	NodeName string
	// KubeletAuth is how a TypeKubelet authenticates:
	// KubeletClientCertificate; empty otherwise.
	KubeletAuth string
	// Quarantine asks, for a TypeKubelet, that the node's Node object be
	// tainted when the node is later refused, and untainted when it
	// attests again.
	Quarantine bool
	// Token is what a TypeVaultToken creates; nil otherwise.
	Token *TokenSpec
}

// TokenSpec is the token a vault_token release has Vault create.
type TokenSpec struct {
	// Role is the token role: the token is created at
	// auth/token/create/<Role>.
	Role string
	// Policies are asked for (the role's allowed_policies bound them);
	// none: the role's token_policies.
	Policies []string
	// Period, if set, makes the token renewable: it expires Period after
	// its creation or last renewal, and never later than the release's
	// TTL (its explicit maximum TTL). Zero: not renewable, valid for TTL.
	Period time.Duration
	// DisplayName is rendered; empty leaves Vault's default.
	DisplayName string
}

type releaseHCL struct {
	Name      string         `hcl:"name,label"`
	NameRange hcl.Range      `hcl:"name,label_range"`
	DefRange  hcl.Range      `hcl:",def_range"`
	Type      *hcl.Attribute `hcl:"type,optional"`
	Mode      *hcl.Attribute `hcl:"mode,optional"`
	PCRBank   *hcl.Attribute `hcl:"pcr_bank,optional"`
	PCRs      *hcl.Attribute `hcl:"pcrs,optional"`
	PCRPolicy *hcl.Attribute `hcl:"pcr_policy,optional"`
	// ExpectedStates is a list of objects, PCR index = hex value.
	ExpectedStates *hcl.Attribute `hcl:"expected_states,optional"`
	TTL            *hcl.Attribute `hcl:"ttl,optional"`
	CommonName     *hcl.Attribute `hcl:"common_name,optional"`
	DNSNames       *hcl.Attribute `hcl:"dns_names,optional"`
	IPAddresses    *hcl.Attribute `hcl:"ip_addresses,optional"`
	SPIFFEID       *hcl.Attribute `hcl:"spiffe_id,optional"`
	Path           *hcl.Attribute `hcl:"path,optional"`
	NodeName       *hcl.Attribute `hcl:"node_name,optional"`
	KubeletAuth    *hcl.Attribute `hcl:"kubelet_auth,optional"`
	Quarantine     *hcl.Attribute `hcl:"quarantine,optional"`
	TokenRole      *hcl.Attribute `hcl:"token_role,optional"`
	Policies       *hcl.Attribute `hcl:"policies,optional"`
	Period         *hcl.Attribute `hcl:"period,optional"`
	DisplayName    *hcl.Attribute `hcl:"display_name,optional"`
}

// release is the parsed form of a release block; its templates are
// rendered per node by render.
type release struct {
	name           string
	nameRange      hcl.Range
	typ            string
	typeRange      hcl.Range // the type attribute's value, or the block
	mode           Mode
	bank           tpm2.TPMAlgID
	pcrs           []uint32
	pcrPolicy      PCRPolicy           // pcr_sealed; empty otherwise
	expectedStates []map[uint32][]byte // pcr_policy "authorized"
	ttl            time.Duration
	commonName     hcl.Expression // nil if absent
	dnsNames       []hcl.Expression
	ipAddresses    []hcl.Expression
	spiffeID       hcl.Expression // nil if absent
	path           hcl.Expression // vault_kv, vault_pki; nil otherwise
	nodeName       hcl.Expression // kubelet; nil otherwise
	kubeletAuth    string         // kubelet; empty otherwise
	quarantine     bool           // kubelet
	token          *tokenRelease  // vault_token; nil otherwise
}

// tokenRelease is the parsed form of a vault_token's settings.
type tokenRelease struct {
	role        string
	policies    []string
	period      time.Duration
	displayName hcl.Expression // nil if absent
}

// sealBanks are the PCR banks a release may be sealed to.
var sealBanks = map[string]tpm2.TPMAlgID{
	"sha256": tpm2.TPMAlgSHA256,
	"sha384": tpm2.TPMAlgSHA384,
	"sha512": tpm2.TPMAlgSHA512,
}

// SealBank returns the PCR bank a sealed release may name as pcr_bank
// ("sha256", "sha384" or "sha512").
func SealBank(name string) (tpm2.TPMAlgID, bool) {
	b, ok := sealBanks[name]
	return b, ok
}

const maxPCR = 23

func (c *compiler) release(raw *releaseHCL, policyWhere string) *release {
	r := &release{name: raw.Name, nameRange: raw.NameRange, mode: ModeTPMBound, ttl: DefaultTTL}
	where := fmt.Sprintf("%s: release %q", policyWhere, raw.Name)
	if raw.Name == "" {
		c.errorf(raw.NameRange, "%s: release name cannot be empty", policyWhere)
	}
	useTypes := quoteList(releaseTypes)

	if raw.Type == nil {
		c.errorf(raw.DefRange, "%s: type is required; use %s", where, useTypes)
	} else if s, ok := c.str(raw.Type.Expr, "%s: type", where); ok {
		r.typeRange = raw.Type.Expr.Range()
		if !slices.Contains(releaseTypes, s) {
			c.errorf(raw.Type.Expr.Range(), "%s: type %q is not supported; use %s", where, s, useTypes)
		}
		r.typ = s
	}

	modeKnown := true
	if raw.Mode != nil {
		if s, ok := c.str(raw.Mode.Expr, "%s: mode", where); ok {
			switch m := Mode(s); m {
			case ModeTPMBound, ModePCRSealed:
				r.mode = m
			case ModeTPMResident:
				r.mode = m
				if r.typ != TypeTLSCertificate && r.typ != TypeX509SVID {
					c.errorf(raw.Mode.Expr.Range(), "%s: mode %q is only supported for type %q or %q", where, s, TypeTLSCertificate, TypeX509SVID)
				}
			default:
				c.errorf(raw.Mode.Expr.Range(), "%s: mode %q is not supported; use %q, %q or %q", where, s, ModeTPMBound, ModePCRSealed, ModeTPMResident)
				modeKnown = false
			}
		} else {
			modeKnown = false
		}
	}
	c.sealing(r, raw, where, modeKnown)
	c.pcrPolicy(r, raw, where, modeKnown)
	if r.mode != ModePCRSealed {
		r.pcrPolicy, r.expectedStates = "", nil
	}

	maxTTL, maxFor := MaxTTL, ""
	switch r.typ {
	case TypeX509SVID:
		maxTTL, maxFor = MaxSVIDTTL, "an "+TypeX509SVID
	case TypeVaultToken:
		maxTTL, maxFor = MaxTokenTTL, "a "+TypeVaultToken
	case TypeKubelet:
		maxTTL, maxFor = MaxKubeletTTL, "a "+TypeKubelet
	}
	if d, ok := c.ttl(raw.TTL, where, maxTTL, maxFor); ok {
		r.ttl = d
	}
	if raw.Path != nil && r.typ != TypeVaultKV && r.typ != TypeVaultPKI && r.typ != "" {
		c.errorf(raw.Path.NameRange, "%s: path is only allowed with type %q or %q", where, TypeVaultKV, TypeVaultPKI)
	}
	if r.typ != TypeKubelet && r.typ != "" {
		for _, a := range []*hcl.Attribute{raw.NodeName, raw.KubeletAuth, raw.Quarantine} {
			if a != nil {
				c.errorf(a.NameRange, "%s: %s is only allowed with type %q", where, a.Name, TypeKubelet)
			}
		}
	}
	if r.typ != TypeVaultToken && r.typ != "" {
		for _, a := range []*hcl.Attribute{raw.TokenRole, raw.Policies, raw.Period, raw.DisplayName} {
			if a != nil {
				c.errorf(a.NameRange, "%s: %s is only allowed with type %q", where, a.Name, TypeVaultToken)
			}
		}
	}
	switch r.typ {
	case TypeKubelet:
		c.kubelet(r, raw, where)
	case TypeTLSCertificate:
		c.tlsNames(r, raw, where, TypeTLSCertificate)
	case TypeX509SVID:
		c.svidNames(r, raw, where)
	case TypeVaultPKI:
		c.vaultPath(r, raw, where)
		c.tlsNames(r, raw, where, TypeVaultPKI)
	case TypeVaultKV:
		c.vaultPath(r, raw, where)
		if raw.TTL != nil {
			c.errorf(raw.TTL.NameRange, "%s: ttl is not allowed with type %q: the secret has no validity of its own", where, TypeVaultKV)
		}
		for _, a := range []*hcl.Attribute{raw.CommonName, raw.DNSNames, raw.IPAddresses, raw.SPIFFEID} {
			if a != nil {
				c.errorf(a.NameRange, "%s: %s is not allowed with type %q", where, a.Name, TypeVaultKV)
			}
		}
	case TypeVaultToken:
		c.vaultToken(r, raw, where)
	}
	return r
}

// kubelet validates a kubelet release: kubelet_auth, and a node_name
// template that names the node by its EK (ek_hash or ek_hash_short), so
// that no two nodes can be given one Kubernetes identity; none of the
// other types' names.
func (c *compiler) kubelet(r *release, raw *releaseHCL, where string) {
	for _, a := range []*hcl.Attribute{raw.CommonName, raw.DNSNames, raw.IPAddresses, raw.SPIFFEID, raw.Path} {
		if a != nil {
			c.errorf(a.NameRange, "%s: %s is not allowed with type %q", where, a.Name, TypeKubelet)
		}
	}
	r.kubeletAuth = KubeletClientCertificate
	if raw.Quarantine != nil {
		v, diags := raw.Quarantine.Expr.Value(nil)
		switch {
		case diags.HasErrors():
			c.diags = append(c.diags, diags...)
		case v.IsNull() || v.Type() != cty.Bool:
			c.errorf(raw.Quarantine.Expr.Range(), "%s: quarantine must be true or false", where)
		default:
			r.quarantine = v.True()
		}
	}
	if raw.KubeletAuth != nil {
		if s, ok := c.str(raw.KubeletAuth.Expr, "%s: kubelet_auth", where); ok {
			switch s {
			case KubeletClientCertificate:
			case KubeletBootstrapToken:
				r.kubeletAuth = s
				if raw.TTL == nil {
					r.ttl = DefaultBootstrapTokenTTL
				} else if r.ttl > MaxBootstrapTokenTTL {
					c.errorf(raw.TTL.Expr.Range(), "%s: ttl exceeds the maximum of %s for a bootstrap token", where, hours(MaxBootstrapTokenTTL))
				}
			default:
				c.errorf(raw.KubeletAuth.Expr.Range(), "%s: kubelet_auth %q is not supported; use %q or %q", where, s, KubeletClientCertificate, KubeletBootstrapToken)
			}
		}
	}
	if raw.NodeName == nil && r.kubeletAuth == KubeletBootstrapToken {
		// The kubelet names itself in its certificate request; a node_name
		// only says which Node quarantine taints.
		if r.quarantine {
			c.errorf(raw.DefRange, "%s: quarantine with kubelet_auth %q needs the node_name the kubelet registers as (--hostname-override)", where, KubeletBootstrapToken)
		}
		return
	}
	if raw.NodeName == nil {
		c.errorf(raw.DefRange, "%s: a %s needs a node_name, such as \"node-${ek_hash_short}\"", where, TypeKubelet)
		return
	}
	what := where + ": node_name"
	s, ok := c.template(raw.NodeName.Expr, what)
	if !ok {
		return
	}
	switch {
	case !strings.Contains(s, sampleShort):
		c.errorf(raw.NodeName.Expr.Range(), "%s must contain the node's ${ek_hash_short}, such as \"node-${ek_hash_short}\": a node name shared by several nodes would let one act as another in the cluster", what)
	case validNodeName(s) != nil:
		c.errorf(raw.NodeName.Expr.Range(), "%s renders to %q for a sample node: %v", what, s, validNodeName(s))
	default:
		r.nodeName = raw.NodeName.Expr
	}
}

// validNodeName checks a Kubernetes node name: a DNS subdomain (RFC 1123),
// lower case, at most 253 characters.
func validNodeName(s string) error {
	if s == "" || len(s) > 253 {
		return errors.New("a node name has 1 to 253 characters")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("a node name is dot-separated labels of 1 to 63 characters that neither start nor end with '-'")
		}
		for _, ch := range label {
			if (ch < 'a' || ch > 'z') && (ch < '0' || ch > '9') && ch != '-' {
				return errors.New("a node name holds only lower-case letters, digits, '-' and '.'")
			}
		}
	}
	return nil
}

// vaultPath validates the path of a vault_kv or vault_pki release: a
// template that renders to a relative Vault path; a vault_kv path is a KV
// v2 data path (<mount>/data/<key>), a vault_pki path an issue endpoint
// (<mount>/issue/<role>), and the latter is static.
func (c *compiler) vaultPath(r *release, raw *releaseHCL, where string) {
	if raw.Path == nil {
		c.errorf(raw.DefRange, "%s: a %s needs a path", where, r.typ)
		return
	}
	what := where + ": path"
	s, ok := c.template(raw.Path.Expr, what)
	if !ok {
		return
	}
	rng := raw.Path.Expr.Range()
	switch {
	case r.typ == TypeVaultPKI && len(raw.Path.Expr.Variables()) > 0:
		c.errorf(rng, "%s: a %s path cannot use template variables", what, TypeVaultPKI)
	case r.typ == TypeVaultPKI && !isVaultPath(s, "issue"):
		c.errorf(rng, "%s %q is not a PKI issue path such as \"pki/issue/<role>\"", what, s)
	case r.typ == TypeVaultKV && !isVaultPath(s, "data"):
		c.errorf(rng, "%s %q is not a KV version 2 data path such as \"secret/data/<key>\"", what, s)
	default:
		r.path = raw.Path.Expr
	}
}

// isVaultPath reports whether p is "<mount>/<kind>/<rest>" with no empty,
// "." or ".." segment and no leading or trailing slash.
func isVaultPath(p, kind string) bool {
	segs := strings.Split(p, "/")
	if len(segs) < 3 || !slices.Contains(segs[1:len(segs)-1], kind) {
		return false
	}
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return false
		}
	}
	return true
}

// ttl parses an optional ttl attribute, at most maxTTL; maxFor, if set,
// names what that maximum is for in errors.
func (c *compiler) ttl(attr *hcl.Attribute, where string, maxTTL time.Duration, maxFor string) (time.Duration, bool) {
	if attr == nil {
		return 0, false
	}
	s, ok := c.str(attr.Expr, "%s: ttl", where)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		c.errorf(attr.Expr.Range(), "%s: ttl %q is not a duration such as \"24h\"", where, s)
	case d <= 0:
		c.errorf(attr.Expr.Range(), "%s: ttl %q must be positive", where, s)
	case d > maxTTL && maxFor != "":
		c.errorf(attr.Expr.Range(), "%s: ttl %q exceeds the maximum of %s for %s", where, s, hours(maxTTL), maxFor)
	case d > maxTTL:
		c.errorf(attr.Expr.Range(), "%s: ttl %q exceeds the maximum of %s", where, s, hours(maxTTL))
	default:
		return d, true
	}
	return 0, false
}

// hours formats a whole number of hours as "168h".
func hours(d time.Duration) string {
	return fmt.Sprintf("%dh", d/time.Hour)
}

// quoteList formats names as `"a", "b" or "c"`.
func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// tlsNames validates the names of a tls_certificate or vault_pki (typ):
// common_name, dns_names and ip_addresses, at least one of them; no
// spiffe_id.
func (c *compiler) tlsNames(r *release, raw *releaseHCL, where, typ string) {
	if raw.SPIFFEID != nil {
		c.errorf(raw.SPIFFEID.NameRange, "%s: spiffe_id is only allowed with type %q", where, TypeX509SVID)
	}
	if raw.CommonName != nil {
		if _, ok := c.template(raw.CommonName.Expr, where+": common_name"); ok {
			r.commonName = raw.CommonName.Expr
		}
	}
	dnsNames := c.list(raw.DNSNames, where)
	for i, e := range dnsNames {
		if _, ok := c.template(e, fmt.Sprintf("%s: dns_names[%d]", where, i)); ok {
			r.dnsNames = append(r.dnsNames, e)
		}
	}
	ips := c.list(raw.IPAddresses, where)
	for i, e := range ips {
		what := fmt.Sprintf("%s: ip_addresses[%d]", where, i)
		s, ok := c.template(e, what)
		if !ok {
			continue
		}
		if len(e.Variables()) == 0 && net.ParseIP(s) == nil {
			c.errorf(e.Range(), "%s %q is not an IP address", what, s)
			continue
		}
		r.ipAddresses = append(r.ipAddresses, e)
	}
	if raw.CommonName == nil && len(dnsNames) == 0 && len(ips) == 0 {
		c.errorf(raw.DefRange, "%s: a %s needs a common_name, dns_names or ip_addresses", where, typ)
	}
}

// svidNames validates the name of an x509_svid: a spiffe_id template that
// renders to a SPIFFE ID, and none of the TLS names.
func (c *compiler) svidNames(r *release, raw *releaseHCL, where string) {
	for _, a := range []*hcl.Attribute{raw.CommonName, raw.DNSNames, raw.IPAddresses} {
		if a != nil {
			c.errorf(a.NameRange, "%s: %s is only allowed with type %q or %q", where, a.Name, TypeTLSCertificate, TypeVaultPKI)
		}
	}
	if raw.SPIFFEID == nil {
		c.errorf(raw.DefRange, "%s: an %s needs a spiffe_id", where, TypeX509SVID)
		return
	}
	what := where + ": spiffe_id"
	s, ok := c.template(raw.SPIFFEID.Expr, what)
	if !ok {
		return
	}
	if _, err := spiffeid.FromString(s); err != nil {
		if len(raw.SPIFFEID.Expr.Variables()) == 0 {
			c.errorf(raw.SPIFFEID.Expr.Range(), "%s %q is not a SPIFFE ID: %v", what, s, err)
		} else {
			c.errorf(raw.SPIFFEID.Expr.Range(), "%s renders to %q for a sample node, which is not a SPIFFE ID: %v", what, s, err)
		}
		return
	}
	r.spiffeID = raw.SPIFFEID.Expr
}

// sealing validates pcr_bank and pcrs: required with mode pcr_sealed,
// optional with tpm_resident (an x509_svid's key bound to them), refused
// otherwise.
func (c *compiler) sealing(r *release, raw *releaseHCL, where string, modeKnown bool) {
	bank := tpm2.TPMAlgSHA256
	if raw.PCRBank != nil {
		if s, ok := c.str(raw.PCRBank.Expr, "%s: pcr_bank", where); ok {
			if b, known := sealBanks[s]; known {
				bank = b
			} else {
				c.errorf(raw.PCRBank.Expr.Range(), "%s: pcr_bank %q is not supported; use \"sha256\", \"sha384\" or \"sha512\"", where, s)
			}
		}
	}
	var pcrs []uint32
	emptyPCRs := false
	if raw.PCRs != nil {
		pcrs, emptyPCRs = c.pcrs(raw.PCRs, where)
	}
	if !modeKnown {
		return
	}
	switch r.mode {
	case ModeTPMResident:
		if raw.PCRs == nil {
			if raw.PCRBank != nil {
				c.errorf(raw.PCRBank.NameRange, "%s: pcr_bank needs pcrs", where)
			}
			return
		}
		// The agent signs with a PCR-bound key itself; OpenSSL's tpm2
		// provider cannot satisfy its policy, so a tls_certificate's
		// key is never PCR-bound.
		switch {
		case r.typ != TypeX509SVID:
			c.errorf(raw.PCRs.NameRange, "%s: pcrs with mode %q is only supported for type %q (OpenSSL's tpm2 provider cannot use a PCR-bound key)", where, ModeTPMResident, TypeX509SVID)
		case emptyPCRs:
			c.errorf(raw.PCRs.Expr.Range(), "%s: pcrs cannot be empty", where)
		}
		r.bank, r.pcrs = bank, pcrs
	case ModeTPMBound:
		if raw.PCRBank != nil {
			c.errorf(raw.PCRBank.NameRange, "%s: pcr_bank is only allowed with mode %q", where, ModePCRSealed)
		}
		if raw.PCRs != nil {
			c.errorf(raw.PCRs.NameRange, "%s: pcrs is only allowed with mode %q", where, ModePCRSealed)
		}
	case ModePCRSealed:
		switch {
		case raw.PCRs == nil:
			c.errorf(raw.DefRange, "%s: pcrs is required with mode %q", where, ModePCRSealed)
		case emptyPCRs:
			c.errorf(raw.PCRs.Expr.Range(), "%s: pcrs cannot be empty with mode %q", where, ModePCRSealed)
		}
		r.bank, r.pcrs = bank, pcrs
	}
}

// pcrs returns the valid PCR indices listed in attr, ascending, and whether
// attr is an empty list.
func (c *compiler) pcrs(attr *hcl.Attribute, where string) ([]uint32, bool) {
	var out []uint32
	exprs := c.list(attr, where)
	for i, e := range exprs {
		v, diags := e.Value(nil)
		if diags.HasErrors() {
			c.diags = append(c.diags, diags...)
			continue
		}
		if v.IsNull() || v.Type() != cty.Number {
			c.errorf(e.Range(), "%s: pcrs[%d] must be a number", where, i)
			continue
		}
		f := v.AsBigFloat()
		n, acc := f.Int64()
		if !f.IsInt() || acc != big.Exact || n < 0 || n > maxPCR {
			c.errorf(e.Range(), "%s: pcrs[%d] %s is not a PCR index 0..%d", where, i, f.Text('g', 10), maxPCR)
			continue
		}
		if slices.Contains(out, uint32(n)) {
			c.errorf(e.Range(), "%s: pcrs[%d] %d is listed twice", where, i, n)
			continue
		}
		if err := resident.CheckBindable(uint32(n)); err != nil {
			c.errorf(e.Range(), "%s: pcrs[%d]: %v", where, i, err)
			continue
		}
		out = append(out, uint32(n))
	}
	slices.Sort(out)
	return out, exprs != nil && len(exprs) == 0
}

// templateVars are the variables release templates may use.
var templateVars = []string{"ek_hash", "ek_hash_short", "ek_ca"}

// template checks that e is a string template over templateVars only, and
// returns its rendering for a sample node (the value itself if e uses no
// variables).
func (c *compiler) template(e hcl.Expression, what string) (string, bool) {
	ok := true
	for _, tr := range e.Variables() {
		if name := tr.RootName(); !slices.Contains(templateVars, name) {
			c.errorf(tr.SourceRange(), "%s: unknown template variable %q; use %s", what, name, strings.Join(templateVars, ", "))
			ok = false
		}
	}
	if !ok {
		return "", false
	}
	s, err := render(e, templateContext(sampleHash, "ca"))
	if err != nil {
		c.errorf(e.Range(), "%s: %v", what, err)
		return "", false
	}
	return s, true
}

// sampleHash is the EK hash templates are checked with when parsed;
// sampleShort its ek_hash_short.
var (
	sampleHash  = strings.Repeat("0", 64)
	sampleShort = sampleHash[:16]
)

// templateContext holds the template variables for a node.
func templateContext(ekHash, ekCA string) *hcl.EvalContext {
	short := ekHash
	if len(short) > 16 {
		short = short[:16]
	}
	return &hcl.EvalContext{Variables: map[string]cty.Value{
		"ek_hash":       cty.StringVal(ekHash),
		"ek_hash_short": cty.StringVal(short),
		"ek_ca":         cty.StringVal(ekCA),
	}}
}

// render evaluates a template to a string.
func render(e hcl.Expression, ctx *hcl.EvalContext) (string, error) {
	v, diags := e.Value(ctx)
	if diags.HasErrors() {
		var msgs []string
		for _, d := range diags {
			if d.Severity == hcl.DiagError {
				msgs = append(msgs, hcldiag.Message(d))
			}
		}
		return "", errors.New(strings.Join(msgs, "; "))
	}
	if v.IsNull() || !v.IsKnown() || v.Type() != cty.String {
		return "", errors.New("must be a string")
	}
	return v.AsString(), nil
}

// render renders the release for a node. It returns the failures, without
// the policy and release prefix, if any template does not render.
func (r *release) render(ctx *hcl.EvalContext) (Release, []string) {
	out := Release{
		Name: r.name, Type: r.typ, Mode: r.mode, PCRBank: r.bank,
		PCRs: slices.Clone(r.pcrs), PCRPolicy: r.pcrPolicy, ExpectedStates: cloneStates(r.expectedStates), TTL: r.ttl, KubeletAuth: r.kubeletAuth, Quarantine: r.quarantine,
	}
	var fails []string
	if r.nodeName != nil {
		s, err := render(r.nodeName, ctx)
		if err == nil {
			err = validNodeName(s)
		}
		if short := ctx.Variables["ek_hash_short"]; err == nil && (!short.IsKnown() || short.IsNull() || !strings.Contains(s, short.AsString())) {
			err = fmt.Errorf("%q does not contain the node's ek_hash_short", s)
		}
		if err != nil {
			fails = append(fails, fmt.Sprintf("node_name: %v", err))
		}
		out.NodeName = s
	}
	if t := r.token; t != nil {
		out.Token = &TokenSpec{Role: t.role, Policies: slices.Clone(t.policies), Period: t.period}
		if t.displayName != nil {
			s, err := render(t.displayName, ctx)
			if err != nil {
				fails = append(fails, fmt.Sprintf("display_name: %v", err))
			}
			out.Token.DisplayName = s
		}
	}
	if r.commonName != nil {
		s, err := render(r.commonName, ctx)
		if err != nil {
			fails = append(fails, fmt.Sprintf("common_name: %v", err))
		}
		out.CommonName = s
	}
	for i, e := range r.dnsNames {
		s, err := render(e, ctx)
		switch {
		case err != nil:
			fails = append(fails, fmt.Sprintf("dns_names[%d]: %v", i, err))
		case s == "":
			fails = append(fails, fmt.Sprintf("dns_names[%d] renders empty", i))
		default:
			out.DNSNames = append(out.DNSNames, s)
		}
	}
	for i, e := range r.ipAddresses {
		s, err := render(e, ctx)
		if err != nil {
			fails = append(fails, fmt.Sprintf("ip_addresses[%d]: %v", i, err))
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil {
			fails = append(fails, fmt.Sprintf("ip_addresses[%d] %q is not an IP address", i, s))
			continue
		}
		out.IPAddresses = append(out.IPAddresses, ip)
	}
	if r.path != nil {
		s, err := render(r.path, ctx)
		switch {
		case err != nil:
			fails = append(fails, fmt.Sprintf("path: %v", err))
		case !isVaultPath(s, "data") && r.typ == TypeVaultKV:
			fails = append(fails, fmt.Sprintf("path %q is not a KV version 2 data path", s))
		default:
			out.Path = s
		}
	}
	if r.spiffeID != nil {
		s, err := render(r.spiffeID, ctx)
		if err == nil {
			out.SPIFFEID, err = spiffeid.FromString(s)
			if err != nil {
				err = fmt.Errorf("%q is not a SPIFFE ID: %w", s, err)
			}
		}
		if err != nil {
			fails = append(fails, fmt.Sprintf("spiffe_id: %v", err))
		}
	}
	return out, fails
}
