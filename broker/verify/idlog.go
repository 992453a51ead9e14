package verify

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/idlog"
)

// IdentityLog is a verified record of the identities the node's agent
// handed to workloads in the current boot (package idlog): it replayed to
// the quoted SHA-256 value of its PCR.
type IdentityLog struct {
	// PCR is the PCR the log extends, BootID the boot it names.
	PCR    int
	BootID string
	// Issued are the handouts, in order.
	Issued []idlog.Issued
	// Value is the PCR value the log replayed to, as quoted; SHA256 the
	// SHA-256 of the log as sent.
	Value  [32]byte
	SHA256 [32]byte
}

// WithIdentityLog checks the node's identity log (idlog.Parse, strict,
// at most idlog.MaxSize bytes) against the verified quotes: its boot record
// must name opts' identity log PCR (Opts.IdentityLogPCR) and, replayed from
// a reset PCR, it must reach that PCR's quoted SHA-256 value (compared in
// constant time). An empty log is accepted only while that PCR, if quoted,
// is still reset (all zero): a node cannot extend its handouts into the PCR
// and withhold their record. Policies then see identities.present ==
// false. With Opts.IdentityLogOff no log is required and any log is
// refused. A refusal is CheckIdentityLog, after the node's TPM answered the
// challenge (FromTPM), as a bad event log is.
func (v *Verified) WithIdentityLog(raw []byte, opts Opts) (out *Verified, err error) {
	defer func() {
		if err != nil {
			err = fromTPM(err)
		}
	}()
	if opts.IdentityLogOff {
		if len(raw) != 0 {
			return nil, fail(CheckIdentityLog, "the identity record is turned off here (identity_log_pcr = 0): send no identity log", nil)
		}
		return v, nil
	}
	pcr := opts.identityLogPCR()
	if len(raw) == 0 {
		if quoted, ok := v.identityPCR(pcr); ok && !isReset(quoted) {
			return nil, fail(CheckIdentityLog, fmt.Sprintf("no identity log, but sha256 PCR %d (identity_log_pcr) was extended", pcr), nil)
		}
		return v, nil
	}
	if len(raw) > idlog.MaxSize {
		return nil, fail(CheckInput, "identity_log is too large", nil)
	}
	log, err := idlog.Parse(raw)
	if err != nil {
		return nil, fail(CheckIdentityLog, "identity log cannot be parsed", err)
	}
	if log.PCR != pcr {
		return nil, fail(CheckIdentityLog, fmt.Sprintf("the identity log extends PCR %d, but identity_log_pcr is %d", log.PCR, pcr), nil)
	}
	if _, ok := v.pcrs[tpm2.TPMAlgSHA256]; !ok {
		return nil, fail(CheckIdentityLog, "the identity log replays in the sha256 bank, which was not quoted or is not counted (pcr_banks)", nil)
	}
	quoted, ok := v.identityPCR(pcr)
	if !ok {
		return nil, fail(CheckIdentityLog, fmt.Sprintf("the identity log extends sha256 PCR %d, which was not quoted", pcr), nil)
	}
	if subtle.ConstantTimeCompare(log.Value[:], quoted) != 1 {
		return nil, fail(CheckIdentityLog, fmt.Sprintf("identity log does not replay to the quoted sha256 PCR %d", pcr), nil)
	}
	withLog := *v
	withLog.identities = &IdentityLog{PCR: log.PCR, BootID: log.BootID, Issued: log.Issued, Value: log.Value, SHA256: sha256.Sum256(raw)}
	return &withLog, nil
}

// identityPCR returns the quoted SHA-256 value of pcr, if it was quoted.
func (v *Verified) identityPCR(pcr int) ([]byte, bool) {
	quoted, ok := v.pcrs[tpm2.TPMAlgSHA256][uint32(pcr)]
	return quoted, ok
}

// isReset reports whether a PCR value is all zero, as PCRs 0-15 are after
// a reset.
func isReset(value []byte) bool {
	var zero [32]byte
	return subtle.ConstantTimeCompare(value, zero[:]) == 1
}

// IdentityLog returns the verified identity log, or nil if the node sent
// none.
func (v *Verified) IdentityLog() *IdentityLog {
	if v.identities == nil {
		return nil
	}
	l := *v.identities
	l.Issued = slices.Clone(l.Issued)
	for i := range l.Issued {
		l.Issued[i].Selectors = slices.Clone(l.Issued[i].Selectors)
	}
	return &l
}
