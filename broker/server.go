// Package broker wires keybroker's release pipeline behind the gRPC API:
// challenge → verify → evaluate → issue → seal → receipt → reply. Each step
// lives in its own package; this one only connects them and translates their
// outcomes into gRPC status codes. With a SPIFFE authority it also signs
// workload SVIDs for attested nodes that authenticate with their node
// X.509-SVID over mutual TLS (workload.go).
package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/ear"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/kube"
	"github.com/keybroker/keybroker/broker/metrics"
	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/broker/release"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/vaultsource"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/idlog"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// API input limits beyond those verify enforces.
const (
	maxChallengeIDSize = 256
	maxPCRValueSize    = 64
)

// Server implements keybroker.v1.Broker.
type Server struct {
	pb.UnimplementedBrokerServer

	verify    verify.Opts // indexed
	decisions store.Decisions
	nodes     store.Nodes
	// previous reads the record a decision builds on: without its
	// evidence where the store can (store.NodeHeads).
	previous   func(ctx context.Context, ekHash string) (store.NodeRecord, error)
	approvals  store.PCRApprovals
	challenges *challenge.Issuer
	admission  *admission
	policies   atomic.Pointer[policies.Set]
	banks      []uint32 // the banks whose quotes count, for ChallengeResponse.pcr_banks
	releaser   *release.Releaser
	spiffe     *issue.SPIFFE   // nil: SPIFFE is not configured
	kube       *kube.Client    // nil: no quarantine
	results    resultIssuer    // attestation results (results.go)
	metrics    *metrics.Broker // nil: no metrics
	now        func() time.Time
	log        *slog.Logger
}

// ServerOpts hold what a Server needs. Store, CA and Policies are required.
type ServerOpts struct {
	// Verify configures every check of the nodes' evidence (trusted EKs,
	// SHA-1, the banks whose quotes count).
	Verify       verify.Opts
	ChallengeTTL time.Duration
	// ChallengeKeyRotation is how long a challenge key seals; default
	// challenge.DefaultKeyRotation.
	ChallengeKeyRotation time.Duration
	Store                store.Backend
	CA                   *issue.CA
	Policies             *policies.Set
	// SPIFFE is the trust domain's authority. Nil (the default) refuses
	// x509_svid releases and workload entries, and the workload SVID and
	// bundle RPCs.
	SPIFFE *issue.SPIFFE
	// Vault is the source of vault_kv, vault_pki and vault_token releases. Nil (the
	// default) refuses them.
	Vault *vaultsource.Client
	// Kubernetes is the cluster kubelet releases join. Nil (the default)
	// refuses them.
	Kubernetes *release.Kubernetes
	// Limits are the admission limits on Challenge and Attest; the zero
	// value limits nothing (Start passes the configuration's).
	Limits LimitsConfig
	// Results, if set, signs an attestation result for each allowed
	// decision (AttestResponse.attestation_result), valid for ResultTTL
	// (default DefaultAttestationResultTTL). Nil (the default): none.
	Results   *ear.Signer
	ResultTTL time.Duration
	// PCRPolicy signs the approvals of pcr_policy "authorized" releases.
	// Nil (the default) refuses them.
	PCRPolicy *pcrpolicy.Signer
	// Metrics, if set, counts and times what the server does.
	Metrics *metrics.Broker
	Logger  *slog.Logger // default: discard
	// Now returns the current time; default time.Now. Tests move it to
	// expire challenges and node SVIDs.
	Now func() time.Time
}

// NewServer returns a Server.
func NewServer(opts ServerOpts) (*Server, error) {
	switch {
	case opts.Store == nil:
		return nil, errors.New("store cannot be nil")
	case opts.CA == nil:
		return nil, errors.New("CA cannot be nil")
	case opts.Policies == nil:
		return nil, errors.New("policies cannot be nil")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		verify:    opts.Verify.Index(),
		decisions: opts.Store,
		nodes:     opts.Store,
		approvals: opts.Store,
		admission: newAdmission(opts.Limits),
		spiffe:    opts.SPIFFE,
		results:   newResultIssuer(opts.Results, opts.ResultTTL),
		metrics:   opts.Metrics,
		now:       opts.Now,
		log:       opts.Logger,
	}
	s.previous = s.nodes.GetNode
	if h, ok := opts.Store.(store.NodeHeads); ok {
		s.previous = h.GetNodeHead
	}
	var err error
	if s.releaser, err = release.New(release.Opts{CA: opts.CA, SPIFFE: opts.SPIFFE, Vault: opts.Vault, Kubernetes: opts.Kubernetes, Logger: opts.Logger,
		Observe: opts.Metrics.ReleaseStage, PCRPolicy: opts.PCRPolicy}); err != nil {
		return nil, err
	}
	for _, b := range opts.Verify.Banks {
		s.banks = append(s.banks, uint32(b))
	}
	// Each challenge carries the node's vouch under s.verify, so that
	// Attest on this Server verifies the node once per challenge.
	s.challenges = challenge.New(opts.Store, challenge.Opts{TTL: opts.ChallengeTTL, KeyRotation: opts.ChallengeKeyRotation,
		Now: opts.Now, Epoch: s.verify.Trust.Epoch()})
	s.admission.metrics = opts.Metrics
	s.policies.Store(opts.Policies)
	if opts.Kubernetes != nil {
		s.kube = opts.Kubernetes.API
	}
	return s, nil
}

// SetPolicies replaces the policy set; requests already past evaluation are
// unaffected.
func (s *Server) SetPolicies(p *policies.Set) { s.policies.Store(p) }

// Challenge implements keybroker.v1.Broker.
func (s *Server) Challenge(ctx context.Context, req *pb.ChallengeRequest) (*pb.ChallengeResponse, error) {
	if err := s.admission.admitAddress(ctx, opChallenge); err != nil {
		return nil, err
	}
	node, err := verify.Node(req.GetEkPublic(), req.GetEkCertificate(), req.GetEkIntermediates(), req.GetAkPublic(), s.verify)
	if err != nil {
		s.log.Warn("challenge refused", "check", verify.FailedCheck(err), "error", err)
		s.metrics.ChallengeRefused(checkRefusal(err).check)
		return nil, checkStatus(err)
	}
	if err := s.admitChallenge(node.EKHash()); err != nil {
		s.log.Warn("challenge refused: too many requests", "ek", node.EKHash(), "error", err)
		return nil, err
	}
	issued, err := s.challenges.Issue(ctx, node, challenge.Evidence{
		EKPublic:        req.GetEkPublic(),
		EKCertificate:   req.GetEkCertificate(),
		EKIntermediates: req.GetEkIntermediates(),
		AKPublic:        req.GetAkPublic(),
	})
	if err != nil {
		s.log.Error("challenge failed", "ek", node.EKHash(), "error", err)
		s.metrics.ChallengeRefused("internal")
		return nil, status.Error(codes.Internal, "unable to issue a challenge")
	}
	s.metrics.ChallengeIssued()
	if s.metrics != nil { // IDOf digests the token: not without metrics
		s.metrics.ChallengeOutstanding(challenge.IDOf(issued.ID), issued.ExpiresAt)
	}
	s.log.Debug("challenge issued", "ek", node.EKHash(), "expires", issued.ExpiresAt)
	return &pb.ChallengeResponse{
		ChallengeId:     issued.ID,
		CredentialBlob:  issued.CredentialBlob,
		EncryptedSecret: issued.EncryptedSecret,
		ExpiresUnix:     issued.ExpiresAt.Unix(),
		PcrBanks:        s.banks,
	}, nil
}

// Attest implements keybroker.v1.Broker. Whatever the outcome once the
// challenge is opened, expired or not, the challenge is used up and a
// receipt written in one durable transaction (store.Decisions.Record), and
// nothing is returned before it is durable. Of concurrent answers to one
// challenge, on any replica, only the one whose decision is recorded first
// is answered. When the answer verified, TPM counters included (allowed, or
// denied by policy), the node's record (counters and evidence) is replaced
// in that same transaction; a refusal before policy leaves it as it was.
func (s *Server) Attest(ctx context.Context, req *pb.AttestRequest) (*pb.AttestResponse, error) {
	if err := checkAttestRequest(req); err != nil {
		s.metrics.Attestation(metrics.Refused, "input")
		return nil, status.Error(codes.InvalidArgument, "input: "+err.Error())
	}
	if err := s.admission.admitAddress(ctx, opAttest); err != nil {
		return nil, err
	}
	stages := s.metrics.Stages()
	ch, err := s.challenges.Open(ctx, req.GetChallengeId(), challenge.Evidence{
		EKPublic:        req.GetEkPublic(),
		EKCertificate:   req.GetEkCertificate(),
		EKIntermediates: req.GetEkIntermediates(),
		AKPublic:        req.GetAkPublic(),
	})
	stages.Done(metrics.StageOpen)
	expired := errors.Is(err, challenge.ErrExpired)
	switch {
	case errors.Is(err, challenge.ErrUnknown), errors.Is(err, challenge.ErrMismatch):
		s.metrics.Attestation(metrics.Refused, "challenge")
		return nil, status.Error(codes.PermissionDenied, "challenge: "+err.Error())
	case expired && s.now().After(ch.ExpiresAt.Add(challenge.MaxTTL)):
		// Long expired: refused without a receipt, so that replaying an old
		// token cannot make the broker write at will.
		s.metrics.Attestation(metrics.Refused, "challenge")
		return nil, status.Error(codes.DeadlineExceeded, "challenge: "+challenge.ErrExpired.Error())
	case err != nil && !expired:
		s.log.Error("attest failed", "error", err)
		return nil, status.Error(codes.Unavailable, "unable to open the challenge: the store is unavailable")
	}
	s.metrics.ChallengeAnswered(ch.ID)
	// Per EK (by its public area's digest: the challenge vouches for it):
	// a refusal here uses nothing up, the challenge can be answered again.
	ekKey := sha256.Sum256(req.GetEkPublic())
	if err := s.admission.admitEK(opAttest, hex.EncodeToString(ekKey[:])); err != nil {
		return nil, err
	}
	// A replayed answer is refused before any work (and before a Vault
	// certificate is issued for it); Record still decides between
	// concurrent answers.
	switch used, err := s.decisions.Used(ctx, ch.ID); {
	case err != nil:
		s.log.Error("attest failed", "error", err)
		return nil, status.Error(codes.Unavailable, "unable to read the challenge's state: the store is unavailable")
	case used:
		s.metrics.Attestation(metrics.Refused, "challenge")
		return nil, status.Error(codes.PermissionDenied, "challenge: "+challenge.ErrUnknown.Error())
	case expired:
		// Recorded once (the receipt's marker makes a replay "used").
		return nil, s.refuseExpired(ctx, ch)
	}
	// The receipt's ID is known before release: tokens Vault creates for
	// the decision name it.
	now := time.Now().UTC()
	rec := &store.Receipt{ID: store.NewReceiptID(now), Time: now, ChallengeID: ch.ID}
	// What the decision released: what Vault issued for it is revoked if
	// the decision cannot be recorded.
	var released *release.Released
	var outcome *evidence.Outcome
	resp, node, refusal := s.attest(ctx, ch, req, rec, &released, &outcome)
	node = s.quarantine(ctx, rec, outcome, node, refusal)
	d := &store.Decision{ChallengeID: ch.ID, ChallengeExpiry: ch.ExpiresAt, Receipt: rec, Node: node}
	switch {
	case refusal != nil:
		rec.Allowed, rec.Check = false, refusal.check
		if refusal.deny && rec.EKHash != "" {
			d.Deny = store.DenyAdd
		}
		resp = nil
	case rec.EKHash != "":
		d.Deny = store.DenyRemove
	}
	if err := s.record(ctx, d); err != nil {
		if refusal == nil {
			rec.Failures = append(rec.Failures, s.releaser.Unrelease(ctx, released)...)
		}
		return nil, err
	}
	if refusal != nil {
		s.log.Warn("attestation refused", "receipt", rec.ID, "ek", rec.EKHash, "check", refusal.check, "failures", rec.Failures,
			"deny_listed", rec.DenyListed, "error", refusal.cause)
		return nil, refusal.status(rec.ID)
	}
	s.log.Info("credentials released", "receipt", rec.ID, "ek", rec.EKHash, "policies", rec.Policies, "released", len(rec.Released))
	resp.ReceiptId = rec.ID
	resp.AttestationResult = s.attestationResult(outcome, rec, req.GetRelyingPartyNonce())
	return resp, nil
}

// admitChallenge applies the per-EK limits of a challenge: the rate, then
// the budget of challenges the EK may hold.
func (s *Server) admitChallenge(ekHash string) error {
	if err := s.admission.admitEK(opChallenge, ekHash); err != nil {
		return err
	}
	return s.admission.admitOutstanding(ekHash)
}

// record records d, translating the store's failures: a challenge used by
// a concurrent answer, or a store that cannot take the write. Either way
// nothing is released.
func (s *Server) record(ctx context.Context, d *store.Decision) error {
	start := time.Now()
	err := s.decisions.Record(ctx, d)
	s.observeRecord(d, err, time.Since(start))
	switch {
	case errors.Is(err, store.ErrConsumed):
		s.log.Warn("challenge used by a concurrent attestation; nothing released", "challenge", d.ChallengeID, "ek", d.Receipt.EKHash)
		return status.Error(codes.PermissionDenied, "challenge: "+challenge.ErrUnknown.Error())
	case err != nil:
		s.log.Error("receipt not written; nothing released", "challenge", d.ChallengeID, "error", err)
		return status.Error(codes.Unavailable, "unable to record the decision (the store is unavailable); nothing was released")
	}
	return nil
}

// observeRecord counts the attestation decided by d, and observes took,
// the time Record took, by how it ended (err).
func (s *Server) observeRecord(d *store.Decision, err error, took time.Duration) {
	switch {
	case errors.Is(err, store.ErrConsumed):
		s.metrics.Commit("consumed", took)
		s.metrics.Attestation(metrics.Refused, "challenge")
	case err != nil:
		s.metrics.Commit("error", took)
		s.metrics.Attestation(metrics.Failed, "store")
	case d.Receipt.Allowed:
		s.metrics.Commit("ok", took)
		s.metrics.Attestation(metrics.Released, "")
	default:
		s.metrics.Commit("ok", took)
		s.metrics.Attestation(metrics.Refused, d.Receipt.Check)
	}
}

// refuseExpired records the refusal of the expired challenge ch (check
// "challenge"), naming the node when its EK and AK still verify, and
// returns the refusal. Nothing of the answer is recorded: it is not
// verified, and its quotes may carry the activated secret.
func (s *Server) refuseExpired(ctx context.Context, ch challenge.Challenge) error {
	rec := &store.Receipt{Time: time.Now().UTC(), ChallengeID: ch.ID, Check: "challenge",
		Failures: []string{"challenge expired at " + ch.ExpiresAt.UTC().Format(time.RFC3339)}}
	if node, err := verify.Node(ch.EKPublic, ch.EKCertificate, ch.EKIntermediates, ch.AKPublic, s.verify); err == nil {
		rec.EKHash, rec.AKName = node.EKHash(), node.AKName()
	}
	if err := s.record(ctx, &store.Decision{ChallengeID: ch.ID, ChallengeExpiry: ch.ExpiresAt, Receipt: rec}); err != nil {
		return err
	}
	s.log.Warn("attestation refused", "receipt", rec.ID, "ek", rec.EKHash, "check", rec.Check, "failures", rec.Failures)
	return status.Errorf(codes.DeadlineExceeded, "challenge: %s (receipt %s)", challenge.ErrExpired, rec.ID)
}

// refusal is why an attestation released nothing: code and msg go to the
// node, check and cause to the operator. deny puts the node on the deny
// list (see denies).
type refusal struct {
	code  codes.Code
	check string
	msg   string
	cause error
	deny  bool
	// counterMin, when not 0, is the version the node's policy counter
	// must reach (takePolicyCounter): sent with the refusal, as an
	// AttestResponse with only policy_counter_min in the status details.
	counterMin uint64
}

// status is r as the gRPC status the node receives for receipt id.
func (r *refusal) status(id string) error {
	st := status.Newf(r.code, "%s (receipt %s)", r.msg, id)
	if r.counterMin > 0 {
		if d, err := st.WithDetails(&pb.AttestResponse{PolicyCounterMin: r.counterMin}); err == nil {
			st = d
		}
	}
	return st.Err()
}

// denies marks r as putting the node on the deny list: the refusal came
// after the node's TPM proved it answered the challenge (verify.FromTPM;
// every refusal after verification: counters, policy, release), so it is
// about the node. A refusal before that proof (untrusted EK, wrong nonce,
// another key's signature) may come from anyone who knows the node's
// public EK and must not deny-list it, and an internal fault says nothing
// about the node.
func denies(r *refusal) *refusal {
	if r.check != "internal" {
		r.deny = true
	}
	return r
}

// attest verifies the answer to ch and decides. Once the answer verified
// (TPM counters included), it returns the node's new record, also when
// policy then denies, so that the record is written with the receipt.
func (s *Server) attest(ctx context.Context, ch challenge.Challenge, req *pb.AttestRequest, rec *store.Receipt, released **release.Released, outcome **evidence.Outcome) (*pb.AttestResponse, *store.NodeRecord, *refusal) {
	stages := s.metrics.Stages()
	o := evidence.Decide(evidence.Inputs{
		Evidence: evidenceOf(ch, req, rec.Time),
		Vouch:    ch.Vouch,
		Opts:     s.verify,
		Policies: s.policies.Load(),
		Previous: func(ek string) (store.NodeRecord, error) { return s.previous(ctx, ek) },
		Stage:    stages.Done,
	})
	o.FillReceipt(rec)
	*outcome = o
	if o.AKChanged {
		s.log.Warn("node attested with another AK than last time; its TPM counters cannot be compared", "ek", rec.EKHash)
	}
	// The policy counter is taken before the decision: a node refused
	// after a revocation must still advance its counter past the
	// approvals it holds (refusal.counterMin).
	pc, pcErr := s.takePolicyCounter(ctx, req.GetPolicyCounter(), o.NodeRecord)
	withCounter := func(r *refusal) *refusal {
		if pc != nil {
			r.counterMin = pc.version
		}
		return r
	}
	if r := o.Refusal; r != nil {
		return nil, o.NodeRecord, withCounter(decisionRefusal(r))
	}
	v, d, nodeRec := o.Verified, o.Decision, o.NodeRecord
	if pcErr != nil {
		rec.Failures = append(rec.Failures, pcErr.Error())
		return nil, nodeRec, counterRefusal(pcErr)
	}
	out, err := s.releaser.ReleaseFor(ctx, v, d, rec.ID, policyNode(pc, d))
	var f *release.Failure
	switch {
	case errors.As(err, &f):
		rec.Failures = append(rec.Failures, f.Notes...)
		return nil, nodeRec, withCounter(releaseRefusal(f))
	case err != nil:
		return nil, nodeRec, withCounter(denies(&refusal{code: codes.Internal, check: "release", msg: "release: internal error", cause: err}))
	}
	*released = out
	resp := &pb.AttestResponse{Credentials: out.Credentials, WorkloadEntries: out.WorkloadEntries, WorkloadTrust: out.WorkloadTrust, PcrApprovals: out.Approvals}
	if pc != nil {
		resp.PolicyCounterMin = pc.version
	}
	nodeRec.WorkloadEntries, nodeRec.SVIDs = out.NodeEntries, out.SVIDs
	rec.Allowed, rec.Released = true, out.Items
	stages.Done(metrics.StageRelease)
	return resp, nodeRec, nil
}

// counterRefusal is the refusal of a node whose policy counter the broker
// cannot take (takePolicyCounter): another counter than the pinned one, a
// value out of bounds, or the approvals unreadable.
func counterRefusal(err error) *refusal {
	r := &refusal{code: codes.FailedPrecondition, check: "release", cause: err}
	switch {
	case errors.Is(err, errCounterChanged):
		r.msg = "release: " + errCounterChanged.Error()
	case errors.Is(err, pcrpolicy.ErrCounter):
		r.msg = "release: the policy counter's value is out of bounds"
	default:
		r.code, r.msg = codes.Unavailable, "release: unable to read the PCR-policy approvals"
	}
	return r
}

// decisionRefusal is the gRPC refusal of a decision that allows nothing.
func decisionRefusal(r *evidence.Refusal) *refusal {
	var out *refusal
	switch r.Check {
	case evidence.CheckPolicy:
		out = &refusal{code: codes.PermissionDenied, check: r.Check, msg: "policy: no policy allows this node"}
	case evidence.CheckInternal:
		out = &refusal{code: codes.Internal, check: r.Check, msg: "internal error", cause: r.Err}
	default:
		out = checkRefusal(r.Err)
	}
	out.deny = r.Deny
	return out
}

// releaseRefusal is the refusal of a decision that could not be released.
// Vault refusing or unreachable, or not configured, says nothing of the
// node; a SPIFFE identity the broker cannot issue, or a release failing to
// be issued or sealed, deny-lists it (see denies).
func releaseRefusal(f *release.Failure) *refusal {
	r := &refusal{code: codes.FailedPrecondition, check: "release", msg: f.Msg, cause: f.Cause}
	switch f.Kind {
	case release.KindSPIFFE:
		return denies(r)
	case release.KindNoVault, release.KindVaultRefused, release.KindNoKubernetes, release.KindNoResidentKey, release.KindNoPolicyCounter:
		return r
	case release.KindVaultUnavailable:
		r.code = codes.Unavailable
		return r
	}
	r.code = codes.Internal
	return denies(r)
}

// checkStatus maps a verify error to a gRPC status naming the failed check.
func checkStatus(err error) error {
	r := checkRefusal(err)
	return status.Error(r.code, r.msg)
}

func checkRefusal(err error) *refusal {
	var ce *verify.CheckError
	if !errors.As(err, &ce) {
		return &refusal{code: codes.Internal, check: "internal", msg: "internal error", cause: err}
	}
	code := codes.PermissionDenied
	if ce.Check == verify.CheckInput {
		code = codes.InvalidArgument
	}
	return &refusal{code: code, check: string(ce.Check), msg: string(ce.Check) + ": " + ce.Msg, cause: err}
}

// checkAttestRequest enforces the API's size limits before any work.
func checkAttestRequest(req *pb.AttestRequest) error {
	switch {
	case req.GetChallengeId() == "":
		return errors.New("challenge_id is empty")
	case len(req.GetChallengeId()) > maxChallengeIDSize:
		return errors.New("challenge_id is too long")
	case len(req.GetQuotes()) == 0:
		return errors.New("no quotes")
	case len(req.GetQuotes()) > verify.MaxQuotes:
		return fmt.Errorf("at most %d quotes", verify.MaxQuotes)
	case len(req.GetEventLog()) > verify.MaxEventLogSize:
		return fmt.Errorf("event_log exceeds %d bytes", verify.MaxEventLogSize)
	case len(req.GetIdentityLog()) > idlog.MaxSize:
		return fmt.Errorf("identity_log exceeds %d bytes", idlog.MaxSize)
	case len(req.GetResidentKeys()) > verify.MaxResidentKeys:
		return fmt.Errorf("at most %d resident keys", verify.MaxResidentKeys)
	}
	for _, k := range req.GetResidentKeys() {
		if len(k.GetName()) > verify.MaxResidentKeyNameSize || len(k.GetPublic()) > verify.MaxPublicSize ||
			len(k.GetCertifyInfo()) > verify.MaxCertifyAttestSize || len(k.GetSignature()) > verify.MaxSignatureSize {
			return errors.New("a resident key exceeds its size limits")
		}
	}
	if err := ear.CheckNonce(req.GetRelyingPartyNonce()); err != nil {
		return err
	}
	if err := checkPolicyCounter(req.GetPolicyCounter()); err != nil {
		return err
	}
	for _, q := range req.GetQuotes() {
		switch {
		case len(q.GetAttest()) > verify.MaxQuoteAttestSize:
			return fmt.Errorf("quote attest exceeds %d bytes", verify.MaxQuoteAttestSize)
		case len(q.GetSignature()) > verify.MaxSignatureSize:
			return fmt.Errorf("quote signature exceeds %d bytes", verify.MaxSignatureSize)
		case len(q.GetPcrs().GetValues()) > 24:
			return errors.New("more than 24 PCR values in a quote")
		}
		for _, v := range q.GetPcrs().GetValues() {
			if len(v) > maxPCRValueSize {
				return errors.New("a PCR value exceeds 64 bytes")
			}
		}
	}
	return nil
}
