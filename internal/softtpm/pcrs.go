package softtpm

import (
	"crypto"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"
)

// NumPCRs is the number of PCRs in each bank.
const NumPCRs = 24

// pcrBank holds one bank's values. A bank is never changed once shared:
// Extend replaces it.
type pcrBank [NumPCRs][]byte

// defaultEvents are what a measured boot extends into PCRs 0-7 by default:
// firmware, its configuration, option ROMs, boot loader, GPT and Secure
// Boot state, as on a physical machine (the values are fixed, so every
// default node has the same boot state, like a fleet booted from one image).
var defaultEvents = [8][]string{
	{"firmware: platform code v1.42", "firmware: SEPARATOR"},
	{"firmware config: boot order", "firmware config: SEPARATOR"},
	{"option ROM: network controller", "option ROM: SEPARATOR"},
	{"option ROM config: SEPARATOR"},
	{"EFI boot manager: shim", "EFI boot manager: grub", "EFI boot manager: vmlinuz"},
	{"GPT: disk 0", "EFI boot services: exit"},
	{"platform manufacturer: SEPARATOR"},
	{"secure boot: enabled", "secure boot: PK KEK db dbx", "secure boot: SEPARATOR", "secure boot: shim cert"},
}

var (
	defaultsMu sync.Mutex
	defaults   = map[tpm2.TPMAlgID]*pcrBank{}
)

// DefaultPCRs returns the values a node's bank holds when Opts.PCRs does not
// say otherwise: PCRs 0-7 extended with a typical measured boot, 8-16 and 23
// zero, 17-22 all ones (the DRTM PCRs of a TPM reset without a dynamic
// launch).
func DefaultPCRs(bank tpm2.TPMAlgID) (map[uint32][]byte, error) {
	b, err := defaultBank(bank)
	if err != nil {
		return nil, err
	}
	return b.values(), nil
}

func defaultBank(bank tpm2.TPMAlgID) (*pcrBank, error) {
	h, err := bankHash(bank)
	if err != nil {
		return nil, err
	}
	defaultsMu.Lock()
	defer defaultsMu.Unlock()
	if b, ok := defaults[bank]; ok {
		return b, nil
	}
	b := new(pcrBank)
	for i := range b {
		b[i] = make([]byte, h.Size())
		if i >= 17 && i <= 22 {
			for j := range b[i] {
				b[i][j] = 0xff
			}
		}
	}
	for i, events := range defaultEvents {
		for _, e := range events {
			d := h.New()
			d.Write([]byte(e))
			b[i] = extend(h, b[i], d.Sum(nil))
		}
	}
	defaults[bank] = b
	return b, nil
}

func bankHash(bank tpm2.TPMAlgID) (crypto.Hash, error) {
	switch bank {
	case tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512:
		return bank.Hash()
	}
	return 0, fmt.Errorf("PCR bank 0x%04x is not supported", uint16(bank))
}

// extend is TPM2_PCR_Extend: H(old || digest).
func extend(h crypto.Hash, old, digest []byte) []byte {
	d := h.New()
	d.Write(old)
	d.Write(digest)
	return d.Sum(nil)
}

func (b *pcrBank) values() map[uint32][]byte {
	out := make(map[uint32][]byte, NumPCRs)
	for i, v := range b {
		out[uint32(i)] = slices.Clone(v)
	}
	return out
}

// initPCRs sets the node's banks and power-on PCR values from opts.
func (n *Node) initPCRs(opts Opts) error {
	n.banks = slices.Clone(opts.Banks)
	if len(n.banks) == 0 {
		n.banks = []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}
	}
	n.initial = map[tpm2.TPMAlgID]*pcrBank{}
	for _, bank := range n.banks {
		if _, err := defaultBank(bank); err != nil {
			return err
		}
	}
	for _, bank := range slices.Sorted(maps.Keys(opts.PCRs)) {
		h, err := bankHash(bank)
		if err != nil {
			return err
		}
		def, _ := defaultBank(bank)
		b := *def
		for idx, v := range opts.PCRs[bank] {
			if idx >= NumPCRs || len(v) != h.Size() {
				return fmt.Errorf("PCR %d of bank 0x%04x: want index 0-23 and a %d-byte value", idx, uint16(bank), h.Size())
			}
			b[idx] = slices.Clone(v)
		}
		n.initial[bank] = &b
	}
	n.pcrs = map[tpm2.TPMAlgID]*pcrBank{}
	return nil
}

// bank returns the current values of a bank; n.mu must be held.
func (n *Node) bank(bank tpm2.TPMAlgID) (*pcrBank, error) {
	if b := n.pcrs[bank]; b != nil {
		return b, nil
	}
	if b := n.initial[bank]; b != nil {
		return b, nil
	}
	return defaultBank(bank)
}

// PCRs returns the current values of a bank, indexed 0-23.
func (n *Node) PCRs(bank tpm2.TPMAlgID) (map[uint32][]byte, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	b, err := n.bank(bank)
	if err != nil {
		return nil, err
	}
	return b.values(), nil
}

// Extend is TPM2_PCR_Extend of one bank: PCR index becomes H(PCR || digest).
// digest must have the bank's digest size.
func (n *Node) Extend(bank tpm2.TPMAlgID, index int, digest []byte) error {
	h, err := bankHash(bank)
	if err != nil {
		return err
	}
	if index < 0 || index >= NumPCRs || len(digest) != h.Size() {
		return fmt.Errorf("extend: want PCR 0-23 and a %d-byte digest", h.Size())
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	cur, err := n.bank(bank)
	if err != nil {
		return err
	}
	b := *cur
	b[index] = extend(h, cur[index], digest)
	n.pcrs[bank] = &b
	return nil
}

// Reboot is a TPM reset: the reset count grows, the restart count starts
// over, and every PCR returns to its power-on value (the boot measures the
// same firmware again). The clock keeps running.
func (n *Node) Reboot() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.resetCount++
	n.restartCount = 0
	clear(n.pcrs)
}
