// Package release issues what an allowed decision releases to a verified
// node — a key and certificate from the broker's CA or SPIFFE authority, a
// certificate from Vault's PKI, a Vault KV secret, a Vault token — and
// seals each to the node's TPM: tpm_bound to its EK, or pcr_sealed to its
// EK and the PCR values its quote reported. It is the step after policy in
// the broker's Attest; it records nothing. When a decision cannot be
// released whole, nothing of it is: the certificates and tokens Vault
// issued for it are revoked.
package release

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/kube"
	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/vaultsource"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/workloadentry"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/resident"
	"github.com/keybroker/keybroker/sealing"
)

// The stages of one credential's release Opts.Observe is told of.
const (
	StageIssue = "issue"
	StageSeal  = "seal"
)

// Opts are what a Releaser issues with. CA is required.
type Opts struct {
	CA *issue.CA
	// SPIFFE is the trust domain's authority; nil refuses x509_svid
	// releases and workload entries.
	SPIFFE *issue.SPIFFE
	// Vault is the source of vault_kv, vault_pki and vault_token
	// releases; nil refuses them.
	Vault *vaultsource.Client
	// Kubernetes is the cluster kubelet releases join; nil refuses them.
	Kubernetes *Kubernetes
	Logger     *slog.Logger // default: discard
	// Observe, if set, is told how long each credential took to issue
	// (StageIssue) and to seal (StageSeal).
	Observe func(stage string, took time.Duration)
	// PCRPolicy signs the approvals of pcr_policy "authorized" releases;
	// nil refuses them.
	PCRPolicy *pcrpolicy.Signer
}

// Releaser issues and seals the releases of decisions. It is safe for
// concurrent use.
type Releaser struct {
	ca      *issue.CA
	spiffe  *issue.SPIFFE
	vault   *vaultsource.Client
	kube    *Kubernetes
	log     *slog.Logger
	observe func(stage string, took time.Duration)
	pcrs    *pcrpolicy.Signer
}

// New returns a Releaser.
func New(opts Opts) (*Releaser, error) {
	if opts.CA == nil {
		return nil, errors.New("CA cannot be nil")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Observe == nil {
		opts.Observe = func(string, time.Duration) {}
	}
	if k := opts.Kubernetes; k != nil && (k.ClientCA == nil || k.Server == "") {
		return nil, errors.New("kubernetes needs a server and a client CA")
	}
	return &Releaser{ca: opts.CA, spiffe: opts.SPIFFE, vault: opts.Vault, kube: opts.Kubernetes, log: opts.Logger, observe: opts.Observe, pcrs: opts.PCRPolicy}, nil
}

// Kubernetes is the cluster kubelet releases join: where its API server
// is, what verifies it, and the CA that signs kubelet client certificates,
// which kube-apiserver trusts through --client-ca-file.
type Kubernetes struct {
	Server       string // https://host:port
	ClusterCAPEM []byte // empty: the node's system roots
	ClientCA     *issue.CA
	// API is the broker's own client of the API server (the kubernetes
	// block's token_file): bootstrap tokens and quarantine; nil without.
	API *kube.Client
}

// Released is what a decision released: the sealed credentials for the
// reply, what the receipt and node record keep of them, and the workload
// entries of the policies that allowed it.
type Released struct {
	Credentials []*pb.Credential
	Items       []store.ReleasedItem
	// SVIDs are the node X.509-SVIDs among the credentials.
	SVIDs []store.NodeSVID
	// WorkloadEntries are the decision's workload entries for the reply;
	// NodeEntries the same for the node record.
	WorkloadEntries []*pb.WorkloadEntry
	NodeEntries     []store.WorkloadEntry
	// Approvals are the PCR-policy approvals of the node's pcr_policy
	// "authorized" releases (ReleaseFor); none without.
	Approvals []*pb.PCRApproval
	// WorkloadTrust is the trust material of the entries' signed
	// selectors, for the reply (nil when none).
	WorkloadTrust *pb.WorkloadTrust
	revocable     []revocable // revoked if the release is not delivered
}

// Kind says why a decision could not be released.
type Kind int

const (
	// KindSPIFFE: the decision releases a SPIFFE identity (an x509_svid or
	// a workload entry) this broker cannot issue: no spiffe block, or an
	// ID outside its trust domain.
	KindSPIFFE Kind = iota + 1
	// KindNoVault: the decision releases from Vault and the broker has no
	// vault block.
	KindNoVault
	// KindVaultRefused: Vault refused the broker (its token or paths).
	KindVaultRefused
	// KindVaultUnavailable: Vault could not be reached.
	KindVaultUnavailable
	// KindIssue: issuing or sealing a credential failed.
	KindIssue
	// KindNoKubernetes: the decision releases a kubelet credential and the
	// broker has no kubernetes block.
	KindNoKubernetes
	// KindNoResidentKey: the decision releases a tpm_resident certificate
	// and the node offered no certified TPM key fit for it (the agent was
	// not told of the release, or not of the PCRs it binds the key to):
	// about the node's setup, not its state.
	KindNoResidentKey
	// KindNoPolicyCounter: the decision releases a pcr_policy "authorized"
	// credential and the node reported no policy counter (or the broker
	// has no PCR-policy key): about the node's setup, not its state.
	KindNoPolicyCounter
)

// Failure is why a decision released nothing.
type Failure struct {
	Kind Kind
	// Msg is what the node is told.
	Msg string
	// Notes are for the receipt's failures: what failed, and what became
	// of the certificates and tokens Vault issued for the decision.
	Notes []string
	Cause error
}

func (f *Failure) Error() string {
	if f.Cause != nil {
		return f.Msg + ": " + f.Cause.Error()
	}
	return f.Msg
}

func (f *Failure) Unwrap() error { return f.Cause }

// Release issues every release of d, an allowed decision on v, each sealed
// to v's node, and returns them with d's workload entries. receiptID is
// the ID the decision's receipt will be recorded under: the tokens Vault
// creates for d name it, and the node's EK hash, in their metadata. Before
// anything is issued it checks that the broker can issue all of them
// (SPIFFE identities, a vault block). If any release fails, nothing is
// released: the certificates and tokens Vault issued for d are revoked,
// and a *Failure says why.
func (r *Releaser) Release(ctx context.Context, v *verify.Verified, d policies.Decision, receiptID string) (*Released, error) {
	return r.ReleaseFor(ctx, v, d, receiptID, nil)
}

// ReleaseFor is Release for a node whose pcr_policy "authorized" releases
// are sealed to its policy counter as node says (nil: the node has no
// counter, and such releases are refused).
func (r *Releaser) ReleaseFor(ctx context.Context, v *verify.Verified, d policies.Decision, receiptID string, node *PolicyNode) (*Released, error) {
	if f := r.checkAuthorized(d, node); f != nil {
		return nil, f
	}
	if err := r.checkSPIFFE(d); err != nil {
		return nil, &Failure{Kind: KindSPIFFE, Msg: "release: the policies release a SPIFFE identity this broker cannot issue",
			Notes: strings.Split(err.Error(), "\n"), Cause: err}
	}
	for _, rel := range d.Releases {
		if policies.IsVault(rel.Type) && r.vault == nil {
			return nil, &Failure{Kind: KindNoVault, Msg: "release: vault unavailable (not configured)",
				Notes: []string{fmt.Sprintf("release %q: no vault is configured (the vault block of broker.hcl)", rel.Name)},
				Cause: fmt.Errorf("release %q: no vault is configured", rel.Name)}
		}
		if f := residentKeyFailure(v, rel); f != nil {
			return nil, f
		}
		if rel.Type == policies.TypeKubelet && r.kube == nil {
			return nil, &Failure{Kind: KindNoKubernetes, Msg: "release: kubernetes is not configured",
				Notes: []string{fmt.Sprintf("release %q: no kubernetes block is configured in broker.hcl", rel.Name)},
				Cause: fmt.Errorf("release %q: no kubernetes is configured", rel.Name)}
		}
	}
	out := &Released{}
	for _, rel := range d.Releases {
		cred, item, err := r.release(ctx, v, rel, receiptID, node)
		if vi, ok := revocableOf(rel, item); ok {
			out.revocable = append(out.revocable, vi)
		}
		if err != nil {
			f := failure(rel, err)
			f.Notes = append(r.revoke(ctx, out.revocable), f.Notes...)
			return nil, f
		}
		out.Credentials = append(out.Credentials, cred)
		out.Items = append(out.Items, item)
		if rel.Type == policies.TypeX509SVID {
			out.SVIDs = append(out.SVIDs, store.NodeSVID{Serial: item.Serial, ID: item.SPIFFEID, NotAfter: item.NotAfter})
		}
	}
	out.WorkloadEntries, out.NodeEntries = workloadEntries(d.WorkloadEntries)
	out.WorkloadTrust = d.WorkloadTrust.ToProto()
	approvals, err := r.approvals(v, d, node)
	if err != nil {
		f := failure(policies.Release{Name: "pcr-policy approvals"}, err)
		f.Notes = append(r.revoke(ctx, out.revocable), f.Notes...)
		return nil, f
	}
	out.Approvals = approvals
	return out, nil
}

// residentKeyFailure says why the node's resident key cannot serve the
// tpm_resident release rel — it offered none, or the release binds the key
// to PCRs and the key's PolicyPCR is not over the quoted values — or nil.
func residentKeyFailure(v *verify.Verified, rel policies.Release) *Failure {
	if rel.Mode != policies.ModeTPMResident {
		return nil
	}
	if v.ResidentKey(rel.Name) == nil {
		return &Failure{Kind: KindNoResidentKey, Msg: fmt.Sprintf("release: %q is tpm_resident and the node offered no TPM key for it (agent --tpm-resident %s)", rel.Name, rel.Name),
			Notes: []string{fmt.Sprintf("release %q: tpm_resident, and the node offered no certified TPM key for it", rel.Name)},
			Cause: fmt.Errorf("release %q: no resident key offered", rel.Name)}
	}
	if len(rel.PCRs) == 0 {
		return nil
	}
	if err := v.CheckResidentPCRPolicy(rel.Name, rel.PCRBank, rel.PCRs); err != nil {
		sel := resident.PCRs{Bank: rel.PCRBank, PCRs: rel.PCRs}
		return &Failure{Kind: KindNoResidentKey,
			Msg:   fmt.Sprintf("release: %q is tpm_resident bound to PCRs and the node's TPM key for it is not bound to the attested values (agent --tpm-resident %s=%s)", rel.Name, rel.Name, sel.String()),
			Notes: []string{fmt.Sprintf("release %q: %v", rel.Name, err)},
			Cause: err}
	}
	return nil
}

// failure describes the failed release rel.
func failure(rel policies.Release, err error) *Failure {
	var ve *vaultsource.Error
	if errors.As(err, &ve) {
		// Vault is down or refused: about the broker's Vault token or
		// paths, not about the node.
		kind, what := KindVaultRefused, "vault refused the broker"
		if ve.Unavailable {
			kind, what = KindVaultUnavailable, "vault unavailable"
		}
		return &Failure{Kind: kind, Msg: fmt.Sprintf("release: %s (%s)", what, ve.Reason),
			Notes: []string{fmt.Sprintf("release %q: %s: %s", rel.Name, ve.Op, ve.Reason)},
			Cause: fmt.Errorf("release %q: %w", rel.Name, err)}
	}
	return &Failure{Kind: KindIssue, Msg: fmt.Sprintf("release: unable to release %q", rel.Name), Cause: err}
}

// Unrelease revokes the certificates and tokens Vault issued for rel,
// released but not delivered (its decision could not be recorded), and
// returns what became of each, for the receipt.
func (r *Releaser) Unrelease(ctx context.Context, rel *Released) []string {
	if rel == nil {
		return nil
	}
	return r.revoke(ctx, rel.revocable)
}

// revocable is what a release created outside the broker, to revoke if
// its decision is not delivered: a certificate Vault's PKI issued (id is
// its serial), a token a Vault token role created (its accessor), a
// Kubernetes bootstrap token (its ID).
type revocable struct {
	release, what, path, id string
}

// source names what it is with where it comes from, for logs: "vault
// certificate", "vault token", "kubernetes bootstrap token".
func (c revocable) source() string {
	if c.what == bootstrapToken {
		return "kubernetes " + c.what
	}
	return "vault " + c.what
}

// String names it for receipts and logs, never with a secret.
func (c revocable) String() string {
	if c.what == "token" {
		return "token (accessor " + c.id + ")"
	}
	return c.what + " " + c.id
}

// revocableOf returns what was created for rel, released or not (item
// names it also when a later step failed), that the broker revokes if its
// decision is not released.
func revocableOf(rel policies.Release, item store.ReleasedItem) (revocable, bool) {
	if item.Serial == "" {
		return revocable{}, false
	}
	switch rel.Type {
	case policies.TypeVaultPKI:
		return revocable{release: rel.Name, what: "certificate", path: rel.Path, id: item.Serial}, true
	case policies.TypeVaultToken:
		return revocable{release: rel.Name, what: "token", id: item.Serial}, true
	case policies.TypeKubelet:
		if rel.KubeletAuth == policies.KubeletBootstrapToken {
			return revocable{release: rel.Name, what: bootstrapToken, id: item.Serial}, true
		}
	}
	return revocable{}, false
}

// revoke revokes the certificates and tokens Vault issued for a decision
// that is not released after all, so that none stays valid unreleased;
// what became of each goes to the notes it returns and to the log. Best
// effort: the broker's Vault token needs update on <mount>/revoke and
// auth/token/revoke-accessor.
func (r *Releaser) revoke(ctx context.Context, issued []revocable) []string {
	var notes []string
	for _, c := range issued {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		var err error
		switch c.what {
		case "certificate":
			err = r.vault.RevokeCertificate(rctx, c.path, c.id)
		case bootstrapToken:
			err = r.kube.API.DeleteBootstrapToken(rctx, c.id)
		default:
			err = r.vault.RevokeToken(rctx, c.id)
		}
		cancel()
		if err != nil {
			why := err.Error()
			if ve := (*vaultsource.Error)(nil); errors.As(err, &ve) {
				why = ve.Op + ": " + ve.Reason
			}
			notes = append(notes, fmt.Sprintf("release %q: %s was issued but not released, and not revoked: %s", c.release, c, why))
			r.log.Warn("unable to revoke a "+c.source()+" that was not released", "release", c.release, idKey(c.what), c.id, "error", err)
			continue
		}
		notes = append(notes, fmt.Sprintf("release %q: %s was issued but not released; revoked", c.release, c))
		r.log.Info(c.source()+" revoked: its decision was not released", "release", c.release, idKey(c.what), c.id)
	}
	return notes
}

// idKey is the log key of what Vault issued's ID: a certificate's serial,
// a token's accessor; or of a bootstrap token's ID.
func idKey(what string) string {
	switch what {
	case "token":
		return "accessor"
	case bootstrapToken:
		return "token_id"
	}
	return "serial"
}

// bootstrapToken names a Kubernetes bootstrap token among what a decision
// issued, to delete if it is not released.
const bootstrapToken = "bootstrap token"

// issued is a credential before it is sealed: its serialized payload
// message and what the receipt records of it.
type issued struct {
	typ      pb.CredentialType
	payload  []byte
	serial   string
	notAfter time.Time
	id       spiffeid.ID // X509_SVID
}

// release issues one credential and wraps it to the node's EK. Release has
// refused Vault releases already when the broker has no vault block.
func (r *Releaser) release(ctx context.Context, v *verify.Verified, rel policies.Release, receiptID string, node *PolicyNode) (*pb.Credential, store.ReleasedItem, error) {
	item := store.ReleasedItem{Name: rel.Name, Type: rel.Type, Mode: string(rel.Mode)}
	// The PCRs to seal to first: nothing is issued (by Vault least of
	// all) for a release that cannot be sealed.
	var pcrs *tpmpb.PCRs
	if rel.Mode == policies.ModePCRSealed {
		var err error
		if pcrs, err = v.SealPCRs(rel.PCRBank, rel.PCRs); err != nil {
			return nil, item, err
		}
		item.PCRBank, item.PCRs = verify.BankName(rel.PCRBank), rel.PCRs
	}
	seal := func(payload []byte, typ pb.CredentialType) (*pb.Credential, error) {
		return sealing.SealCredentialTo(v.Node().EKKey(), rel.Name, typ, payload, pcrs)
	}
	if rel.PCRPolicy == policies.PCRPolicyAuthorized {
		auth := r.pcrs.Authorization(rel.PCRBank, rel.PCRs, v.EKHash(), node.Counter)
		seal = func(payload []byte, typ pb.CredentialType) (*pb.Credential, error) {
			return sealing.SealAuthorizedTo(v.Node().EKKey(), rel.Name, typ, payload, auth)
		}
	}
	var iss *issued
	var err error
	start := time.Now()
	switch rel.Type {
	case policies.TypeTLSCertificate:
		iss, err = r.issueTLS(v, rel)
	case policies.TypeX509SVID:
		iss, err = r.issueNodeSVID(v, rel)
	case policies.TypeVaultPKI:
		iss, err = r.issueVaultPKI(ctx, rel)
	case policies.TypeVaultKV:
		iss, err = r.readVaultKV(ctx, rel)
	case policies.TypeKubelet:
		iss, err = r.issueKubelet(ctx, rel, v.EKHash(), receiptID)
	case policies.TypeVaultToken:
		iss, err = r.createVaultToken(ctx, rel, v.EKHash(), receiptID)
	default:
		err = fmt.Errorf("release type %q is not supported", rel.Type)
	}
	if iss != nil {
		// Known also when a later step fails: what Vault issued is then
		// revoked with the rest of the decision.
		item.Serial, item.NotAfter, item.SPIFFEID = iss.serial, iss.notAfter, iss.id
	}
	if rel.Type == policies.TypeKubelet {
		item.NodeName, item.Quarantine = rel.NodeName, rel.Quarantine
		item.BootstrapToken = rel.KubeletAuth == policies.KubeletBootstrapToken
	}
	if err != nil {
		return nil, item, err
	}
	defer clear(iss.payload)
	sealStart := time.Now()
	r.observe(StageIssue, sealStart.Sub(start))
	cred, err := seal(iss.payload, iss.typ)
	if err != nil {
		return nil, item, err
	}
	r.observe(StageSeal, time.Since(sealStart))
	if rel.Mode == policies.ModeTPMResident {
		cred.Mode = pb.ReleaseMode_TPM_RESIDENT
	}
	if !iss.notAfter.IsZero() {
		cred.NotAfterUnix = iss.notAfter.Unix()
	}
	return cred, item, nil
}

// issueTLS issues a tls_certificate release: a key and certificate from
// the broker CA, or, tpm_resident, a certificate from the broker CA for
// the key the node created in its TPM for the release (verified by
// verify.Verified.WithResidentKeys), with no key in the payload.
func (r *Releaser) issueTLS(v *verify.Verified, rel policies.Release) (*issued, error) {
	t := issue.TLSTemplate{
		CommonName:  rel.CommonName,
		DNSNames:    rel.DNSNames,
		IPAddresses: rel.IPAddresses,
		TTL:         rel.TTL,
	}
	if rel.Mode == policies.ModeTPMResident {
		k := v.ResidentKey(rel.Name)
		if k == nil { // Release checked it first
			return nil, fmt.Errorf("release %q: no resident key offered", rel.Name)
		}
		tc, err := r.ca.IssueTLSForKey(t, k.Public())
		if err != nil {
			return nil, err
		}
		return tlsIssued(nil, tc.CertificatePEM, tc.ChainPEM, tc.Serial, tc.NotAfter)
	}
	tc, err := r.ca.IssueTLS(t)
	if err != nil {
		return nil, err
	}
	return tlsIssued(tc.KeyPEM, tc.CertificatePEM, tc.ChainPEM, tc.Serial, tc.NotAfter)
}

// issueKubelet issues a kubelet release: a key and a client certificate
// for system:node:<node name> in group system:nodes from the Kubernetes
// client CA, with the API server's address and CA.
func (r *Releaser) issueKubelet(ctx context.Context, rel policies.Release, ekHash, receiptID string) (*issued, error) {
	switch rel.KubeletAuth {
	case policies.KubeletBootstrapToken:
		return r.createBootstrapToken(ctx, rel, ekHash, receiptID)
	case policies.KubeletClientCertificate:
	default:
		return nil, fmt.Errorf("kubelet_auth %q is not supported", rel.KubeletAuth)
	}
	tc, err := r.kube.ClientCA.IssueTLS(issue.TLSTemplate{
		CommonName:   KubeletUserPrefix + rel.NodeName,
		Organization: []string{KubeletGroup},
		Client:       true,
		TTL:          rel.TTL,
	})
	if err != nil {
		return nil, err
	}
	payload, err := proto.Marshal(&pb.KubeletCredential{
		NodeName: rel.NodeName, Server: r.kube.Server, ClusterCaPem: r.kube.ClusterCAPEM,
		KeyPem: tc.KeyPEM, CertificatePem: tc.CertificatePEM, ChainPem: tc.ChainPEM,
	})
	clear(tc.KeyPEM)
	if err != nil {
		return nil, err
	}
	return &issued{typ: pb.CredentialType_KUBELET, payload: payload, serial: tc.Serial, notAfter: tc.NotAfter}, nil
}

// createBootstrapToken issues a kubelet release in bootstrap_token mode: a
// bootstrap token valid for the release's TTL, described with the EK and
// the receipt; the receipt records its ID, never its secret.
func (r *Releaser) createBootstrapToken(ctx context.Context, rel policies.Release, ekHash, receiptID string) (*issued, error) {
	if r.kube.API == nil {
		return nil, errors.New("no token_file in the kubernetes block: the broker cannot create bootstrap tokens")
	}
	t, err := r.kube.API.CreateBootstrapToken(ctx, rel.TTL, fmt.Sprintf("keybroker: node %s, receipt %s", ekHash, receiptID))
	if err != nil {
		if t.ID != "" {
			return &issued{serial: t.ID}, err // perhaps created: to delete
		}
		return nil, err
	}
	payload, err := proto.Marshal(&pb.KubeletCredential{NodeName: rel.NodeName, Server: r.kube.Server, ClusterCaPem: r.kube.ClusterCAPEM,
		BootstrapToken: t.Token()})
	if err != nil {
		return &issued{serial: t.ID}, err // created: to delete
	}
	return &issued{typ: pb.CredentialType_KUBELET, payload: payload, serial: t.ID, notAfter: t.Expires}, nil
}

// The Kubernetes user and group a kubelet's client certificate names: the
// Node authorizer and NodeRestriction admission limit such a client to its
// own Node object and what is bound to it.
const (
	KubeletUserPrefix = "system:node:"
	KubeletGroup      = "system:nodes"
)

// tlsIssued makes the TLSCredential payload of a key and certificate, from
// the broker CA or Vault PKI alike, and clears the key it was given.
func tlsIssued(keyPEM, certPEM, chainPEM []byte, serial string, notAfter time.Time) (*issued, error) {
	payload, err := proto.Marshal(&pb.TLSCredential{KeyPem: keyPEM, CertificatePem: certPEM, ChainPem: chainPEM})
	clear(keyPEM)
	if err != nil {
		return nil, err
	}
	return &issued{typ: pb.CredentialType_TLS_CERTIFICATE, payload: payload, serial: serial, notAfter: notAfter}, nil
}

// issueVaultPKI issues a vault_pki release: Vault's PKI role issues the
// key and certificate, released as a TLS credential.
func (r *Releaser) issueVaultPKI(ctx context.Context, rel policies.Release) (*issued, error) {
	c, err := r.vault.IssueCertificate(ctx, rel.Path, vaultsource.CertRequest{
		CommonName:  rel.CommonName,
		DNSNames:    rel.DNSNames,
		IPAddresses: rel.IPAddresses,
		TTL:         rel.TTL,
	})
	if err != nil {
		return nil, err
	}
	iss, err := tlsIssued(c.KeyPEM, c.CertificatePEM, c.ChainPEM, c.Serial, c.NotAfter)
	if err != nil {
		return &issued{serial: c.Serial}, err // issued by Vault: to revoke
	}
	return iss, nil
}

// readVaultKV reads a vault_kv release: the latest version of a KV
// version 2 secret, released as a SecretCredential. The receipt records
// the version as its serial.
func (r *Releaser) readVaultKV(ctx context.Context, rel policies.Release) (*issued, error) {
	kv, err := r.vault.ReadKV(ctx, rel.Path)
	if err != nil {
		return nil, err
	}
	payload, err := proto.Marshal(&pb.SecretCredential{Data: kv.Data, Path: rel.Path, Version: kv.Version})
	clear(kv.Data)
	if err != nil {
		return nil, err
	}
	return &issued{typ: pb.CredentialType_SECRET, payload: payload, serial: fmt.Sprintf("v%d", kv.Version)}, nil
}

// createVaultToken creates a vault_token release: the token role creates a
// token for the node, bounded by the release's TTL, its metadata naming
// the node's EK hash, the receipt the decision is recorded under and the
// release; released as a VaultTokenCredential. The receipt records the
// token's accessor as its serial, never the token.
func (r *Releaser) createVaultToken(ctx context.Context, rel policies.Release, ekHash, receiptID string) (*issued, error) {
	if rel.Token == nil {
		return nil, errors.New("the release has no token settings")
	}
	t, err := r.vault.CreateToken(ctx, vaultsource.TokenRequest{
		Role:        rel.Token.Role,
		Policies:    rel.Token.Policies,
		TTL:         rel.TTL,
		Period:      rel.Token.Period,
		DisplayName: rel.Token.DisplayName,
		Metadata:    tokenMetadata(ekHash, receiptID, rel.Name),
	})
	if err != nil {
		return nil, err
	}
	if !t.Orphan {
		r.log.Warn("the vault token released is a child of the broker's token: it is revoked with it (set orphan=true on the token role)",
			"release", rel.Name, "role", rel.Token.Role, "accessor", t.Accessor)
	}
	payload, err := proto.Marshal(&pb.VaultTokenCredential{Token: t.Token, Accessor: t.Accessor, Policies: t.Policies, Renewable: t.Renewable})
	if err != nil {
		return &issued{serial: t.Accessor}, err // created: to revoke
	}
	return &issued{typ: pb.CredentialType_VAULT_TOKEN, payload: payload, serial: t.Accessor, notAfter: t.NotAfter}, nil
}

// Metadata keys of the tokens vault_token releases create.
const (
	TokenMetaEKHash    = "keybroker_ek_hash"
	TokenMetaReceiptID = "keybroker_receipt_id"
	TokenMetaRelease   = "keybroker_release"
)

// tokenMetadata is the metadata of a token created for release relName to
// the node of ekHash, in the decision recorded as receiptID: Vault's
// audit log and lookup show which attestation released the token.
func tokenMetadata(ekHash, receiptID, relName string) map[string]string {
	return map[string]string{TokenMetaEKHash: ekHash, TokenMetaReceiptID: receiptID, TokenMetaRelease: relName}
}

// issueNodeSVID issues an x509_svid release: a fresh key and the node's
// X.509-SVID from the SPIFFE authority, with the trust domain's bundle;
// tpm_resident, the SVID for the key the node created in its TPM for the
// release (verified by verify.Verified.WithResidentKeys, and by Release
// against the release's PCRs), with no key in the payload. checkSPIFFE
// has checked that the authority exists and the ID is in its trust
// domain.
func (r *Releaser) issueNodeSVID(v *verify.Verified, rel policies.Release) (*issued, error) {
	if r.spiffe == nil {
		return nil, errors.New("no SPIFFE trust domain is configured")
	}
	var svid *issue.X509SVID
	var err error
	if rel.Mode == policies.ModeTPMResident {
		k := v.ResidentKey(rel.Name)
		if k == nil { // Release checked it first
			return nil, fmt.Errorf("release %q: no resident key offered", rel.Name)
		}
		svid, err = r.spiffe.IssueX509SVIDForKey(rel.SPIFFEID, k.Public(), rel.TTL)
	} else {
		svid, err = r.spiffe.IssueX509SVID(rel.SPIFFEID, rel.TTL)
	}
	if err != nil {
		return nil, err
	}
	defer clear(svid.KeyPEM)
	bundle, err := r.spiffe.BundleJWKS()
	if err != nil {
		return nil, err
	}
	payload, err := proto.Marshal(&pb.X509SVIDCredential{
		SpiffeId:        svid.ID.String(),
		KeyPem:          svid.KeyPEM,
		CertificatesPem: issue.CertificatesPEM(svid.Chain),
		SpiffeBundle:    bundle,
	})
	if err != nil {
		return nil, err
	}
	return &issued{typ: pb.CredentialType_X509_SVID, payload: payload, serial: svid.Serial, notAfter: svid.NotAfter, id: svid.ID}, nil
}

// checkSPIFFE checks, before anything is issued, that the broker can issue
// the SPIFFE identities of a decision: a SPIFFE authority when it has
// x509_svid releases or workload entries, and every ID in its trust
// domain. It returns every problem, for the operator.
func (r *Releaser) checkSPIFFE(d policies.Decision) error {
	var errs []error
	check := func(what string, id spiffeid.ID) {
		switch {
		case r.spiffe == nil:
			errs = append(errs, fmt.Errorf("%s: no SPIFFE trust domain is configured (the spiffe block of broker.hcl)", what))
		case !id.MemberOf(r.spiffe.TrustDomain()):
			errs = append(errs, fmt.Errorf("%s: %s is not in trust domain %s", what, id, r.spiffe.TrustDomain().Name()))
		}
	}
	for _, rel := range d.Releases {
		if rel.Type == policies.TypeX509SVID {
			check(fmt.Sprintf("release %q", rel.Name), rel.SPIFFEID)
		}
	}
	for _, e := range d.WorkloadEntries {
		check(fmt.Sprintf("workload %q", e.Name), e.ID)
	}
	return errors.Join(errs...)
}

// workloadEntries converts a decision's workload entries for the reply,
// and copies them for the node record (policies and the store share the
// type).
func workloadEntries(in []policies.WorkloadEntry) ([]*pb.WorkloadEntry, []store.WorkloadEntry) {
	var out []*pb.WorkloadEntry
	for _, e := range in {
		pe := &pb.WorkloadEntry{Name: e.Name, SpiffeId: e.ID.String(), TtlSeconds: int64(e.TTL / time.Second)}
		for _, sel := range e.Selectors {
			pe.Selectors = append(pe.Selectors, &pb.Selector{Type: sel.Type, Value: sel.Value})
		}
		out = append(out, pe)
	}
	return out, workloadentry.Clone(in)
}
