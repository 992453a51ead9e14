// Package refusaltest is one table of wrong answers to a challenge, with
// the check that refuses each, for every front end of the decision
// pipeline (broker/evidence.Decide): the broker's Attest and the Vault
// auth method's login run the same cases and must name the same checks.
package refusaltest

import (
	"slices"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Case is one way a node's answer can be wrong, once its challenge was
// opened (the evidence is then decided on and recorded).
type Case struct {
	Name string
	// Edit makes the answer wrong; it is given a copy.
	Edit func(q *Answer)
	// Check is the failed check both front ends report ("<check>: …").
	Check string
}

// Answer is the part of an answer the cases change: the quotes and the
// event log. The first quote is of SHA-256 PCRs.
type Answer struct {
	Quotes   []*pb.Quote
	EventLog []byte
}

// Clone is a deep copy of a.
func (a *Answer) Clone() *Answer {
	out := &Answer{EventLog: slices.Clone(a.EventLog)}
	for _, q := range a.Quotes {
		c := &pb.Quote{Attest: slices.Clone(q.GetAttest()), Signature: slices.Clone(q.GetSignature()),
			Pcrs: &pb.PCRValues{HashAlg: q.GetPcrs().GetHashAlg(), Values: map[uint32][]byte{}}}
		for i, v := range q.GetPcrs().GetValues() {
			c.Pcrs.Values[i] = slices.Clone(v)
		}
		out.Quotes = append(out.Quotes, c)
	}
	return out
}

// Cases are the wrong answers, each with its check.
func Cases() []Case {
	return []Case{
		{"a signature byte changed", func(a *Answer) { s := a.Quotes[0].Signature; s[len(s)-1] ^= 1 }, "quote_signature"},
		{"a quoted PCR value changed", func(a *Answer) { a.Quotes[0].Pcrs.Values[7][0] ^= 1 }, "pcr_digest"},
		{"a quoted PCR left out", func(a *Answer) { delete(a.Quotes[0].Pcrs.Values, 7) }, "pcr_digest"},
		{"the quote named another bank", func(a *Answer) { a.Quotes[0].Pcrs.HashAlg = 0x000d }, "pcr_bank"},
		{"one quote twice", func(a *Answer) { a.Quotes = append(a.Quotes[:1], a.Quotes[0]) }, "pcr_bank"},
		{"an event log that does not parse", func(a *Answer) { a.EventLog = []byte("not an event log") }, "event_log"},
	}
}
