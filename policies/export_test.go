package policies

import "github.com/keybroker/keybroker/broker/verify"

// EvaluatedFacts returns the facts Evaluate presents to CEL for v, with the
// labels s gives it, in the form of Facts.
func EvaluatedFacts(s *Set, v *verify.Verified) map[string]any {
	f := newFactSet(v, s.labels[v.EKHash()], false)
	return map[string]any{
		"eventlog": f.eventlog, "identities": f.identities, "node": f.node, "history": f.history,
		"ek": f.ek, "pcrs": f.pcrs, "tpm": f.tpm,
	}
}
