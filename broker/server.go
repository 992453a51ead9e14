// Package broker wires keybroker's release pipeline behind the gRPC API:
// challenge → verify → evaluate → issue → seal → receipt → reply. Each step
// lives in its own package; this one only connects them and translates their
// outcomes into gRPC status codes.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// API input limits beyond those verify enforces.
const (
	maxChallengeIDSize = 64
	maxPCRValueSize    = 64
)

// Server implements keybroker.v1.Broker.
type Server struct {
	pb.UnimplementedBrokerServer

	trust      verify.Trust
	quoteOpts  verify.QuoteOpts
	store      store.Store
	challenges *challenge.Issuer
	policies   atomic.Pointer[policies.Set]
	ca         *issue.CA
	log        *slog.Logger
}

// ServerOpts hold what a Server needs. Store, CA and Policies are required.
type ServerOpts struct {
	Trust        verify.Trust
	AllowSHA1    bool
	ChallengeTTL time.Duration
	Store        store.Store
	CA           *issue.CA
	Policies     *policies.Set
	Logger       *slog.Logger // default: discard
	// Now returns the current time; default time.Now. Tests move it to
	// expire challenges.
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
	s := &Server{
		trust:      opts.Trust,
		quoteOpts:  verify.QuoteOpts{AllowSHA1: opts.AllowSHA1},
		store:      opts.Store,
		challenges: challenge.New(opts.Store, challenge.Opts{TTL: opts.ChallengeTTL, Now: opts.Now}),
		ca:         opts.CA,
		log:        opts.Logger,
	}
	s.trust.AllowSHA1 = opts.AllowSHA1
	s.policies.Store(opts.Policies)
	return s, nil
}

// SetPolicies replaces the policy set; requests already past evaluation are
// unaffected.
func (s *Server) SetPolicies(p *policies.Set) { s.policies.Store(p) }

// Challenge implements keybroker.v1.Broker.
func (s *Server) Challenge(ctx context.Context, req *pb.ChallengeRequest) (*pb.ChallengeResponse, error) {
	node, err := verify.Node(req.GetEkPublic(), req.GetEkCertificate(), req.GetEkIntermediates(), req.GetAkPublic(), s.trust)
	if err != nil {
		s.log.Warn("challenge refused", "check", verify.FailedCheck(err), "error", err)
		return nil, checkStatus(err)
	}
	issued, err := s.challenges.Issue(ctx, node, challenge.Evidence{
		EKPublic:        req.GetEkPublic(),
		EKCertificate:   req.GetEkCertificate(),
		EKIntermediates: req.GetEkIntermediates(),
		AKPublic:        req.GetAkPublic(),
	})
	if err != nil {
		s.log.Error("challenge failed", "ek", node.EKHash(), "error", err)
		return nil, status.Error(codes.Internal, "unable to issue a challenge")
	}
	s.log.Info("challenge issued", "ek", node.EKHash(), "expires", issued.ExpiresAt)
	return &pb.ChallengeResponse{
		ChallengeId:     issued.ID,
		CredentialBlob:  issued.CredentialBlob,
		EncryptedSecret: issued.EncryptedSecret,
		ExpiresUnix:     issued.ExpiresAt.Unix(),
	}, nil
}

// Attest implements keybroker.v1.Broker. Whatever the outcome once the
// challenge is found, the challenge is consumed and a receipt written in one
// durable commit, and nothing is returned before it is durable. Of concurrent
// answers to one challenge, only the one that consumes it is answered. When
// the answer verified, TPM counters included (allowed, or denied by policy),
// the node's record (counters and evidence) is replaced in that same commit;
// a refusal before policy leaves it as it was.
func (s *Server) Attest(ctx context.Context, req *pb.AttestRequest) (*pb.AttestResponse, error) {
	if err := checkAttestRequest(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, "input: "+err.Error())
	}
	ch, err := s.challenges.Lookup(ctx, req.GetChallengeId())
	switch {
	case errors.Is(err, challenge.ErrUnknown):
		return nil, status.Error(codes.PermissionDenied, "challenge: "+err.Error())
	case errors.Is(err, challenge.ErrExpired):
		return nil, status.Error(codes.DeadlineExceeded, "challenge: "+err.Error())
	case err != nil:
		s.log.Error("attest failed", "error", err)
		return nil, status.Error(codes.Internal, "unable to look up the challenge")
	}
	rec := &store.Receipt{Time: time.Now().UTC(), ChallengeID: ch.ID}
	resp, node, refusal := s.attest(ctx, ch, req, rec)
	if refusal != nil {
		rec.Allowed, rec.Check = false, refusal.check
		resp = nil
	}
	err = s.challenges.Consume(ctx, ch.ID, rec, node)
	switch {
	case errors.Is(err, challenge.ErrUnknown):
		// A concurrent Attest consumed the challenge and recorded its
		// decision first; this one has no receipt and releases nothing.
		s.log.Warn("challenge used by a concurrent attestation; nothing released", "challenge", ch.ID, "ek", rec.EKHash)
		return nil, status.Error(codes.PermissionDenied, "challenge: "+err.Error())
	case err != nil:
		s.log.Error("receipt not written; nothing released", "challenge", ch.ID, "error", err)
		return nil, status.Error(codes.Internal, "unable to record the decision; nothing was released")
	}
	if refusal != nil {
		s.log.Warn("attestation refused", "receipt", rec.ID, "ek", rec.EKHash, "check", refusal.check, "failures", rec.Failures, "error", refusal.cause)
		return nil, status.Errorf(refusal.code, "%s (receipt %s)", refusal.msg, rec.ID)
	}
	s.log.Info("credentials released", "receipt", rec.ID, "ek", rec.EKHash, "policies", rec.Policies, "released", len(rec.Released))
	resp.ReceiptId = rec.ID
	return resp, nil
}

// refusal is why an attestation released nothing: code and msg go to the
// node, check and cause to the operator.
type refusal struct {
	code  codes.Code
	check string
	msg   string
	cause error
}

// attest verifies the answer to ch and decides. Once the answer verified
// (TPM counters included), it returns the node's new record, also when
// policy then denies, so that the record is written with the receipt.
func (s *Server) attest(ctx context.Context, ch store.Challenge, req *pb.AttestRequest, rec *store.Receipt) (*pb.AttestResponse, *store.NodeRecord, *refusal) {
	ev := evidenceOf(ch, req, rec.Time)
	node, v, err := verifyEvidence(ev, s.trust, s.quoteOpts)
	if node != nil {
		rec.EKHash, rec.AKName = node.EKHash(), node.AKName()
	}
	if err != nil {
		return nil, nil, checkRefusal(err)
	}
	digest := v.QuoteDigest()
	rec.QuoteDigest = digest[:]

	var prev *store.NodeRecord
	switch p, err := s.store.GetNode(ctx, node.EKHash()); {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, nil, &refusal{code: codes.Internal, check: "internal", msg: "internal error", cause: err}
	default:
		prev = &p
		c := p.Counters()
		ev.Previous = &c
	}
	v, akChanged, err := withHistory(v, ev.Previous)
	if err != nil {
		return nil, nil, checkRefusal(err)
	}
	if akChanged {
		s.log.Warn("node attested with another AK than last time; its TPM counters cannot be compared", "ek", node.EKHash())
	}
	nodeRec := nodeRecord(v, prev, ev)

	pol := s.policies.Load()
	d := pol.Evaluate(v)
	rec.Policies, rec.PolicyHash, rec.Failures = d.Policies, d.PolicyHash, d.Failures
	if !d.Allowed {
		return nil, nodeRec, &refusal{code: codes.PermissionDenied, check: "policy", msg: "policy: no policy allows this node"}
	}

	ekKey, err := tpm2.Pub(*node.EKPublic())
	if err != nil {
		return nil, nodeRec, &refusal{code: codes.Internal, check: "release", msg: "release: unable to use the EK", cause: err}
	}
	resp := &pb.AttestResponse{}
	var released []store.ReleasedItem
	for _, rel := range d.Releases {
		cred, item, err := s.release(v, ekKey, rel)
		if err != nil {
			return nil, nodeRec, &refusal{code: codes.Internal, check: "release", msg: fmt.Sprintf("release: unable to release %q", rel.Name), cause: err}
		}
		resp.Credentials = append(resp.Credentials, cred)
		released = append(released, item)
	}
	rec.Allowed, rec.Released = true, released
	return resp, nodeRec, nil
}

// release issues one credential and wraps it to the node's EK.
func (s *Server) release(v *verify.Verified, ekKey any, rel policies.Release) (*pb.Credential, store.ReleasedItem, error) {
	item := store.ReleasedItem{Name: rel.Name, Type: rel.Type, Mode: string(rel.Mode)}
	if rel.Type != "tls_certificate" {
		return nil, item, fmt.Errorf("release type %q is not supported", rel.Type)
	}
	tc, err := s.ca.IssueTLS(issue.TLSTemplate{
		CommonName:  rel.CommonName,
		DNSNames:    rel.DNSNames,
		IPAddresses: rel.IPAddresses,
		TTL:         rel.TTL,
	})
	if err != nil {
		return nil, item, err
	}
	payload, err := proto.Marshal(&pb.TLSCredential{KeyPem: tc.KeyPEM, CertificatePem: tc.CertificatePEM, ChainPem: tc.ChainPEM})
	clear(tc.KeyPEM)
	if err != nil {
		return nil, item, err
	}
	defer clear(payload)
	mode := pb.ReleaseMode_TPM_BOUND
	var pcrs *tpmpb.PCRs
	if rel.Mode == policies.ModePCRSealed {
		mode = pb.ReleaseMode_PCR_SEALED
		values := v.PCRs(rel.PCRBank)
		pcrs = &tpmpb.PCRs{Hash: tpmpb.HashAlgo(rel.PCRBank), Pcrs: map[uint32][]byte{}}
		for _, idx := range rel.PCRs {
			val, ok := values[idx]
			if !ok {
				return nil, item, fmt.Errorf("PCR %s:%d was not quoted", verify.BankName(rel.PCRBank), idx)
			}
			pcrs.Pcrs[idx] = val
		}
		item.PCRBank, item.PCRs = verify.BankName(rel.PCRBank), rel.PCRs
	}
	env, err := sealing.Wrap(ekKey, payload, sealing.WrapOpts{PCRs: pcrs, KeyID: rel.Name})
	if err != nil {
		return nil, item, err
	}
	item.Serial, item.NotAfter = tc.Serial, tc.NotAfter
	cred := &pb.Credential{
		Name: rel.Name,
		Type: pb.CredentialType_TLS_CERTIFICATE,
		Mode: mode,
		Blob: &pb.ImportBlob{
			Duplicate:     env.Blob.GetDuplicate(),
			EncryptedSeed: env.Blob.GetEncryptedSeed(),
			PublicArea:    env.Blob.GetPublicArea(),
		},
		Jwe:          env.JWE,
		NotAfterUnix: tc.NotAfter.Unix(),
	}
	if pcrs != nil {
		cred.Blob.Pcrs = &pb.PCRValues{HashAlg: uint32(pcrs.GetHash()), Values: pcrs.GetPcrs()}
	}
	return cred, item, nil
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
