package resident

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// MaxPCR is the highest PCR index a resident key's policy may name.
const MaxPCR = 23

// PCRs selects PCRs of one bank for a resident key bound to them: the key
// is created with authPolicy = PolicyDigest (TPM2_PolicyPCR over their
// values at creation) and without userWithAuth, so the TPM signs with it
// only in a policy session whose PCRs hold those values.
type PCRs struct {
	Bank tpm2.TPMAlgID // SHA-256, SHA-384 or SHA-512
	PCRs []uint32      // ascending, each at most MaxPCR
}

// CheckBindable refuses the PCRs a key or a secret must not be bound to:
// 16 (debug) and 23 (application support) can be reset by any software at
// locality 0 (TPM2_PCR_Reset), so a value bound to them is one anyone on
// the machine can reproduce. PCRs 17 to 22 are reset by a dynamic launch
// (DRTM, localities 2 to 4) and hold its measurements; they are accepted,
// and only mean something on machines that perform one. Policies and the
// agent's flags share this rule.
func CheckBindable(pcr uint32) error {
	if pcr == 16 || pcr == 23 {
		return fmt.Errorf("PCR %d can be reset by software at locality 0 and cannot bind a key or a secret", pcr)
	}
	return nil
}

var banks = map[string]tpm2.TPMAlgID{"sha256": tpm2.TPMAlgSHA256, "sha384": tpm2.TPMAlgSHA384, "sha512": tpm2.TPMAlgSHA512}

// ParsePCRs reads a PCR selection as tpm2-tools writes it, BANK:I,J,...
// (sha256:0,7): one bank of sha256, sha384 or sha512, at least one PCR,
// each at most MaxPCR and bindable (CheckBindable), none twice. The result is sorted.
func ParsePCRs(s string) (*PCRs, error) {
	bank, list, ok := strings.Cut(s, ":")
	if !ok || list == "" {
		return nil, fmt.Errorf("PCR selection %q: want BANK:I,J,... such as sha256:0,7", s)
	}
	alg, ok := banks[bank]
	if !ok {
		return nil, fmt.Errorf("PCR selection %q: bank %q is not sha256, sha384 or sha512", s, bank)
	}
	p := &PCRs{Bank: alg}
	for _, f := range strings.Split(list, ",") {
		i, err := strconv.ParseUint(f, 10, 8)
		if err != nil || i > MaxPCR {
			return nil, fmt.Errorf("PCR selection %q: %q is not a PCR from 0 to %d", s, f, MaxPCR)
		}
		if slices.Contains(p.PCRs, uint32(i)) {
			return nil, fmt.Errorf("PCR selection %q: PCR %d is listed twice", s, i)
		}
		if err := CheckBindable(uint32(i)); err != nil {
			return nil, fmt.Errorf("PCR selection %q: %w", s, err)
		}
		p.PCRs = append(p.PCRs, uint32(i))
	}
	slices.Sort(p.PCRs)
	return p, nil
}

// String is the selection as ParsePCRs reads it.
func (p *PCRs) String() string {
	var name string
	for n, alg := range banks {
		if alg == p.Bank {
			name = n
		}
	}
	idx := make([]string, len(p.PCRs))
	for i, v := range p.PCRs {
		idx[i] = strconv.FormatUint(uint64(v), 10)
	}
	return name + ":" + strings.Join(idx, ",")
}

// Selection is the selection as the TPM takes it.
func (p *PCRs) Selection() tpm2.TPMLPCRSelection {
	idx := make([]uint, len(p.PCRs))
	for i, v := range p.PCRs {
		idx[i] = uint(v)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: p.Bank, PCRSelect: tpm2.PCClientCompatible.PCRs(idx...)}}}
}

// PolicyDigest is the authPolicy of a resident key (name algorithm
// SHA-256) bound to p holding values (one per PCR of p, in p's order, each
// of the bank's size): TPM2_PolicyPCR from an empty policy, the digest a
// trial session computes in the TPM. The broker recomputes it from the
// quoted values; the agent's TPM computes it at creation.
func (p *PCRs) PolicyDigest(values [][]byte) ([]byte, error) {
	if len(p.PCRs) == 0 || len(values) != len(p.PCRs) {
		return nil, errors.New("one value per selected PCR is needed")
	}
	var h hash.Hash
	switch p.Bank {
	case tpm2.TPMAlgSHA256:
		h = sha256.New()
	case tpm2.TPMAlgSHA384:
		h = sha512.New384()
	case tpm2.TPMAlgSHA512:
		h = sha512.New()
	default:
		return nil, fmt.Errorf("bank 0x%x is not SHA-256, SHA-384 or SHA-512", uint16(p.Bank))
	}
	// The PCR digest is in the session's hash (SHA-256, the key's name
	// algorithm), over the values of the selected bank.
	pcrDigest := sha256.New()
	for _, v := range values {
		if len(v) != h.Size() {
			return nil, fmt.Errorf("a PCR value of %d bytes is not of the bank's size %d", len(v), h.Size())
		}
		pcrDigest.Write(v)
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	cmd := tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest.Sum(nil)}, Pcrs: p.Selection()}
	if err := cmd.Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}
