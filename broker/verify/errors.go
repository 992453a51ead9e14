package verify

import "errors"

// Check names a verification step. Every error this package returns wraps
// exactly one *CheckError, so callers can report which check failed without
// parsing messages.
type Check string

// The checks, in the order a broker runs them.
const (
	CheckInput      Check = "input"
	CheckEKTrust    Check = "ek_trust"
	CheckAK         Check = "ak_attributes"
	CheckQuoteMagic Check = "quote_magic"
	CheckQuoteType  Check = "quote_type"
	CheckNonce      Check = "quote_nonce"
	CheckSignature  Check = "quote_signature"
	CheckPCRDigest  Check = "pcr_digest"
	CheckBank       Check = "pcr_bank"
	CheckEventLog   Check = "event_log"
	// CheckIdentityLog: the node's record of issued identities does not
	// parse or does not replay to its quoted PCR (WithIdentityLog).
	CheckIdentityLog Check = "identity_log"
	CheckCounters    Check = "tpm_counters"
	// CheckResidentKey: a key offered for a tpm_resident release is not a
	// TPM-resident signing key the AK certified for this challenge.
	CheckResidentKey Check = "resident_key"
)

// CheckError is a failed verification step. Msg is safe to show to the node:
// it names what failed, never trust configuration or secrets.
type CheckError struct {
	Check Check
	Msg   string
	Err   error // optional cause, for operator logs

	// fromTPM: the refused evidence demonstrably came from the node's TPM
	// (see FromTPM).
	fromTPM bool
}

func (e *CheckError) Error() string {
	if e.Err != nil {
		return string(e.Check) + ": " + e.Msg + ": " + e.Err.Error()
	}
	return string(e.Check) + ": " + e.Msg
}

func (e *CheckError) Unwrap() error { return e.Err }

func fail(c Check, msg string, err error) error {
	return &CheckError{Check: c, Msg: msg, Err: err}
}

// FromTPM reports whether err refuses evidence that the node's TPM
// demonstrably produced for this challenge: a quote signed by the AK and
// carrying the activated challenge secret verified before the check failed
// (a later check of that quote or of another one, the event log, or the
// TPM counters). Only the TPM holding the EK and the AK can activate the
// secret, so such a refusal is about that node. A refusal for which it
// returns false (an untrusted EK, a wrong nonce, a signature by another
// key) may come from anyone who knows the node's public EK, and says
// nothing about the node.
func FromTPM(err error) bool {
	var ce *CheckError
	return errors.As(err, &ce) && ce.fromTPM
}

// fromTPM marks err (a *CheckError) as FromTPM and returns it.
func fromTPM(err error) error {
	var ce *CheckError
	if errors.As(err, &ce) {
		ce.fromTPM = true
	}
	return err
}

// FailedCheck returns the check that err reports, or "" if err did not come
// from this package.
func FailedCheck(err error) Check {
	var ce *CheckError
	if errors.As(err, &ce) {
		return ce.Check
	}
	return ""
}
