package verify

import (
	"crypto/subtle"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify/tcglog"
)

// firmwarePCRs are the PCRs the firmware and boot loader measure into and
// log: a quoted non-zero value among them needs events in the log. (PCRs
// above, such as IMA's 10, are extended by parties that keep their own logs.)
const firmwarePCRs = 10

// Boot loaders EventLogFacts.BootLoader names.
const (
	BootLoaderGRUB        = "grub"
	BootLoaderSystemdBoot = "systemd-boot"
	BootLoaderUnknown     = "unknown"
)

// EventLogFacts are what a verified TCG event log says about the boot. Every
// digest is lowercase hex; certificates are named by the SHA-256 of their
// DER encoding, or by go-eventlog's well-known name (e.g.
// "MS_THIRD_PARTY_UEFI_CA_2011").
//
// A log that replays is always accepted: what could not be read from it is
// left empty and named in Problems, and policies decide. Only the digests
// are bound to the TPM by the replay; facts read from event data (boot
// loader, firmware version, commands) come from events whose digest covers
// that data, except BootLoader, which is a hint (see its comment).
type EventLogFacts struct {
	// Bank is the PCR bank the facts were read from (SHA-256 when quoted
	// and logged); the log replayed in every quoted bank it carries.
	Bank tpm2.TPMAlgID
	// SecureBoot reports whether UEFI Secure Boot was enabled.
	SecureBoot bool
	// PK, KEK, DB, DBX list the Secure Boot databases' certificates and
	// hashes; Authorities the db entries that verified boot applications.
	PK, KEK, DB, DBX, Authorities []string
	// BootApps are the digests of the EFI applications loaded before
	// ExitBootServices (shim, boot loader, kernel), in order.
	BootApps []string
	// BootLoader is "grub" when GRUB logged its commands and go-eventlog
	// checked them against their digests, else "systemd-boot" when a boot
	// application's logged file path or a PCR 12 event says systemd-boot
	// (paths are not covered by a digest: a hint for operators, not a
	// proof), else "unknown".
	BootLoader string
	// GrubCommands are the strings GRUB logged, label included, without the
	// trailing NUL. GRUB's digests cover the text after the label
	// ("grub_cmd: ", "kernel_cmdline: "), not the label.
	GrubCommands []string
	// KernelCmdline is the kernel command line GRUB logged (kernel path
	// and arguments), without the trailing NUL; empty, with a problem,
	// unless exactly one text is labelled as the command line and a linux
	// command ran it (labels are not bound: checkKernelCmdline).
	KernelCmdline string
	// FirmwareVersion is the S-CRTM version string (from an EV_S_CRTM_VERSION
	// event whose digest covers it), if logged.
	FirmwareVersion string
	// Separators lists the PCRs that hold a valid EV_SEPARATOR event.
	Separators []uint32
	// Events are the log's measured events, in order, with their digests
	// in Bank: what the replay binds, whatever the log's meaning.
	Events []LoggedEvent
	// Problems names each part of the log that could not be interpreted
	// (its facts are then empty), e.g. "secure_boot: …". Empty when the
	// whole log was read.
	Problems []string
}

// LoggedEvent is one measured event of a verified log.
type LoggedEvent struct {
	PCR    uint32
	Type   uint32
	Digest string // lowercase hex, in EventLogFacts.Bank
}

// WithEventLog checks a TCG PC Client event log against the verified quotes
// and returns a Verified that also carries the facts derived from it. The
// log must carry the digests of at least one quoted bank and replay to the
// quoted value of every PCR it has events for, in every quoted bank it
// carries; it may not have events for PCRs that were not quoted; and every
// quoted firmware PCR (0-9) that is not zero must have events. A log that
// passes is accepted whatever its boot loader: what cannot be interpreted is
// listed in the facts' Problems. An empty log returns v unchanged: a node
// without an event log has no event-log facts, and policies that need them
// fail.
func (v *Verified) WithEventLog(raw []byte) (out *Verified, err error) {
	// v was verified: whatever is wrong with the log, the node's TPM
	// answered this challenge (FromTPM).
	defer func() {
		if err != nil {
			err = fromTPM(err)
		}
	}()
	if len(raw) == 0 {
		return v, nil
	}
	if len(raw) > MaxEventLogSize {
		return nil, fail(CheckInput, "event_log is too large", nil)
	}
	key := eventLogKey(raw, v.pcrs)
	if facts, ok := eventLogCache.get(key); ok {
		withLog := *v
		withLog.eventLog = facts
		return &withLog, nil
	}
	log, err := tcglog.Parse(raw)
	if err != nil {
		return nil, fail(CheckEventLog, "event log cannot be parsed", err)
	}
	bank, err := v.replay(log)
	if err != nil {
		return nil, err
	}
	facts := interpretEventLog(raw, log, bank, v.pcrs[bank])
	eventLogCache.put(key, facts)
	withLog := *v
	withLog.eventLog = facts
	return &withLog, nil
}

// replay checks log against every quoted bank it carries and returns the
// bank to read facts from: SHA-256 if possible, else the strongest.
func (v *Verified) replay(log *tcglog.Log) (tpm2.TPMAlgID, error) {
	logged := map[uint32]bool{}
	for _, e := range log.Events {
		if e.Measured() {
			logged[e.PCR] = true
		}
	}
	var checked []tpm2.TPMAlgID
	for _, bank := range v.Banks() {
		if !log.HasAlg(bank) {
			continue
		}
		if err := checkReplay(log, bank, v.pcrs[bank], logged); err != nil {
			return 0, err
		}
		checked = append(checked, bank)
	}
	if len(checked) == 0 {
		var have, quoted []string
		for _, a := range log.Algs {
			have = append(have, BankName(a))
		}
		for _, b := range v.Banks() {
			quoted = append(quoted, BankName(b))
		}
		msg := fmt.Sprintf("the event log carries %s digests only, and no quoted bank (%s) is among them",
			strings.Join(have, ", "), strings.Join(quoted, ", "))
		if slices.Equal(log.Algs, []tpm2.TPMAlgID{tpm2.TPMAlgSHA1}) {
			msg += "; a SHA-1 log is checked only where allow_sha1 is set and the sha1 bank is quoted"
		}
		return 0, fail(CheckEventLog, msg, nil)
	}
	for _, pref := range []tpm2.TPMAlgID{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512, tpm2.TPMAlgSHA1} {
		if slices.Contains(checked, pref) {
			return pref, nil
		}
	}
	return checked[0], nil
}

// checkReplay replays log in bank and compares with the quoted values.
func checkReplay(log *tcglog.Log, bank tpm2.TPMAlgID, quoted map[uint32][]byte, logged map[uint32]bool) error {
	name := BankName(bank)
	replayed, err := log.Replay(bank)
	if err != nil {
		return fail(CheckEventLog, fmt.Sprintf("the event log cannot be checked against the %s bank", name), err)
	}
	var pcrs []uint32
	for idx := range logged {
		pcrs = append(pcrs, idx)
	}
	slices.Sort(pcrs)
	for _, idx := range pcrs {
		if _, ok := quoted[idx]; !ok {
			return fail(CheckEventLog, fmt.Sprintf("event log has events for %s PCR %d, which was not quoted", name, idx), nil)
		}
	}
	for idx := uint32(0); idx < firmwarePCRs; idx++ {
		val, ok := quoted[idx]
		if ok && !logged[idx] && !isZero(val) {
			return fail(CheckEventLog, fmt.Sprintf("%s PCR %d was extended but the event log has no events for it", name, idx), nil)
		}
	}
	var bad []uint32
	for _, idx := range pcrs {
		if subtle.ConstantTimeCompare(replayed[idx], quoted[idx]) != 1 {
			bad = append(bad, idx)
		}
	}
	if len(bad) > 0 {
		return fail(CheckEventLog, fmt.Sprintf("event log does not replay to the quoted %s PCRs %v", name, bad), nil)
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// EventLog returns the facts of the verified event log, or nil if the node
// sent none.
func (v *Verified) EventLog() *EventLogFacts {
	if v.eventLog == nil {
		return nil
	}
	f := *v.eventLog
	for _, s := range []*[]string{&f.PK, &f.KEK, &f.DB, &f.DBX, &f.Authorities, &f.BootApps, &f.GrubCommands, &f.Problems} {
		*s = slices.Clone(*s)
	}
	f.Separators = slices.Clone(f.Separators)
	f.Events = slices.Clone(f.Events)
	return &f
}
