package evidencetest

import (
	"bytes"
	"crypto"
	_ "crypto/sha1" // register the hashes of the PCR banks
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// TCG event types used here (TCG PC Client Platform Firmware Profile,
// "Events"). Defined here rather than taken from a parser, so that the
// generator does not share a parser's reading of the specification.
const (
	EvPostCode                   uint32 = 0x00000001
	EvNoAction                   uint32 = 0x00000003
	EvSeparator                  uint32 = 0x00000004
	EvSCRTMVersion               uint32 = 0x00000008
	EvIPL                        uint32 = 0x0000000d
	EvEFIVariableDriverConfig    uint32 = 0x80000001
	EvEFIVariableBoot            uint32 = 0x80000002
	EvEFIBootServicesApplication uint32 = 0x80000003
	EvEFIGPTEvent                uint32 = 0x80000006
	EvEFIAction                  uint32 = 0x80000007
	EvEFIPlatformFirmwareBlob    uint32 = 0x80000008
	EvEFIHandoffTables           uint32 = 0x80000009
	EvEFIVariableAuthority       uint32 = 0x800000e0
)

// Event is one measurement: a TCG_PCR_EVENT2 in the log and one extend of
// each bank of the TPM.
type Event struct {
	PCR  uint32
	Type uint32 // TCG event type, one of the Ev... constants or any other
	Data []byte // the event data as logged

	// Digests holds the digest extended into each bank. A bank missing from
	// the map (or a nil map) gets the hash of Data, except for EvNoAction
	// events, which are logged with all-zero digests and never extended.
	// Boot fills every bank explicitly, including the events whose digest,
	// per the TCG specification, covers something else than Data (EFI
	// applications, firmware blobs, GRUB strings, boot variables).
	Digests map[crypto.Hash][]byte

	// derive recomputes the digest from new data (EditEvent); nil means the
	// digest covers something that is not in the log, such as a PE image.
	derive func(data []byte, bank crypto.Hash) []byte
}

// Digest returns the digest of e in bank: Digests[bank] if set, zeros for
// EvNoAction, or else the hash of Data.
func (e Event) Digest(bank crypto.Hash) []byte {
	if d, ok := e.Digests[bank]; ok {
		return d
	}
	if e.Type == EvNoAction {
		return make([]byte, bank.Size())
	}
	return hashOf(bank, e.Data)
}

func hashOf(bank crypto.Hash, data []byte) []byte {
	h := bank.New()
	h.Write(data)
	return h.Sum(nil)
}

// Log is a TCG PC Client crypto-agile event log together with what it
// measured. Build one with Boot, or by hand; Extend replays it into a TPM.
type Log struct {
	// Banks lists the PCR banks the log carries digests for, in the order of
	// the Spec ID event. Supported: crypto.SHA1, SHA256, SHA384, SHA512.
	Banks  []crypto.Hash
	Events []Event
}

// algID returns the TPM_ALG_ID of a bank; it panics on other hashes, a
// mistake in the test that builds the log.
func algID(bank crypto.Hash) uint16 {
	switch bank {
	case crypto.SHA1:
		return 0x0004
	case crypto.SHA256:
		return 0x000b
	case crypto.SHA384:
		return 0x000c
	case crypto.SHA512:
		return 0x000d
	}
	panic(fmt.Sprintf("evidencetest: unsupported PCR bank %v", bank))
}

// Bytes encodes the log as firmware hands it to the OS
// (/sys/kernel/security/tpm0/binary_bios_measurements): first a
// TCG_PCClientPCREvent in the SHA-1 format (PCR 0, EV_NO_ACTION, zero digest)
// holding the TCG_EfiSpecIDEvent "Spec ID Event03" (PFP 2.0 errata 2, UINTN
// of 8 bytes) that lists the banks, then one TCG_PCR_EVENT2 per event with a
// digest for every bank. It panics if Banks holds an unsupported hash.
func (l *Log) Bytes() []byte {
	var spec []byte
	spec = append(spec, "Spec ID Event03\x00"...)
	spec = binary.LittleEndian.AppendUint32(spec, 0) // platformClass: client
	spec = append(spec, 0, 2, 2, 2)                  // specVersionMinor, Major, specErrata, uintnSize (UINT64)
	spec = binary.LittleEndian.AppendUint32(spec, uint32(len(l.Banks)))
	for _, bank := range l.Banks {
		spec = binary.LittleEndian.AppendUint16(spec, algID(bank))
		spec = binary.LittleEndian.AppendUint16(spec, uint16(bank.Size()))
	}
	spec = append(spec, 0) // vendorInfoSize

	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, EvNoAction)
	b = append(b, make([]byte, 20)...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(spec)))
	b = append(b, spec...)

	for _, e := range l.Events {
		b = binary.LittleEndian.AppendUint32(b, e.PCR)
		b = binary.LittleEndian.AppendUint32(b, e.Type)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(l.Banks)))
		for _, bank := range l.Banks {
			b = binary.LittleEndian.AppendUint16(b, algID(bank))
			b = append(b, e.Digest(bank)...)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
		b = append(b, e.Data...)
	}
	return b
}

// startupLocality returns the locality of the log's StartupLocality event (the
// initial value of PCR 0 ends in it), or 0 without one.
func (l *Log) startupLocality() byte {
	for _, e := range l.Events {
		if e.PCR == 0 && e.Type == EvNoAction && len(e.Data) == 17 && bytes.HasPrefix(e.Data, []byte("StartupLocality\x00")) {
			return e.Data[16]
		}
	}
	return 0
}

// PCRs replays the log in bank and returns the value of every PCR that at
// least one event extends; PCRs no event touches are left out (they hold
// their reset value: zeros for PCRs 0–16 and 23, ones for 17–22). PCRs start
// at zero, except that PCR 0 ends in the locality of a StartupLocality
// EV_NO_ACTION event (0 in Boot's logs, matching a TPM started from locality
// 0 as the simulator and swtpm are).
func (l *Log) PCRs(bank crypto.Hash) map[uint32][]byte {
	pcrs := map[uint32][]byte{}
	for _, e := range l.Events {
		if e.Type == EvNoAction {
			continue
		}
		v, ok := pcrs[e.PCR]
		if !ok {
			v = make([]byte, bank.Size())
			if e.PCR == 0 {
				v[len(v)-1] = l.startupLocality()
			}
		}
		h := bank.New()
		h.Write(v)
		h.Write(e.Digest(bank))
		pcrs[e.PCR] = h.Sum(nil)
	}
	return pcrs
}

// Extend extends every event's digest, in log order, into each bank of
// l.Banks of the TPM behind rw (TPM2_PCR_Extend, one bank per command, with
// an empty password for the PCR). EvNoAction events are skipped, as firmware
// does. Every bank the TPM has allocated must be in l.Banks, or that bank
// will not replay; a StartupLocality other than the TPM's own makes PCR 0
// differ. PCRs 17–22 are not extendable from locality 0.
func (l *Log) Extend(rw io.ReadWriter) error {
	algs := make([]tpm2.Algorithm, len(l.Banks))
	for i, bank := range l.Banks {
		alg, err := tpm2.HashToAlgorithm(bank)
		if err != nil {
			return fmt.Errorf("unable to map PCR bank %v to a TPM algorithm: %w", bank, err)
		}
		algs[i] = alg
	}
	for i, e := range l.Events {
		if e.Type == EvNoAction {
			continue
		}
		for j, bank := range l.Banks {
			if err := tpm2.PCRExtend(rw, tpmutil.Handle(e.PCR), algs[j], e.Digest(bank), ""); err != nil {
				return fmt.Errorf("unable to extend event %d into PCR %d of the %v bank: %w", i, e.PCR, bank, err)
			}
		}
	}
	return nil
}

// AllocatedBanks returns the PCR banks the TPM behind rw has allocated, in
// the TPM's order: the Banks to Boot with, since Extend must reach them all.
func AllocatedBanks(rw io.ReadWriter) ([]crypto.Hash, error) {
	sels, err := client.AllocatedPCRs(rw)
	if err != nil {
		return nil, fmt.Errorf("unable to list the allocated PCR banks: %w", err)
	}
	banks := make([]crypto.Hash, 0, len(sels))
	for _, sel := range sels {
		h, err := sel.Hash.Hash()
		if err != nil {
			return nil, fmt.Errorf("unsupported PCR bank 0x%04x: %w", uint16(sel.Hash), err)
		}
		banks = append(banks, h)
	}
	return banks, nil
}

// Clone returns a deep copy of l.
func (l *Log) Clone() *Log {
	c := &Log{Banks: slices.Clone(l.Banks), Events: make([]Event, len(l.Events))}
	for i, e := range l.Events {
		e.Data = bytes.Clone(e.Data)
		if e.Digests != nil {
			d := make(map[crypto.Hash][]byte, len(e.Digests))
			for bank, v := range maps.All(e.Digests) {
				d[bank] = bytes.Clone(v)
			}
			e.Digests = d
		}
		c.Events[i] = e
	}
	return c
}

// Find returns the indices of the events on pcr of type typ whose data
// contains sub (every such event if sub is empty), in log order.
func (l *Log) Find(pcr, typ uint32, sub []byte) []int {
	var idx []int
	for i, e := range l.Events {
		if e.PCR == pcr && e.Type == typ && bytes.Contains(e.Data, sub) {
			idx = append(idx, i)
		}
	}
	return idx
}
