package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// Quote is one TPM2_Quote as the node sent it.
type Quote struct {
	Attest    []byte            // TPMS_ATTEST
	Signature []byte            // TPMT_SIGNATURE
	Bank      tpm2.TPMAlgID     // the bank of PCRs
	PCRs      map[uint32][]byte // index -> digest
}

// ParseBank reads a bank name as configurations spell it: sha1, sha256,
// sha384 or sha512.
func ParseBank(name string) (tpm2.TPMAlgID, bool) {
	switch name {
	case "sha1":
		return tpm2.TPMAlgSHA1, true
	case "sha256":
		return tpm2.TPMAlgSHA256, true
	case "sha384":
		return tpm2.TPMAlgSHA384, true
	case "sha512":
		return tpm2.TPMAlgSHA512, true
	}
	return 0, false
}

// Quotes verifies the node's quotes against the challenge it was sent:
// nonceHash is the SHA-256 of the secret that MakeCredential bound to the
// node's EK and AK name, so a quote carrying that secret proves the AK lives
// in the EK's TPM and that the quote is fresh.
//
// Each quote must carry the TPM_GENERATED magic, be of type QUOTE, name the
// AK as its qualifiedSigner, carry the secret as qualifying data, be signed
// by the AK, select exactly the PCRs it reports from a single bank, and
// digest their values to its pcrDigest. Its TPMS_ATTEST and TPMT_SIGNATURE
// must be exactly their canonical encodings, nothing after them. Banks must
// not repeat.
func Quotes(node *NodeIdentity, nonceHash [sha256.Size]byte, quotes []Quote, opts Opts) (*Verified, error) {
	switch {
	case node == nil:
		return nil, fail(CheckInput, "no verified node", nil)
	case len(quotes) == 0:
		return nil, fail(CheckInput, "no quotes", nil)
	case len(quotes) > MaxQuotes:
		return nil, fail(CheckInput, "too many quotes", nil)
	}
	v := &Verified{node: node, pcrs: map[tpm2.TPMAlgID]map[uint32][]byte{}}
	digest := sha256.New()
	for i := range quotes {
		q := &quotes[i]
		if !opts.Counts(q.Bank) {
			continue
		}
		first := len(v.pcrs) == 0
		info, err := verifyQuote(node, nonceHash, q, opts)
		if err != nil {
			if !first {
				// An earlier quote proved that the TPM answered.
				err = fromTPM(err)
			}
			return nil, err
		}
		if _, dup := v.pcrs[q.Bank]; dup {
			return nil, fromTPM(fail(CheckBank, fmt.Sprintf("bank %s quoted twice", BankName(q.Bank)), nil))
		}
		v.pcrs[q.Bank] = clonePCRs(q.PCRs)
		if first {
			v.clock = ClockInfo{
				Clock: info.clock.Clock, ResetCount: info.clock.ResetCount,
				RestartCount: info.clock.RestartCount, Safe: bool(info.clock.Safe),
			}
			v.firmware = info.firmware
			v.secret = slices.Clone(info.extraData)
		}
		digest.Write(q.Attest)
	}
	if len(v.pcrs) == 0 {
		names := make([]string, len(opts.Banks))
		for i, b := range opts.Banks {
			names[i] = BankName(b)
		}
		return nil, fail(CheckBank, fmt.Sprintf("no quote of an allowed bank (%s)", strings.Join(names, ", ")), nil)
	}
	if got := digest.Sum(v.quoteDigest[:0]); len(got) != len(v.quoteDigest) {
		// A hash of another size would have left the array as it was.
		return nil, fmt.Errorf("quote digest is %d bytes, not %d", len(got), len(v.quoteDigest))
	}
	return v, nil
}

func verifyQuote(node *NodeIdentity, nonceHash [sha256.Size]byte, q *Quote, opts Opts) (*quoteAttest, error) {
	switch {
	case len(q.Attest) == 0 || len(q.Attest) > MaxQuoteAttestSize:
		return nil, fail(CheckInput, "quote attest is empty or too large", nil)
	case len(q.Signature) == 0 || len(q.Signature) > MaxSignatureSize:
		return nil, fail(CheckInput, "quote signature is empty or too large", nil)
	case len(q.PCRs) == 0 || len(q.PCRs) > maxPCRIndex+1:
		return nil, fail(CheckInput, "quote must report between 1 and 24 PCR values", nil)
	}
	bankHash, err := bankHash(q.Bank, opts.AllowSHA1)
	if err != nil {
		return nil, err
	}
	// The signature comes first: nothing else in the quote is trusted
	// before it is known to come from the AK.
	sigHash, err := verifySignature(node, q.Attest, q.Signature, opts.AllowSHA1)
	if err != nil {
		return nil, err
	}
	if len(q.Attest) < 4 || !bytes.Equal(q.Attest[:4], []byte{0xff, 'T', 'C', 'G'}) {
		return nil, fail(CheckQuoteMagic, "quote is not TPM_GENERATED", nil)
	}
	att, err := decodeQuoteAttest(q.Attest)
	if errors.Is(err, errNotQuote) {
		return nil, fail(CheckQuoteType, "attestation is not a quote", nil)
	}
	if err != nil {
		return nil, exactFailure(CheckInput, "quote attest", "TPMS_ATTEST", err)
	}
	// Before the nonce: a TPM whose AK sits where its qualified name
	// cannot be checked answers this way too, and is not deny-listed.
	if err := checkQualifiedSigner(node, att.qualifiedSigner); err != nil {
		return nil, err
	}
	got := sha256.Sum256(att.extraData)
	if len(att.extraData) != sha256.Size || subtle.ConstantTimeCompare(got[:], nonceHash[:]) != 1 {
		return nil, fail(CheckNonce, "quote qualifying data is not the activated challenge secret", nil)
	}
	// From here on the quote is the TPM's answer to this challenge.
	sels := att.selections
	if len(sels) != 1 || sels[0].Hash != q.Bank {
		return nil, fromTPM(fail(CheckBank, fmt.Sprintf("quote must select exactly the reported bank %s", BankName(q.Bank)), nil))
	}
	selected := pcrIndices(sels[0].PCRSelect)
	if len(selected) != len(q.PCRs) {
		return nil, fromTPM(fail(CheckPCRDigest, "reported PCRs differ from the quoted selection", nil))
	}
	// The values digested, on the stack: at most 24 of at most 64 bytes.
	var valBuf [(maxPCRIndex + 1) * 64]byte
	vals := valBuf[:0]
	for _, idx := range selected {
		val, ok := q.PCRs[idx]
		if !ok {
			return nil, fromTPM(fail(CheckPCRDigest, fmt.Sprintf("quoted PCR %d is not reported", idx), nil))
		}
		if len(val) != bankHash.Size() {
			return nil, fromTPM(fail(CheckInput, fmt.Sprintf("PCR %d value has the wrong size for bank %s", idx, BankName(q.Bank)), nil))
		}
		vals = append(vals, val...)
	}
	var sum [64]byte
	if subtle.ConstantTimeCompare(appendDigest(sum[:0], sigHash, vals), att.pcrDigest) != 1 {
		return nil, fromTPM(fail(CheckPCRDigest, fmt.Sprintf("reported %s PCR values do not match the quoted digest", BankName(q.Bank)), nil))
	}
	return att, nil
}

// bankHash maps a PCR bank to its hash, refusing SHA-1 unless allowed.
func bankHash(bank tpm2.TPMAlgID, allowSHA1 bool) (crypto.Hash, error) {
	switch bank {
	case tpm2.TPMAlgSHA256:
		return crypto.SHA256, nil
	case tpm2.TPMAlgSHA384:
		return crypto.SHA384, nil
	case tpm2.TPMAlgSHA512:
		return crypto.SHA512, nil
	case tpm2.TPMAlgSHA1:
		if allowSHA1 {
			return crypto.SHA1, nil
		}
		return 0, fail(CheckBank, "SHA-1 PCR bank is not allowed", nil)
	}
	return 0, fail(CheckBank, fmt.Sprintf("PCR bank 0x%04x is not supported", uint16(bank)), nil)
}

func sigHashAlg(alg tpm2.TPMIAlgHash, allowSHA1 bool) (crypto.Hash, error) {
	h, err := bankHash(alg, allowSHA1)
	if err != nil {
		return 0, fail(CheckSignature, fmt.Sprintf("quote signature hash 0x%04x is not allowed", uint16(alg)), nil)
	}
	return h, nil
}

// verifySignature checks that attest was signed by the node's AK and returns
// the signature's hash, which is also the hash of the quote's pcrDigest.
func verifySignature(node *NodeIdentity, attest, sigBytes []byte, allowSHA1 bool) (crypto.Hash, error) {
	sig, err := decodeSignature(sigBytes)
	if err != nil {
		return 0, exactFailure(CheckInput, "quote signature", "TPMT_SIGNATURE", err)
	}
	var digest [64]byte
	switch key := node.akKey.(type) {
	case *rsa.PublicKey:
		switch sig.alg {
		case tpm2.TPMAlgRSASSA:
			h, err := sigHashAlg(sig.hash, allowSHA1)
			if err != nil {
				return 0, err
			}
			if rsa.VerifyPKCS1v15(key, h, appendDigest(digest[:0], h, attest), sig.sig) != nil {
				return 0, errBadSignature()
			}
			return h, nil
		case tpm2.TPMAlgRSAPSS:
			h, err := sigHashAlg(sig.hash, allowSHA1)
			if err != nil {
				return 0, err
			}
			if rsa.VerifyPSS(key, h, appendDigest(digest[:0], h, attest), sig.sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) != nil {
				return 0, errBadSignature()
			}
			return h, nil
		}
	case *ecdsa.PublicKey:
		if sig.alg == tpm2.TPMAlgECDSA {
			h, err := sigHashAlg(sig.hash, allowSHA1)
			if err != nil {
				return 0, err
			}
			if !verifyECDSA(key, appendDigest(digest[:0], h, attest), sig.r, sig.s) {
				return 0, errBadSignature()
			}
			return h, nil
		}
	}
	return 0, fail(CheckSignature, fmt.Sprintf("signature scheme 0x%04x does not match the AK", uint16(sig.alg)), nil)
}

// verifyECDSA is ecdsa.Verify for r and s as the TPM encodes them
// (unsigned big-endian), without converting them to big.Int and back: it
// encodes them as ecdsa.Verify does, an ASN.1 SEQUENCE of two minimal
// INTEGERs, for ecdsa.VerifyASN1. Like ecdsa.Verify it refuses a zero r
// or s; it also refuses either longer than 66 bytes, the order of P-521,
// which no signature by a supported curve has.
func verifyECDSA(key *ecdsa.PublicKey, digest, r, s []byte) bool {
	const maxLen = 66
	r, s = bytes.TrimLeft(r, "\x00"), bytes.TrimLeft(s, "\x00")
	if len(r) == 0 || len(s) == 0 || len(r) > maxLen || len(s) > maxLen {
		return false
	}
	var buf [3 + 2*(2+1+maxLen)]byte
	body := derIntLen(r) + derIntLen(s)
	der := append(buf[:0], 0x30)
	if body >= 0x80 {
		der = append(der, 0x81)
	}
	der = append(der, byte(body))
	der = appendDERInt(appendDERInt(der, r), s)
	return ecdsa.VerifyASN1(key, digest, der)
}

// derIntLen is the length of the DER INTEGER of x, unsigned, minimal and
// at most 126 bytes.
func derIntLen(x []byte) int {
	if x[0]&0x80 != 0 {
		return 2 + 1 + len(x)
	}
	return 2 + len(x)
}

// appendDERInt appends the DER INTEGER of x (see derIntLen).
func appendDERInt(der, x []byte) []byte {
	der = append(der, 0x02, byte(derIntLen(x)-2))
	if x[0]&0x80 != 0 {
		der = append(der, 0)
	}
	return append(der, x...)
}

// errBadSignature is the refusal of a signature that does not verify.
func errBadSignature() error {
	return fail(CheckSignature, "quote signature does not verify with the AK", nil)
}

// pcrIndices lists the PCRs set in a TPMS_PCR_SELECTION bitmap, ascending.
func pcrIndices(bitmap []byte) []uint32 {
	n := 0
	for _, b := range bitmap {
		n += bits.OnesCount8(b)
	}
	if n == 0 {
		return nil
	}
	out := make([]uint32, 0, n)
	for i, b := range bitmap {
		for bit := 0; bit < 8; bit++ {
			if b&(1<<bit) != 0 {
				out = append(out, uint32(i*8+bit))
			}
		}
	}
	return out
}

func clonePCRs(in map[uint32][]byte) map[uint32][]byte {
	n := 0
	for _, v := range in {
		n += len(v)
	}
	// One backing array for every value: a quote carries up to 24 digests.
	buf := make([]byte, 0, n)
	out := make(map[uint32][]byte, len(in))
	for k, v := range in {
		start := len(buf)
		buf = append(buf, v...)
		out[k] = buf[start:len(buf):len(buf)]
	}
	return out
}

// BankName returns the lowercase name of a PCR bank ("sha256"), as used in
// policies, or its algorithm number in hex.
func BankName(bank tpm2.TPMAlgID) string {
	switch bank {
	case tpm2.TPMAlgSHA1:
		return "sha1"
	case tpm2.TPMAlgSHA256:
		return "sha256"
	case tpm2.TPMAlgSHA384:
		return "sha384"
	case tpm2.TPMAlgSHA512:
		return "sha512"
	}
	return fmt.Sprintf("0x%04x", uint16(bank))
}
