package policies

import (
	"encoding/hex"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/interpreter"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// factDocs documents the facts require expressions can read, in the order
// FactNames lists them. Keep the FactNames comment in step.
var factDocs = []FactDoc{
	{"ek.hash", "string", "the EK identity hash (verify.EKHash)"},
	{"ek.ca", "string", "the EK CA the certificate chained to, \"\" if trusted by hash"},
	{"ek.certified", "bool", "whether an EK certificate was verified"},
	{"ek.manufacturer", "string", "TPM manufacturer from the EK certificate, \"\" without one"},
	{"ek.model", "string", "TPM model from the EK certificate, \"\" without one"},
	{"ek.version", "string", "TPM version from the EK certificate, \"\" without one"},
	{"pcrs.sha1", "map(int, string)", "PCR index -> lowercase hex digest (only if SHA-1 is allowed)"},
	{"pcrs.sha256", "map(int, string)", "PCR index -> lowercase hex digest"},
	{"pcrs.sha384", "map(int, string)", "PCR index -> lowercase hex digest"},
	{"pcrs.sha512", "map(int, string)", "PCR index -> lowercase hex digest"},
	{"tpm.reset_count", "int", "TPM resets (reboots) since the TPM was cleared, from the quote, plus a secret per-AK offset for owner-hierarchy AKs"},
	{"tpm.restart_count", "int", "TPM restarts and resumes since the last reset, from the quote, plus a secret per-AK offset for owner-hierarchy AKs"},
	{"tpm.clock", "int", "milliseconds the TPM has been powered, from the quote"},
	{"tpm.firmware_version", "int", "TPM firmware version, from the quote"},
	{"history.first_seen", "bool", "the broker has no earlier attestation of this EK by the same AK to compare with"},
	{"history.ak_changed", "bool", "the node's previous attestation used another AK (a new AK or a cleared TPM); first_seen is then true too"},
	{"history.rebooted", "bool", "the TPM was reset (the machine rebooted) since the node's last attestation"},
	{"history.resets", "int", "by how much tpm.reset_count grew since the last attestation"},
	{"history.restarts", "int", "TPM restarts and resumes since the last attestation; 0 after a reset"},
	{"eventlog.present", "bool", "whether the node sent an event log (it replayed in every quoted bank)"},
	{"eventlog.secure_boot", "bool", "UEFI Secure Boot enabled"},
	{"eventlog.pk", "list(string)", "Secure Boot PK entries: SHA-256 of each certificate (hex) or a well-known name, and hashes"},
	{"eventlog.kek", "list(string)", "Secure Boot KEK entries, likewise"},
	{"eventlog.db", "list(string)", "Secure Boot db entries, likewise"},
	{"eventlog.dbx", "list(string)", "Secure Boot dbx entries, likewise"},
	{"eventlog.authorities", "list(string)", "the db entries that verified boot applications"},
	{"eventlog.boot_apps", "list(string)", "digests of the EFI applications loaded (shim, GRUB, kernel), in order"},
	{"eventlog.boot_loader", "string", `"grub" (GRUB logged its commands), "systemd-boot" (a hint from the logged file paths or a PCR 12 event) or "unknown"`},
	{"eventlog.grub_commands", "list(string)", "commands GRUB ran"},
	{"eventlog.kernel_cmdline", "string", "the kernel path and command line GRUB booted"},
	{"eventlog.firmware_version", "string", "the S-CRTM version"},
	{"eventlog.separators", "list(int)", "PCRs holding a separator event"},
	{"eventlog.events", "list(map)", "the measured events, in order: {pcr: int, type: int, digest: hex in eventlog.bank}"},
	{"eventlog.bank", "string", "the bank the facts were read from: sha256 when quoted and logged"},
	{"eventlog.problems", "list(string)", "the parts of the log that could not be interpreted (their facts are empty); empty when all was read"},
	{"identities.present", "bool", "whether the node sent a record of issued identities (it replayed to its quoted PCR)"},
	{"identities.pcr", "int", "the PCR the record extends (SHA-256 bank); 0 without a record"},
	{"identities.boot_id", "string", "the boot the record is of, as the agent read it; \"\" if unknown"},
	{"identities.issued", "list(map)", "the SVIDs the agent handed to workloads this boot, in order: {type: \"x509\" or \"jwt\", spiffe_id, serial, expires (RFC 3339 or \"\"), selectors: list(string) of the entry, exe_sha256: the caller's executable (\"\" if unread), uid: int, gid: int (-1 if not recorded), time: RFC 3339}"},
	{"node.labels", "map(string, string)", "the labels a node block of the policy documents gives this EK; empty if none"},
}

// FactDoc documents one fact: its name as written in a require expression,
// its CEL type and what it holds.
type FactDoc struct {
	Name string
	Type string
	Doc  string
}

// FactDocs returns the documentation of every fact FactNames lists, in the
// same order.
func FactDocs() []FactDoc {
	return slices.Clone(factDocs)
}

// FactNames lists the facts require expressions can read:
//
//	ek.hash               string, the EK identity hash (verify.EKHash)
//	ek.ca                 string, the EK CA the certificate chained to, "" if trusted by hash
//	ek.certified          bool, whether an EK certificate was verified
//	ek.manufacturer       string, from the EK certificate, "" without one
//	ek.model              string, likewise
//	ek.version            string, likewise
//	pcrs.sha1             map(int, string), PCR index -> lowercase hex digest (if allowed)
//	pcrs.sha256           map(int, string)
//	pcrs.sha384           map(int, string)
//	pcrs.sha512           map(int, string)
//	tpm.reset_count       int, TPM resets since the TPM was cleared (for an owner-hierarchy AK
//	tpm.restart_count     int   plus a secret per-AK offset: compare, do not read as counts)
//	tpm.clock             int, milliseconds
//	tpm.firmware_version  int
//	history.first_seen    bool, no earlier attestation of this EK by the same AK to compare with
//	history.ak_changed    bool, the previous attestation used another AK (first_seen is then true)
//	history.rebooted      bool, the TPM was reset (machine rebooted) since the last attestation
//	history.resets        int, by how much tpm.reset_count grew since the last attestation
//	history.restarts      int, TPM restarts and resumes since the last attestation; 0 after a reset
//	eventlog.present          bool, whether the node sent an event log (it replayed in every quoted bank)
//	eventlog.secure_boot      bool, UEFI Secure Boot enabled
//	eventlog.pk               list(string), Secure Boot PK entries: SHA-256 of each certificate (hex) or a
//	eventlog.kek              list(string)   well-known name such as "MS_THIRD_PARTY_UEFI_CA_2011", and hashes
//	eventlog.db               list(string)
//	eventlog.dbx              list(string)
//	eventlog.authorities      list(string), the db entries that verified boot applications
//	eventlog.boot_apps        list(string), digests of the EFI applications loaded (shim, GRUB, kernel), in order
//	eventlog.grub_commands    list(string), commands GRUB ran
//	eventlog.kernel_cmdline   string, the kernel path and command line GRUB booted
//	eventlog.firmware_version string, the S-CRTM version
//	eventlog.separators       list(int), PCRs holding a separator event
//	eventlog.boot_loader      string, "grub", "systemd-boot" or "unknown"
//	eventlog.events           list(map), the measured events: {pcr, type, digest}
//	eventlog.bank             string, the bank the facts were read from
//	eventlog.problems         list(string), what could not be interpreted
//	identities.present        bool, whether the node sent a record of issued identities (it replayed)
//	identities.pcr            int, the PCR the record extends (SHA-256 bank)
//	identities.boot_id        string, the boot the record is of
//	identities.issued         list(map), the SVIDs handed out this boot: {type, spiffe_id, serial,
//	                          expires, selectors, exe_sha256, uid, gid, time}
//
// Without an event log, eventlog.present is false and every other eventlog
// fact is empty (false, "", []); likewise the identities facts without an
// identity record.
// The history facts compare the quote's TPM counters with the node's
// previous attestation (verify.Verified.WithHistory; the broker always does
// this, and refuses counters that went backwards before any policy runs).
// For a Verified without that comparison the history group is empty, and
// reading from it is an evaluation error, reported as a failure.
// Only the banks that were quoted and verified are present in pcrs, and
// only the PCRs that were quoted are present in a bank: reading a missing
// one is an evaluation error, reported as a failure. Test for presence with
// `has(pcrs.sha384)` or `7 in pcrs.sha256`.
func FactNames() []string {
	names := make([]string, len(factDocs))
	for i, f := range factDocs {
		names[i] = f.Name
	}
	return names
}

// Facts returns the facts of a verified node as Evaluate presents them to
// CEL: "ek" (map[string]any), "pcrs" (map[string]map[int64]string), "tpm"
// (map[string]int64), "history" (map[string]any) and "eventlog"
// (map[string]any) and "identities" (map[string]any). It returns nil for a nil or zero Verified.
// The maps are the caller's.
func Facts(v *verify.Verified) map[string]any {
	if v == nil || v.Node() == nil {
		return nil
	}
	f := newFactSet(v, nil, true)
	return map[string]any{
		"eventlog":   f.eventlog,
		"identities": f.identities,
		"node":       f.node,
		"history":    f.history,
		"ek":         f.ek,
		"pcrs":       f.pcrs,
		"tpm":        f.tpm,
	}
}

// factSet holds the fact groups of a node, the variables of require
// expressions; it is the CEL activation Evaluate runs them with.
type factSet struct {
	ek         map[string]any
	pcrs       map[string]map[int64]string
	tpm        map[string]int64
	history    map[string]any
	node       map[string]any
	eventlog   map[string]any
	identities map[string]any
}

// emptyGroups are the fact groups of what a node did not send: no event
// log, no record of identities, no history, no labels. newFactSet shares
// them between evaluations unless the caller owns its facts; nothing may
// modify them (CEL only reads its variables).
var emptyGroups = struct {
	eventlog, identities, history, node map[string]any
}{eventLogFacts(nil), identityFacts(nil), historyFacts(nil), nodeFacts(nil)}

// newFactSet gathers the facts of v, a verified node, with the labels the
// policies give it. Unless owned, the groups of what the node did not send
// are emptyGroups'.
func newFactSet(v *verify.Verified, labels map[string]string, owned bool) *factSet {
	f := &factSet{
		ek:   ekFacts(v),
		pcrs: pcrFacts(v),
		tpm:  tpmFacts(v),
	}
	h, el, ids := v.History(), v.EventLog(), v.IdentityLog()
	switch {
	case owned || h != nil:
		f.history = historyFacts(h)
	default:
		f.history = emptyGroups.history
	}
	switch {
	case owned || el != nil:
		f.eventlog = eventLogFacts(el)
	default:
		f.eventlog = emptyGroups.eventlog
	}
	switch {
	case owned || ids != nil:
		f.identities = identityFacts(ids)
	default:
		f.identities = emptyGroups.identities
	}
	switch {
	case owned || labels != nil:
		f.node = nodeFacts(labels)
	default:
		f.node = emptyGroups.node
	}
	return f
}

// ResolveName returns the fact group name, for CEL.
func (f *factSet) ResolveName(name string) (any, bool) {
	switch name {
	case "ek":
		return f.ek, true
	case "pcrs":
		return celPCRs(f.pcrs), true
	case "tpm":
		return f.tpm, true
	case "history":
		return f.history, true
	case "node":
		return f.node, true
	case "eventlog":
		return f.eventlog, true
	case "identities":
		return f.identities, true
	}
	return nil, false
}

// Parent is nil: the facts are all the variables there are.
func (f *factSet) Parent() interpreter.Activation { return nil }

// ekFacts presents the verified EK.
func ekFacts(v *verify.Verified) map[string]any {
	ek := map[string]any{
		"hash":         v.EKHash(),
		"ca":           v.EKCA(),
		"certified":    false,
		"manufacturer": "",
		"model":        "",
		"version":      "",
	}
	if c := v.EKCert(); c != nil {
		ek["certified"] = true
		ek["manufacturer"] = c.Manufacturer
		ek["model"] = c.Model
		ek["version"] = c.Version
	}
	return ek
}

// pcrFacts presents the verified PCR values, by bank name.
func pcrFacts(v *verify.Verified) map[string]map[int64]string {
	banks := v.Banks()
	pcrs := make(map[string]map[int64]string, len(banks))
	for _, bank := range banks {
		pcrs[verify.BankName(bank)] = hexPCRs(v, bank)
	}
	return pcrs
}

// tpmFacts presents the TPM's counters from the quote.
func tpmFacts(v *verify.Verified) map[string]int64 {
	clock := v.Clock()
	return map[string]int64{
		"reset_count":      int64(clock.ResetCount),
		"restart_count":    int64(clock.RestartCount),
		"clock":            clampInt64(clock.Clock),
		"firmware_version": clampInt64(v.FirmwareVersion()),
	}
}

// nodeFacts presents what the policy documents say about the node.
func nodeFacts(labels map[string]string) map[string]any {
	if labels == nil {
		labels = map[string]string{}
	}
	return map[string]any{"labels": labels}
}

// historyFacts presents the counters' history; without one the group is
// empty, so a condition reading it fails rather than passing on defaults.
func historyFacts(h *verify.History) map[string]any {
	if h == nil {
		return map[string]any{}
	}
	return map[string]any{
		"first_seen": h.FirstSeen,
		"ak_changed": h.AKChanged,
		"rebooted":   h.Rebooted,
		"resets":     int64(h.Resets),
		"restarts":   int64(h.Restarts),
	}
}

// eventLogFacts presents the event-log facts; absent ones are empty.
func eventLogFacts(f *verify.EventLogFacts) map[string]any {
	if f == nil {
		f = &verify.EventLogFacts{}
	}
	list := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	separators := make([]int64, 0, len(f.Separators))
	for _, p := range f.Separators {
		separators = append(separators, int64(p))
	}
	events := make([]map[string]any, 0, len(f.Events))
	for _, e := range f.Events {
		events = append(events, map[string]any{"pcr": int64(e.PCR), "type": int64(e.Type), "digest": e.Digest})
	}
	bank, loader := "", f.BootLoader
	if f.Bank != 0 {
		bank = verify.BankName(f.Bank)
	}
	return map[string]any{
		"present":          f.Bank != 0,
		"secure_boot":      f.SecureBoot,
		"pk":               list(f.PK),
		"kek":              list(f.KEK),
		"db":               list(f.DB),
		"dbx":              list(f.DBX),
		"authorities":      list(f.Authorities),
		"boot_apps":        list(f.BootApps),
		"grub_commands":    list(f.GrubCommands),
		"kernel_cmdline":   f.KernelCmdline,
		"firmware_version": f.FirmwareVersion,
		"separators":       separators,
		"boot_loader":      loader,
		"events":           events,
		"bank":             bank,
		"problems":         list(f.Problems),
	}
}

// identityFacts presents the record of issued identities; without one,
// present is false and the rest empty.
func identityFacts(l *verify.IdentityLog) map[string]any {
	if l == nil {
		return map[string]any{"present": false, "pcr": int64(0), "boot_id": "", "issued": []map[string]any{}}
	}
	issued := make([]map[string]any, 0, len(l.Issued))
	for _, i := range l.Issued {
		expires := ""
		if !i.Expires.IsZero() {
			expires = i.Expires.UTC().Format(time.RFC3339)
		}
		selectors := i.Selectors
		if selectors == nil {
			selectors = []string{}
		}
		gid := int64(-1) // not recorded by agents before gid was
		if i.GID != nil {
			gid = int64(*i.GID)
		}
		issued = append(issued, map[string]any{
			"type": i.Type, "spiffe_id": i.SPIFFEID, "serial": i.Serial, "expires": expires,
			"selectors": selectors, "exe_sha256": i.ExeSHA256, "uid": int64(i.UID), "gid": gid,
			"time": i.Time.UTC().Format(time.RFC3339),
		})
	}
	return map[string]any{"present": true, "pcr": int64(l.PCR), "boot_id": l.BootID, "issued": issued}
}

// clampInt64 maps a TPM uint64 to CEL's int without wrapping negative.
func clampInt64(u uint64) int64 {
	if u > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(u)
}

// celEnv is the CEL environment declaring the facts. It is built once, on
// first use, and is safe for concurrent use.
var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.VariableWithDoc("ek", cel.MapType(cel.StringType, cel.DynType),
			"the verified EK: hash, ca, certified, manufacturer, model, version"),
		cel.VariableWithDoc("pcrs", cel.MapType(cel.StringType, cel.MapType(cel.IntType, cel.StringType)),
			"verified PCR values: bank name -> PCR index -> lowercase hex digest"),
		cel.VariableWithDoc("tpm", cel.MapType(cel.StringType, cel.IntType),
			"TPM counters from the quote: reset_count, restart_count, clock, firmware_version"),
		cel.VariableWithDoc("history", cel.MapType(cel.StringType, cel.DynType),
			"the TPM counters compared with the node's last attestation: first_seen, rebooted, resets, restarts"),
		cel.VariableWithDoc("node", cel.MapType(cel.StringType, cel.DynType),
			"what the policy documents say about the node: labels"),
		cel.VariableWithDoc("eventlog", cel.MapType(cel.StringType, cel.DynType),
			"facts from the verified event log: present, secure_boot, pk, kek, db, dbx, authorities, boot_apps, boot_loader, grub_commands, kernel_cmdline, firmware_version, separators, events, bank, problems"),
		cel.VariableWithDoc("identities", cel.MapType(cel.StringType, cel.DynType),
			"the verified record of identities the agent handed to workloads this boot: present, pcr, boot_id, issued"),
	)
})

// maxCost bounds the work of one require expression at evaluation. It is
// far above what comparisons over a few dozen PCRs cost.
const maxCost = 1_000_000

// FactGroups are the top-level facts of require expressions, by which
// Decision.Appraised names what an allowed node was appraised on.
var FactGroups = []string{"ek", "pcrs", "tpm", "history", "node", "eventlog", "identities"}

// factGroupsRead returns the fact groups a checked expression reads,
// sorted, from the checker's references to its variables.
func factGroupsRead(ast *cel.Ast) []string {
	var out []string
	for _, ref := range ast.NativeRep().ReferenceMap() {
		if slices.Contains(FactGroups, ref.Name) && !slices.Contains(out, ref.Name) {
			out = append(out, ref.Name)
		}
	}
	slices.Sort(out)
	return out
}

// hexPCRs returns a bank's PCR values as lowercase hex, all of them slices of
// one string: one allocation per bank instead of one per PCR.
func hexPCRs(v *verify.Verified, bank tpm2.TPMAlgID) map[int64]string {
	// A bank holds at most 24 PCRs of at most 64 bytes: both fit on the
	// stack, and only the string and the map are allocated.
	var stack [24 * 2 * 64]byte
	type span struct {
		idx        int64
		start, end int
	}
	var spanStack [24]span
	buf, spans := stack[:0], spanStack[:0]
	for idx, d := range v.PCRValues(bank) {
		start := len(buf)
		buf = hex.AppendEncode(buf, d)
		spans = append(spans, span{int64(idx), start, len(buf)})
	}
	all := string(buf)
	m := make(map[int64]string, len(spans))
	for _, s := range spans {
		m[s.idx] = all[s.start:s.end]
	}
	return m
}
