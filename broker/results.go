package broker

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/ear"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// resultIssuer signs the attestation results of allowed decisions; its
// zero value signs none.
type resultIssuer struct {
	signer *ear.Signer
	ttl    time.Duration
}

func newResultIssuer(signer *ear.Signer, ttl time.Duration) resultIssuer {
	if ttl <= 0 {
		ttl = DefaultAttestationResultTTL
	}
	return resultIssuer{signer: signer, ttl: ttl}
}

// attestationResult returns the signed attestation result of the allowed
// decision o, recorded as rec, with the relying party's nonce; "" without
// a result key. It runs once rec is durable. A result that cannot be
// signed is logged and left out: the decision and its credentials stand.
func (s *Server) attestationResult(o *evidence.Outcome, rec *store.Receipt, nonce []byte) string {
	if s.results.signer == nil {
		return ""
	}
	r, err := ear.FromOutcome(o, rec.ID, nonce, s.now(), s.results.ttl)
	if err == nil {
		var token string
		if token, err = s.results.signer.Sign(r); err == nil {
			return token
		}
	}
	s.log.Error("attestation result not issued", "receipt", rec.ID, "ek", rec.EKHash, "error", err)
	return ""
}

// GetAttestationResultKeys implements keybroker.v1.Broker: the JWKS of the
// attestation result key, without authentication (it holds only a public
// key).
func (s *Server) GetAttestationResultKeys(context.Context, *pb.GetAttestationResultKeysRequest) (*pb.GetAttestationResultKeysResponse, error) {
	if s.results.signer == nil {
		return nil, status.Error(codes.FailedPrecondition, "attestation results are not configured on this broker (attestation_results block)")
	}
	jwks, err := s.results.signer.JWKS()
	if err != nil {
		s.log.Error("unable to encode the attestation result keys", "error", err)
		return nil, status.Error(codes.Internal, "internal error: unable to encode the attestation result keys")
	}
	return &pb.GetAttestationResultKeysResponse{Jwks: jwks}, nil
}
