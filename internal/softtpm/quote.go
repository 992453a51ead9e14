package softtpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// sha256Hash is the AK's signing hash and the EKs' name algorithm hash.
const sha256Hash = crypto.SHA256

// MaxQualifyingData is TPM2B_DATA's limit: a TPM refuses longer
// qualifying data (TPM_RC_SIZE).
const MaxQualifyingData = 64

// Quote is TPM2_Quote by the AK of all 24 PCRs of each bank (default: the
// node's Opts.Banks) with secret as qualifying data: a TPMS_ATTEST with the
// TPM_GENERATED magic, the AK's qualified name, the node's clock and
// counters and the digest of the PCR values, signed with the AK's scheme
// (ECDSA or RSASSA, SHA-256) as a TPMT_SIGNATURE, one pb.Quote per bank.
func (n *Node) Quote(secret []byte, banks ...tpm2.TPMAlgID) ([]*pb.Quote, error) {
	if len(secret) > MaxQualifyingData {
		return nil, fmt.Errorf("qualifying data has %d bytes, at most %d allowed", len(secret), MaxQualifyingData)
	}
	if len(banks) == 0 {
		banks = n.banks
	}
	out := make([]*pb.Quote, 0, len(banks))
	for _, bank := range banks {
		q, err := n.quote(secret, bank)
		if err != nil {
			return nil, err
		}
		out = append(out, q)
	}
	return out, nil
}

func (n *Node) quote(secret []byte, bank tpm2.TPMAlgID) (*pb.Quote, error) {
	n.mu.Lock()
	b, err := n.bank(bank)
	clock := n.tick()
	n.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("unable to quote: %w", err)
	}
	// pcrDigest uses the signing scheme's hash, whatever the bank.
	digest := sha256.New()
	values := make(map[uint32][]byte, NumPCRs)
	for i, v := range b {
		digest.Write(v)
		values[uint32(i)] = slices.Clone(v)
	}
	attest := quoteAttest{
		signer:    n.akSigner,
		extraData: secret,
		clock:     clock,
		firmware:  n.firmware,
		bank:      bank,
		pcrSelect: []byte{0xff, 0xff, 0xff},
		pcrDigest: digest.Sum(nil),
	}
	msg := attest.encode()
	sig, err := n.sign(msg)
	if err != nil {
		return nil, err
	}
	return &pb.Quote{Attest: msg, Signature: sig, Pcrs: &pb.PCRValues{HashAlg: uint32(bank), Values: values}}, nil
}

// sign signs msg with the AK and returns the TPMT_SIGNATURE.
func (n *Node) sign(msg []byte) ([]byte, error) {
	d := sha256.Sum256(msg)
	switch ak := n.ak.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, ak, d[:])
		if err != nil {
			return nil, fmt.Errorf("unable to sign the quote: %w", err)
		}
		return encodeECDSASignature(tpm2.TPMAlgSHA256, fixed(r), fixed(s)), nil
	case *rsa.PrivateKey:
		s, err := rsa.SignPKCS1v15(nil, ak, sha256Hash, d[:])
		if err != nil {
			return nil, fmt.Errorf("unable to sign the quote: %w", err)
		}
		return encodeRSASSASignature(tpm2.TPMAlgSHA256, s), nil
	}
	return nil, fmt.Errorf("unsupported AK type %T", n.ak)
}

// fixed encodes a P-256 signature component in 32 bytes, as a TPM does.
func fixed(v *big.Int) []byte { return v.FillBytes(make([]byte, 32)) }

// tick reads the TPM clock: milliseconds the TPM has run, strictly
// increasing from one quote to the next, with the reset and restart
// counts; n.mu must be held.
func (n *Node) tick() tpm2.TPMSClockInfo {
	c := n.clockBase + uint64(time.Since(n.clockStart)/time.Millisecond)
	if c <= n.lastClock {
		c = n.lastClock + 1
	}
	n.lastClock = c
	return tpm2.TPMSClockInfo{Clock: c, ResetCount: n.resetCount, RestartCount: n.restartCount, Safe: true}
}
