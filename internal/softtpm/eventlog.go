package softtpm

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/broker/verify/tcglog"
)

// bootPCRs are the PCRs the default boot extends (DefaultPCRs): a node
// booted from an event log holds the log's values there instead.
const bootPCRs = 8

// EventLogPCRs returns the PCR values of a machine that booted as raw, a
// TCG PC Client event log, says, for Opts.PCRs: in each of banks (default
// SHA-256 only, the node's default bank), every PCR the log has measured
// events for holds the log's replay (the broker's own, tcglog.Replay, PCR 0
// starting from the log's StartupLocality), and PCRs 0-7 that it has no
// events for hold zero, as a TPM's PCR no event extended does (the log
// replaces the default boot, and the broker refuses a non-zero firmware PCR
// without events). Every other PCR keeps its default. It fails if raw does
// not parse or has no digests of one of banks.
func EventLogPCRs(raw []byte, banks ...tpm2.TPMAlgID) (map[tpm2.TPMAlgID]map[uint32][]byte, error) {
	if len(banks) == 0 {
		banks = []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}
	}
	log, err := tcglog.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("not a TCG event log: %w", err)
	}
	out := make(map[tpm2.TPMAlgID]map[uint32][]byte, len(banks))
	for _, bank := range banks {
		h, err := bankHash(bank)
		if err != nil {
			return nil, err
		}
		if !log.HasAlg(bank) {
			return nil, fmt.Errorf("the event log has no %s digests (it has %s), so it cannot replay into the node's %s PCRs",
				verify.BankName(bank), bankNames(log.Algs), verify.BankName(bank))
		}
		replayed, err := log.Replay(bank)
		if err != nil {
			return nil, fmt.Errorf("unable to replay the event log: %w", err)
		}
		for idx := range uint32(bootPCRs) {
			if _, ok := replayed[idx]; !ok {
				replayed[idx] = make([]byte, h.Size())
			}
		}
		out[bank] = replayed
	}
	return out, nil
}

func bankNames(algs []tpm2.TPMAlgID) string {
	names := make([]string, len(algs))
	for i, a := range algs {
		names[i] = verify.BankName(a)
	}
	return strings.Join(names, ", ")
}

// EventLog returns the event log the node sends with its attestation
// (Opts.EventLog), or nil.
func (n *Node) EventLog() []byte { return slices.Clone(n.eventLog) }
