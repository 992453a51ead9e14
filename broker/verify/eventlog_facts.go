package verify

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf16"

	"github.com/google/go-eventlog/extract"
	elpb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify/tcglog"
)

// grubPrefixes start the strings GRUB measures into PCR 8 (its commands and
// the kernel command line, in current and older spellings).
var grubPrefixes = [][]byte{
	[]byte("grub_cmd: "), []byte("grub_cmd "), []byte("kernel_cmdline: "),
	[]byte("grub_kernel_cmdline "), []byte("module_cmdline: "),
}

// interpretEventLog reads the facts of a log that replayed in bank (whose
// quoted values are pcrs). It never fails: what cannot be read is named in
// the facts' Problems.
func interpretEventLog(raw []byte, log *tcglog.Log, bank tpm2.TPMAlgID, pcrs map[uint32][]byte) *EventLogFacts {
	f := &EventLogFacts{Bank: bank, BootLoader: bootLoader(log)}
	sep0 := -1 // position of PCR 0's separator: later PCR 0 events are not the firmware's
	for i, e := range log.Events {
		if !e.Measured() {
			continue
		}
		f.Events = append(f.Events, LoggedEvent{PCR: e.PCR, Type: e.Type, Digest: hex.EncodeToString(e.Digests[bank])})
		if e.Type == tcglog.EvSeparator && validSeparator(&log.Events[i], bank) && !slices.Contains(f.Separators, e.PCR) {
			f.Separators = append(f.Separators, e.PCR)
			if e.PCR == 0 && sep0 < 0 {
				sep0 = i
			}
		}
		if e.PCR == 0 && sep0 < 0 && e.Type == tcglog.EvSCRTMVersion && log.Events[i].DataDigestMatches(bank) {
			f.FirmwareVersion = firmwareString(e.Data)
		}
	}
	slices.Sort(f.Separators)
	if err := f.interpret(raw, log, bank, pcrs); err != nil {
		f.Problems = append(f.Problems, problems(err)...)
	}
	if f.BootLoader == BootLoaderGRUB && len(f.GrubCommands) == 0 {
		// GRUB's labels are not covered by its digests: "grub" only when
		// go-eventlog checked GRUB's events against their digests.
		f.BootLoader = BootLoaderUnknown
	}
	f.checkKernelCmdline()
	return f
}

// kernelCmdlineLabels and linuxCommands are how GRUB labels the kernel
// command line it measures, and the commands that load a Linux kernel.
var (
	kernelCmdlineLabels = []string{"kernel_cmdline: ", "grub_kernel_cmdline "}
	linuxCommands       = []string{"grub_cmd: linux ", "grub_cmd: linuxefi ", "grub_cmd: linux16 ", "grub_cmd linux "}
)

// checkKernelCmdline keeps the kernel command line only where the log
// vouches for it. GRUB's digests cover the text after a label
// ("kernel_cmdline: ", "grub_cmd: "), not the label: a node can relabel
// one measured text as another. The command line GRUB measured is also the
// argument of the linux command it ran, so it is kept only when exactly one
// text is labelled as the command line and a linux command ran exactly it;
// otherwise it is left empty and the problem named.
func (f *EventLogFacts) checkKernelCmdline() {
	var claimed []string
	for _, c := range f.GrubCommands {
		for _, l := range kernelCmdlineLabels {
			if rest, ok := strings.CutPrefix(c, l); ok {
				claimed = append(claimed, rest)
			}
		}
	}
	if len(claimed) == 0 {
		f.KernelCmdline = ""
		return
	}
	// GRUB quotes an argument holding spaces in the command line it logs,
	// and logs the linux command's words unquoted.
	unquoted := func(s string) string { return strings.ReplaceAll(s, `"`, "") }
	ran := len(claimed) == 1 && slices.ContainsFunc(f.GrubCommands, func(c string) bool {
		return slices.ContainsFunc(linuxCommands, func(l string) bool {
			args, ok := strings.CutPrefix(c, l)
			return ok && unquoted(args) == unquoted(claimed[0])
		})
	})
	if !ran || f.KernelCmdline != claimed[0] {
		f.KernelCmdline = ""
		f.Problems = append(f.Problems, "kernel_cmdline: the kernel command line GRUB logged is not the one its linux command ran")
	}
}

// validSeparator reports whether e is a separator whose digest covers its
// data, and the data is one of the two values the specification allows.
func validSeparator(e *tcglog.Event, bank tpm2.TPMAlgID) bool {
	ok := bytes.Equal(e.Data, []byte{0, 0, 0, 0}) || bytes.Equal(e.Data, []byte{0xff, 0xff, 0xff, 0xff})
	return ok && e.DataDigestMatches(bank)
}

// bootLoader names the boot loader the log shows (see
// EventLogFacts.BootLoader).
func bootLoader(log *tcglog.Log) string {
	systemd := false
	for _, e := range log.Events {
		switch {
		case e.PCR == 8 && e.Type == tcglog.EvIPL && slices.ContainsFunc(grubPrefixes, func(p []byte) bool { return bytes.HasPrefix(e.Data, p) }):
			return BootLoaderGRUB
		case e.Type == tcglog.EvEFIBootServicesApplication:
			path := strings.ToLower(utf16Text(e.Data))
			systemd = systemd || strings.Contains(path, "systemd-boot") || strings.Contains(path, `\efi\systemd\`)
		case e.PCR == 12 && e.Type == tcglog.EvIPL:
			systemd = true // systemd-boot measures the kernel command line into PCR 12
		}
	}
	if systemd {
		return BootLoaderSystemdBoot
	}
	return BootLoaderUnknown
}

// utf16Text returns the UTF-16LE text found in b (e.g. the file path nodes
// of an EFI device path), other code units dropped.
func utf16Text(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c >= 0x20 && c < 0x7f {
			u = append(u, c)
		} else {
			u = append(u, ' ')
		}
	}
	return string(utf16.Decode(u))
}

// interpret reads the boot facts with go-eventlog (Secure Boot databases,
// boot applications, GRUB's commands). go-eventlog panics on event types it
// cannot name, which no digest covers; those are handed to it as
// EV_POST_CODE, which it does not interpret, so one vendor event does not
// hide the rest of the log.
func (f *EventLogFacts) interpret(raw []byte, log *tcglog.Log, bank tpm2.TPMAlgID, pcrs map[uint32][]byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("go-eventlog: the log cannot be interpreted: %v", r)
		}
	}()
	hash, ok := eventLogHash(bank)
	if !ok {
		return fmt.Errorf("go-eventlog: the %s bank cannot be interpreted", BankName(bank))
	}
	el, err := tcg.ParseEventLog(namedTypesOnly(raw, log), tcg.ParseOpts{})
	if err != nil {
		return fmt.Errorf("go-eventlog: %w", err)
	}
	var mrs []register.MR
	for idx, val := range pcrs {
		mrs = append(mrs, register.PCR{Index: int(idx), Digest: val, DigestAlg: hash})
	}
	events, err := el.Verify(mrs)
	if err != nil {
		return fmt.Errorf("go-eventlog: %w", err)
	}
	st, err := extract.FirmwareLogState(events, hash, extract.TPMRegisterConfig, extractOpts(f.BootLoader))
	f.fromState(st)
	return err
}

// extractOpts are the go-eventlog options the broker reads logs with: GRUB's
// events only when GRUB booted; an empty SecureBoot variable (Secure Boot
// never configured) and EFI applications the firmware loads before the
// boot option (vendor tools) are normal on real machines.
func extractOpts(loader string) extract.Opts {
	o := extract.Opts{AllowEmptySBVar: true, AllowEFIAppBeforeCallingEvent: true, Loader: extract.UnsupportedLoader}
	if loader == BootLoaderGRUB {
		o.Loader = extract.GRUB
	}
	return o
}

// fromState copies go-eventlog's (possibly partial) extraction.
func (f *EventLogFacts) fromState(st *elpb.FirmwareLogState) {
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
}

// namedTypesOnly returns raw, or a copy in which the type of every event
// go-eventlog cannot name is EV_POST_CODE.
func namedTypesOnly(raw []byte, log *tcglog.Log) []byte {
	out, copied := raw, false
	for _, e := range log.Events {
		if _, ok := tcg.EventType(e.Type).KnownName(); ok {
			continue
		}
		if !copied {
			out, copied = bytes.Clone(raw), true
		}
		binary.LittleEndian.PutUint32(out[e.Offset+4:], uint32(tcg.PostCode))
	}
	return out
}

// problems splits an extraction error into one line per failed part.
func problems(err error) []string {
	var out []string
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, problems(e)...)
		}
		return out
	}
	return []string{err.Error()}
}

// eventLogHash maps a bank to the hash go-eventlog reads it with.
// go-eventlog cannot read SHA-512 banks.
func eventLogHash(bank tpm2.TPMAlgID) (crypto.Hash, bool) {
	if bank == tpm2.TPMAlgSHA512 {
		return 0, false
	}
	return tcglog.Hash(bank)
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

// firmwareString reads an S-CRTM version: a NUL-terminated UCS-2 string
// (most firmware, e.g. "GCE Virtual Firmware v1"), else a NUL-terminated
// ASCII string at its start (e.g. "M60" before vendor data), else hex (some
// firmware logs a GUID).
func firmwareString(b []byte) string {
	if s, ok := ucs2Text(b); ok {
		return s
	}
	if i := bytes.IndexByte(b, 0); i > 0 && printableASCII(b[:i]) {
		return string(b[:i])
	}
	return hex.EncodeToString(b)
}

// ucs2Text decodes b as printable little-endian UCS-2 up to a NUL code unit
// followed only by zeros (or the end).
func ucs2Text(b []byte) (string, bool) {
	if len(b) < 2 || len(b)%2 != 0 {
		return "", false
	}
	var sb strings.Builder
	for i := 0; i+1 < len(b); i += 2 {
		r := rune(binary.LittleEndian.Uint16(b[i:]))
		if r == 0 {
			return sb.String(), isZero(b[i:])
		}
		if r >= 0x80 || !unicode.IsPrint(r) {
			return "", false
		}
		sb.WriteRune(r)
	}
	return sb.String(), true
}

func printableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}
