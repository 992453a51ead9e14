package verify

import (
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
}

// WithIdentityLog checks the node's identity log (idlog.Parse, strict,
// at most idlog.MaxSize bytes) against the verified quotes: replayed from
// a reset PCR, it must reach the quoted SHA-256 value of the PCR its boot
// record names (compared in constant time). A log that does not parse or
// replay is refused as CheckIdentityLog, after the node's TPM answered the
// challenge (FromTPM), as a bad event log is. An empty log returns v
// unchanged: policies then see identities.present == false.
func (v *Verified) WithIdentityLog(raw []byte) (out *Verified, err error) {
	defer func() {
		if err != nil {
			err = fromTPM(err)
		}
	}()
	if len(raw) == 0 {
		return v, nil
	}
	if len(raw) > idlog.MaxSize {
		return nil, fail(CheckInput, "identity_log is too large", nil)
	}
	log, err := idlog.Parse(raw)
	if err != nil {
		return nil, fail(CheckIdentityLog, "identity log cannot be parsed", err)
	}
	bank, ok := v.pcrs[tpm2.TPMAlgSHA256]
	if !ok {
		return nil, fail(CheckIdentityLog, "the identity log replays in the sha256 bank, which was not quoted or is not counted (pcr_banks)", nil)
	}
	quoted, ok := bank[uint32(log.PCR)]
	if !ok {
		return nil, fail(CheckIdentityLog, fmt.Sprintf("the identity log extends sha256 PCR %d, which was not quoted", log.PCR), nil)
	}
	if subtle.ConstantTimeCompare(log.Value[:], quoted) != 1 {
		return nil, fail(CheckIdentityLog, fmt.Sprintf("identity log does not replay to the quoted sha256 PCR %d", log.PCR), nil)
	}
	withLog := *v
	withLog.identities = &IdentityLog{PCR: log.PCR, BootID: log.BootID, Issued: log.Issued}
	return &withLog, nil
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
