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
	CheckCounters   Check = "tpm_counters"
)

// CheckError is a failed verification step. Msg is safe to show to the node:
// it names what failed, never trust configuration or secrets.
type CheckError struct {
	Check Check
	Msg   string
	Err   error // optional cause, for operator logs
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

// FailedCheck returns the check that err reports, or "" if err did not come
// from this package.
func FailedCheck(err error) Check {
	var ce *CheckError
	if errors.As(err, &ce) {
		return ce.Check
	}
	return ""
}
