package evidence

import (
	"errors"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

// Inputs are what a decision on presented evidence depends on: the one
// pipeline the broker's Attest and the Vault auth method's login run.
type Inputs struct {
	// Evidence is what the node presented, with the challenge it answered.
	Evidence attestation.Evidence
	// Vouch, if set, is the challenge's vouch for the node's EK and AK
	// (challenge.Challenge.Vouch): the node is checked with
	// verify.NodeVouched.
	Vouch *verify.Vouch
	// Opts configure every check: trusted EKs, SHA-1, banks.
	Opts verify.Opts
	// Policies are evaluated once the node and its history verified.
	Policies *policies.Set
	// Previous returns the node's record by EK hash, or an error wrapping
	// store.ErrNotFound when it has none. Only its counters and bookkeeping
	// are read, never its Evidence (which store.NodeHeads leaves out).
	Previous func(ekHash string) (store.NodeRecord, error)
	// Stage, if set, is called as each stage ends: StageVerify once the
	// attestation verified (history included), StagePolicy once the
	// policies decided; for timing.
	Stage func(stage string)
}

// The stages Inputs.Stage is told of.
const (
	StageVerify = "verify"
	StagePolicy = "policy"
)

// Outcome is the decision on presented evidence.
type Outcome struct {
	// Node is the node's identity once its EK and AK verified (also when
	// a later step failed); nil otherwise.
	Node *verify.NodeIdentity
	// Verified is the verified attestation, history included; nil when it
	// did not verify.
	Verified *verify.Verified
	// QuoteDigest is the digest of the verified quotes (zero if none).
	QuoteDigest [32]byte
	// AKChanged reports that the node attested with another AK than last
	// time: its TPM counters could not be compared.
	AKChanged bool
	// Decision is the policies' decision, once the attestation verified.
	Decision policies.Decision
	// NodeRecord is the node's new record once the attestation verified,
	// also when the policies then deny, so that it is written with the
	// decision; nil before.
	NodeRecord *store.NodeRecord
	// Refusal is why nothing may be released; nil when the policies allow
	// the node.
	Refusal *Refusal
}

// Refusal is why a decision allows nothing.
type Refusal struct {
	// Check is the failed check, as receipts name it: a verify.Check,
	// "policy", or "internal" (a fault, not about the node).
	Check string
	// Err is the cause: a *verify.CheckError for a failed check.
	Err error
	// Deny reports that the refusal came after the node's TPM proved it
	// answered the challenge (verify.FromTPM; the TPM counters; the
	// policies), so that it is about the node: the deny list takes it. A
	// refusal before that proof may come from anyone who knows the node's
	// public EK, and a fault says nothing about the node.
	Deny bool
}

// CheckPolicy is the check of a refusal by the policies.
const CheckPolicy = "policy"

// CheckInternal is the check of a refusal that is a fault.
const CheckInternal = "internal"

// Decide verifies the evidence — the node (EK and AK), its quotes against
// the challenge's secret, its event log, then its TPM counters against its
// previous record — and evaluates the policies: the same steps in the same
// order for every front end.
func Decide(in Inputs) *Outcome {
	out := &Outcome{}
	var err error
	ev := in.Evidence
	var v *verify.Verified
	if in.Vouch != nil {
		out.Node, v, err = VerifyVouched(ev, in.Opts, *in.Vouch)
	} else {
		out.Node, v, err = Verify(ev, in.Opts)
	}
	if err != nil {
		out.Refusal = checkRefusal(err, out.Node != nil && verify.FromTPM(err))
		return out
	}
	out.QuoteDigest = v.QuoteDigest()

	var prev *store.NodeRecord
	switch p, err := in.Previous(out.Node.EKHash()); {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		out.Refusal = &Refusal{Check: CheckInternal, Err: err}
		return out
	default:
		prev = &p
		c := p.Counters()
		ev.Previous = &c
	}
	if v, out.AKChanged, err = WithHistory(v, ev.Previous); err != nil {
		out.Refusal = checkRefusal(err, true)
		return out
	}
	out.Verified = v
	out.NodeRecord = NodeRecord(v, prev, ev)
	stage := in.Stage
	if stage == nil {
		stage = func(string) {}
	}
	stage(StageVerify)
	out.Decision = in.Policies.Evaluate(v)
	stage(StagePolicy)
	if !out.Decision.Allowed {
		out.Refusal = &Refusal{Check: CheckPolicy, Deny: true}
	}
	return out
}

// checkRefusal is the refusal of a verify error; deny as Refusal.Deny.
func checkRefusal(err error, deny bool) *Refusal {
	check := string(verify.FailedCheck(err))
	if check == "" {
		return &Refusal{Check: CheckInternal, Err: err}
	}
	return &Refusal{Check: check, Err: err, Deny: deny}
}

// FillReceipt sets rec's fields that the decision knows: the node's EK
// hash and AK name, the quotes' digest, the verified identity log's digest
// and PCR value, and the policies' names, hash and failures.
func (o *Outcome) FillReceipt(rec *store.Receipt) {
	if o.Node != nil {
		rec.EKHash, rec.AKName = o.Node.EKHash(), o.Node.AKName()
	}
	if o.QuoteDigest != ([32]byte{}) {
		rec.QuoteDigest = o.QuoteDigest[:]
	}
	if o.Verified != nil {
		if l := o.Verified.IdentityLog(); l != nil {
			rec.IdentityLogSHA256, rec.IdentityLogPCR = l.SHA256[:], l.Value[:]
		}
		rec.Policies, rec.PolicyHash, rec.Failures = o.Decision.Policies, o.Decision.PolicyHash, o.Decision.Failures
	}
}
