package verify

import (
	"fmt"
	"iter"
	"maps"
	"slices"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"
)

// ClockInfo is the TPM's clock as reported in a verified quote.
type ClockInfo struct {
	Clock        uint64 // milliseconds the TPM has been powered
	ResetCount   uint32 // TPM resets (reboots) since TPM2_Clear
	RestartCount uint32 // restarts and resumes since the last reset
	Safe         bool
}

// Verified is the outcome of a successful verification: a node whose EK is
// trusted, whose AK lives in that EK's TPM, and whose quoted PCR values are
// authentic and fresh. Only this package constructs it.
type Verified struct {
	node        *NodeIdentity
	pcrs        map[tpm2.TPMAlgID]map[uint32][]byte
	clock       ClockInfo
	firmware    uint64
	quoteDigest [32]byte
	eventLog    *EventLogFacts
	identities  *IdentityLog
	history     *History
	// secret is the activated challenge secret the quotes carried, which
	// resident keys' certifies are bound to (resident.QualifyingData).
	secret   []byte
	resident []*ResidentKey
}

// Node returns the verified node identity.
func (v *Verified) Node() *NodeIdentity { return v.node }

// EKHash returns the EK identity hash.
func (v *Verified) EKHash() string { return v.node.ekHash }

// EKCA returns the name of the EK CA the EK certificate chained to, or "" if
// the EK was trusted by hash.
func (v *Verified) EKCA() string { return v.node.ekCA }

// EKCert returns the facts of the EK certificate, or nil if none was verified.
func (v *Verified) EKCert() *EKCert {
	if v.node.ekCert == nil {
		return nil
	}
	c := *v.node.ekCert
	return &c
}

// AKName returns the AK's TPM name.
func (v *Verified) AKName() []byte { return v.node.AKName() }

// Banks returns the verified PCR banks, in ascending algorithm order.
func (v *Verified) Banks() []tpm2.TPMAlgID {
	banks := make([]tpm2.TPMAlgID, 0, len(v.pcrs))
	for b := range v.pcrs {
		banks = append(banks, b)
	}
	slices.Sort(banks)
	return banks
}

// PCRs returns a copy of the verified PCR values of a bank (nil if the bank
// was not quoted).
func (v *Verified) PCRs(bank tpm2.TPMAlgID) map[uint32][]byte {
	p, ok := v.pcrs[bank]
	if !ok {
		return nil
	}
	return clonePCRs(p)
}

// PCRValues yields the verified PCR values of a bank (nothing if the bank was
// not quoted), in no particular order, without copying them: the caller must
// not modify the slices.
func (v *Verified) PCRValues(bank tpm2.TPMAlgID) iter.Seq2[uint32, []byte] {
	return maps.All(v.pcrs[bank])
}

// NumPCRs returns how many PCRs of a bank were quoted.
func (v *Verified) NumPCRs(bank tpm2.TPMAlgID) int { return len(v.pcrs[bank]) }

// QuotedPCR reports whether PCR idx of a bank was quoted.
func (v *Verified) QuotedPCR(bank tpm2.TPMAlgID, idx uint32) bool {
	_, ok := v.pcrs[bank][idx]
	return ok
}

// SealPCRs returns the verified values of the PCRs idx of a bank, in the
// form sealing takes, or an error naming the first one that was not quoted.
func (v *Verified) SealPCRs(bank tpm2.TPMAlgID, idx []uint32) (*tpmpb.PCRs, error) {
	values := v.pcrs[bank]
	out := &tpmpb.PCRs{Hash: tpmpb.HashAlgo(bank), Pcrs: make(map[uint32][]byte, len(idx))}
	for _, i := range idx {
		val, ok := values[i]
		if !ok {
			return nil, fmt.Errorf("PCR %s:%d was not quoted", BankName(bank), i)
		}
		out.Pcrs[i] = slices.Clone(val)
	}
	return out, nil
}

// Clock returns the TPM clock from the first verified quote.
func (v *Verified) Clock() ClockInfo { return v.clock }

// FirmwareVersion returns the TPM firmware version from the quote.
func (v *Verified) FirmwareVersion() uint64 { return v.firmware }

// QuoteDigest returns the SHA-256 over the verified TPMS_ATTEST structures,
// for receipts.
func (v *Verified) QuoteDigest() [32]byte { return v.quoteDigest }
