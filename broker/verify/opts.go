package verify

import (
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/idlog"
)

// Opts are everything verification is configured with: the one value the
// broker and the Vault auth method build from their configuration and pass
// to every check (Node, NodeVouched, Quotes, and through broker/evidence the
// event log and the re-verification of stored evidence). The zero value is
// the safe default: it trusts no EK, refuses SHA-1 and counts every bank.
type Opts struct {
	// Trust says which EKs are trusted.
	Trust Trust
	// AllowSHA1 accepts SHA-1 wherever a TPM may use it: as an AK name
	// algorithm, as a PCR bank and as a quote signature's hash. Default
	// false: an AK named with SHA-1 is refused, and so is any SHA-1 quote,
	// even next to a SHA-256 one.
	AllowSHA1 bool
	// Banks, if set, are the PCR banks whose quotes count: a quote of
	// another bank is skipped (neither verified nor seen by policies), and
	// a node with no quote of these banks is refused (pcr_bank). A SHA-1
	// quote is still refused without AllowSHA1. Empty: every bank counts.
	Banks []tpm2.TPMAlgID
	// IdentityLogPCR is the PCR (SHA-256 bank) that holds the nodes'
	// record of issued identities (package idlog; identity_log_pcr): a
	// log whose boot record names another PCR is refused, and so is an
	// attestation that sends no log while this PCR, quoted, is not reset
	// (all zero) — the record is otherwise hidden by extending another
	// PCR. 0 means idlog.DefaultPCR (15).
	IdentityLogPCR int
	// IdentityLogOff turns the identity record off (identity_log_pcr = 0),
	// for fleets where something else extends every PCR the record could
	// use: no log is required, and a log sent is refused. Default false.
	IdentityLogOff bool
}

// identityLogPCR is the PCR the identity record is pinned to.
func (o Opts) identityLogPCR() int {
	if o.IdentityLogPCR == 0 {
		return idlog.DefaultPCR
	}
	return o.IdentityLogPCR
}

// Index returns o with its Trust indexed (Trust.Index): what verifies many
// nodes with one Opts indexes it once.
func (o Opts) Index() Opts {
	o.Trust = o.Trust.Index()
	return o
}

// Counts reports whether a quote of bank is verified and used.
func (o Opts) Counts(bank tpm2.TPMAlgID) bool {
	return len(o.Banks) == 0 || slices.Contains(o.Banks, bank) || (bank == tpm2.TPMAlgSHA1 && !o.AllowSHA1)
}
