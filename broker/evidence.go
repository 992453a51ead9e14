package broker

import (
	"time"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/challenge"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// evidenceOf is what a node presented: its challenge request, as kept with
// the challenge, and its answer, received at at.
func evidenceOf(ch challenge.Challenge, req *pb.AttestRequest, at time.Time) attestation.Evidence {
	ev := attestation.Evidence{
		Time:            at,
		ChallengeID:     ch.ID,
		EKPublic:        ch.EKPublic,
		EKCertificate:   ch.EKCertificate,
		EKIntermediates: ch.EKIntermediates,
		AKPublic:        ch.AKPublic,
		SecretHash:      ch.SecretHash,
		EventLog:        req.GetEventLog(),
		IdentityLog:     req.GetIdentityLog(),
	}
	for _, q := range req.GetQuotes() {
		ev.Quotes = append(ev.Quotes, attestation.Quote{
			Attest:    q.GetAttest(),
			Signature: q.GetSignature(),
			Bank:      uint16(q.GetPcrs().GetHashAlg()),
			PCRs:      q.GetPcrs().GetValues(),
		})
	}
	for _, k := range req.GetResidentKeys() {
		ev.ResidentKeys = append(ev.ResidentKeys, attestation.ResidentKey{
			Name: k.GetName(), Public: k.GetPublic(), CertifyInfo: k.GetCertifyInfo(), Signature: k.GetSignature(),
		})
	}
	return ev
}
