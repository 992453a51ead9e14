package verify

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-eventlog/extract"
	elpb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	"github.com/google/go-tpm/tpm2"
)

// firmwarePCRs are the PCRs the firmware and boot loader measure into and
// log: a quoted non-zero value among them needs events in the log. (PCRs
// above, such as IMA's 10, are extended by parties that keep their own logs.)
const firmwarePCRs = 10

// EventLogFacts are what a verified TCG event log says about the boot. Every
// digest is lowercase hex; certificates are named by the SHA-256 of their
// DER encoding, or by go-eventlog's well-known name (e.g.
// "MS_THIRD_PARTY_UEFI_CA_2011").
type EventLogFacts struct {
	// Bank is the PCR bank the facts were read from (SHA-256 when quoted);
	// the log replayed in every quoted bank.
	Bank tpm2.TPMAlgID
	// SecureBoot reports whether UEFI Secure Boot was enabled.
	SecureBoot bool
	// PK, KEK, DB, DBX list the Secure Boot databases' certificates and
	// hashes; Authorities the db entries that verified boot applications.
	PK, KEK, DB, DBX, Authorities []string
	// BootApps are the digests of the EFI applications loaded before
	// ExitBootServices (shim, boot loader, kernel), in order.
	BootApps []string
	// GrubCommands are the commands GRUB logged, without the trailing NUL.
	GrubCommands []string
	// KernelCmdline is the kernel command line GRUB logged (kernel path
	// and arguments), without the trailing NUL.
	KernelCmdline string
	// FirmwareVersion is the S-CRTM version string, if logged.
	FirmwareVersion string
	// Separators lists the PCRs that hold an EV_SEPARATOR event.
	Separators []uint32
}

// WithEventLog checks a TCG PC Client event log against the verified quotes
// and returns a Verified that also carries the facts derived from it. The
// log must replay to the quoted value of every PCR it has events for, in
// every quoted bank; it may not have events for PCRs that were not quoted;
// and every quoted firmware PCR (0-9) that is not zero must have events. An
// empty log returns v unchanged: a node without an event log has no
// event-log facts, and policies that need them fail.
func (v *Verified) WithEventLog(raw []byte) (out *Verified, err error) {
	// v was verified: whatever is wrong with the log, the node's TPM
	// answered this challenge (FromTPM). Deferred first, so it runs last.
	defer func() {
		if err != nil {
			err = fromTPM(err)
		}
	}()
	// go-eventlog panics on some inputs (for instance an event type it
	// cannot name, which no digest covers): a node's log must never bring
	// the broker down.
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fail(CheckEventLog, "event log cannot be interpreted", fmt.Errorf("go-eventlog: %v", r))
		}
	}()
	if len(raw) == 0 {
		return v, nil
	}
	if len(raw) > MaxEventLogSize {
		return nil, fail(CheckInput, "event_log is too large", nil)
	}
	el, err := tcg.ParseEventLog(raw, tcg.ParseOpts{})
	if err != nil {
		return nil, fail(CheckEventLog, "event log cannot be parsed", err)
	}
	logged := map[uint32]bool{}
	for _, e := range el.Events(register.HashSHA256) {
		logged[uint32(e.Index)] = true
	}
	var factsBank tpm2.TPMAlgID
	var factsEvents []tcg.Event
	for _, bank := range v.Banks() {
		name := BankName(bank)
		hash, ok := eventLogHash(bank)
		if !ok {
			return nil, fail(CheckEventLog, fmt.Sprintf("the event log cannot be checked against the %s bank", name), nil)
		}
		pcrs := v.pcrs[bank]
		for idx := range logged {
			if _, quoted := pcrs[idx]; !quoted {
				return nil, fail(CheckEventLog, fmt.Sprintf("event log has events for %s PCR %d, which was not quoted", name, idx), nil)
			}
		}
		zero := make([]byte, hash.Size())
		var mrs []register.MR
		for idx, val := range pcrs {
			if idx < firmwarePCRs && !logged[idx] && !bytes.Equal(val, zero) {
				return nil, fail(CheckEventLog, fmt.Sprintf("%s PCR %d was extended but the event log has no events for it", name, idx), nil)
			}
			mrs = append(mrs, register.PCR{Index: int(idx), Digest: val, DigestAlg: hash})
		}
		events, err := el.Verify(mrs)
		if err != nil {
			var re tcg.ReplayError
			if errors.As(err, &re) {
				slices.Sort(re.InvalidMRs)
				return nil, fail(CheckEventLog, fmt.Sprintf("event log does not replay to the quoted %s PCRs %v", name, re.InvalidMRs), nil)
			}
			return nil, fail(CheckEventLog, fmt.Sprintf("event log does not replay to the quoted %s PCRs", name), err)
		}
		if factsEvents == nil || bank == tpm2.TPMAlgSHA256 {
			factsBank, factsEvents = bank, events
		}
	}
	facts, err := eventLogFacts(factsBank, factsEvents)
	if err != nil {
		return nil, err
	}
	withLog := *v
	withLog.eventLog = facts
	return &withLog, nil
}

// eventLogHash maps a bank to the hash go-eventlog replays it with.
// go-eventlog cannot replay SHA-512 banks.
func eventLogHash(bank tpm2.TPMAlgID) (crypto.Hash, bool) {
	switch bank {
	case tpm2.TPMAlgSHA1:
		return crypto.SHA1, true
	case tpm2.TPMAlgSHA256:
		return crypto.SHA256, true
	case tpm2.TPMAlgSHA384:
		return crypto.SHA384, true
	}
	return 0, false
}

func eventLogFacts(bank tpm2.TPMAlgID, events []tcg.Event) (*EventLogFacts, error) {
	hash, _ := eventLogHash(bank)
	st, err := extract.FirmwareLogState(events, hash, extract.TPMRegisterConfig, extract.Opts{Loader: extract.GRUB})
	if err != nil {
		return nil, fail(CheckEventLog, "event log replayed but its boot events are malformed", err)
	}
	f := &EventLogFacts{Bank: bank}
	if sb := st.GetSecureBoot(); sb != nil {
		f.SecureBoot = sb.GetEnabled()
		f.PK, f.KEK = dbNames(sb.GetPk()), dbNames(sb.GetKek())
		f.DB, f.DBX = dbNames(sb.GetDb()), dbNames(sb.GetDbx())
		f.Authorities = dbNames(sb.GetAuthority())
	}
	for _, app := range st.GetEfi().GetApps() {
		f.BootApps = append(f.BootApps, hex.EncodeToString(app.GetDigest()))
	}
	for _, c := range st.GetGrub().GetCommands() {
		f.GrubCommands = append(f.GrubCommands, strings.TrimRight(c, "\x00"))
	}
	f.KernelCmdline = strings.TrimRight(st.GetLinuxKernel().GetCommandLine(), "\x00")
	f.FirmwareVersion = ucs2String(st.GetPlatform().GetScrtmVersionId())
	seen := map[uint32]bool{}
	for _, e := range events {
		if e.UntrustedType() == tcg.Separator && !seen[e.MRIndex()] {
			seen[e.MRIndex()] = true
			f.Separators = append(f.Separators, e.MRIndex())
		}
	}
	slices.Sort(f.Separators)
	return f, nil
}

// dbNames names each certificate and hash of a Secure Boot database.
func dbNames(db *elpb.Database) []string {
	var out []string
	for _, c := range db.GetCerts() {
		if wk := c.GetWellKnown(); wk != elpb.WellKnownCertificate_UNKNOWN {
			out = append(out, wk.String())
			continue
		}
		sum := sha256.Sum256(c.GetDer())
		out = append(out, hex.EncodeToString(sum[:]))
	}
	for _, h := range db.GetHashes() {
		out = append(out, hex.EncodeToString(h))
	}
	return out
}

// ucs2String decodes a little-endian UCS-2 string up to its NUL; other bytes
// are returned as hex.
func ucs2String(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b)%2 != 0 {
		return hex.EncodeToString(b)
	}
	var sb strings.Builder
	for i := 0; i+1 < len(b); i += 2 {
		r := rune(b[i]) | rune(b[i+1])<<8
		if r == 0 {
			break
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// EventLog returns the facts of the verified event log, or nil if the node
// sent none.
func (v *Verified) EventLog() *EventLogFacts {
	if v.eventLog == nil {
		return nil
	}
	f := *v.eventLog
	for _, s := range []*[]string{&f.PK, &f.KEK, &f.DB, &f.DBX, &f.Authorities, &f.BootApps, &f.GrubCommands} {
		*s = slices.Clone(*s)
	}
	f.Separators = slices.Clone(f.Separators)
	return &f
}
