package softtpm

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// KeyType is the algorithm of a node's EK and AK.
type KeyType int

const (
	// ECC: an ECC P-256 EK and an ECDSA-SHA256 P-256 AK (the default).
	ECC KeyType = iota
	// RSA: an RSA-2048 EK and an RSASSA-SHA256 RSA-2048 AK.
	RSA
)

func (k KeyType) String() string {
	switch k {
	case ECC:
		return "ecc"
	case RSA:
		return "rsa"
	}
	return fmt.Sprintf("KeyType(%d)", int(k))
}

// Opts configure New. The zero value makes an ECC node with a SHA-256 bank
// holding DefaultPCRs.
type Opts struct {
	// Key is the EK and AK algorithm; default ECC.
	Key KeyType
	// Banks are the PCR banks Quote quotes when given none; default
	// SHA-256 only. SHA-1, SHA-256, SHA-384 and SHA-512 are supported.
	Banks []tpm2.TPMAlgID
	// PCRs replace DefaultPCRs for the given bank and indices (0-23), each
	// value a digest of the bank's size. The others keep their default.
	PCRs map[tpm2.TPMAlgID]map[uint32][]byte
	// EKCA, if set, issues the node an EK certificate for its EK, which
	// ChallengeRequest and AttestRequest present with the CA's
	// intermediate; nil: none, the node is trusted by EK hash only.
	EKCA *EKCA
	// EventLog, if set, is the TCG event log AttestRequest sends
	// (event_log); nil: none. New keeps it, not a copy, so a fleet can
	// share one log, and does not check it: with PCRs from EventLogPCRs
	// the node's PCRs are those the log replays to.
	EventLog []byte
}

// Node is one software TPM with its EK and AK. Its methods are safe for
// concurrent use.
type Node struct {
	key   KeyType
	ekECC *ecdh.PrivateKey // ECC EK
	ekRSA *rsa.PrivateKey  // RSA EK
	ak    crypto.Signer    // *ecdsa.PrivateKey or *rsa.PrivateKey

	ekPublic   []byte // TPMT_PUBLIC
	akPublic   []byte // TPMT_PUBLIC
	akName     []byte // TPM2B_NAME buffer: nameAlg || H(TPMT_PUBLIC)
	akSigner   []byte // qualified name: the AK as a primary of the owner hierarchy
	ekHash     string
	ekCert     []byte   // DER; nil without Opts.EKCA
	ekInters   [][]byte // DER, the EK certificate's issuers
	eventLog   []byte   // Opts.EventLog, shared: never written
	banks      []tpm2.TPMAlgID
	initial    map[tpm2.TPMAlgID]*pcrBank // PCRs at power-on (Opts.PCRs)
	firmware   uint64
	clockStart time.Time

	mu           sync.Mutex
	pcrs         map[tpm2.TPMAlgID]*pcrBank // nil entries: as initial
	clockBase    uint64                     // ms the TPM had run before clockStart
	lastClock    uint64
	resetCount   uint32
	restartCount uint32
}

// firmwareVersion is what the node reports as TPM firmware (TPMS_ATTEST
// firmwareVersion): a plausible vendor version, the same for every node.
const firmwareVersion = 0x0007_0055_0000_0000

// New makes a node with fresh keys.
func New(opts Opts) (*Node, error) {
	n := &Node{key: opts.Key, firmware: firmwareVersion, clockStart: time.Now(), eventLog: opts.EventLog}
	var err error
	switch opts.Key {
	case ECC:
		err = n.newECCKeys()
	case RSA:
		err = n.newRSAKeys()
	default:
		return nil, fmt.Errorf("unknown key type %d: want ECC or RSA", int(opts.Key))
	}
	if err != nil {
		return nil, err
	}
	if err := n.initPCRs(opts); err != nil {
		return nil, err
	}
	if opts.EKCA != nil {
		if err := n.certifyEK(opts.EKCA); err != nil {
			return nil, err
		}
	}
	// A TPM that has been running for hours to weeks, rebooted a few
	// times: counters differ from node to node as on a real fleet.
	n.clockBase = uint64(time.Hour/time.Millisecond) + mrand.Uint64N(uint64(30*24*time.Hour/time.Millisecond))
	n.resetCount = 1 + mrand.Uint32N(500)
	return n, nil
}

func (n *Node) newECCKeys() error {
	ek, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("unable to generate the EK: %w", err)
	}
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("unable to generate the AK: %w", err)
	}
	akRaw, err := ak.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return fmt.Errorf("unable to encode the AK: %w", err)
	}
	n.ekECC, n.ak = ek, ak
	return n.setPublics(&eccEKTemplate, ek.PublicKey().Bytes()[1:], &eccAKTemplate, akRaw[1:])
}

func (n *Node) newRSAKeys() error {
	ek, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("unable to generate the EK: %w", err)
	}
	ak, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("unable to generate the AK: %w", err)
	}
	n.ekRSA, n.ak = ek, ak
	return n.setPublics(&rsaEKTemplate, ek.N.FillBytes(make([]byte, 256)), &rsaAKTemplate, ak.N.FillBytes(make([]byte, 256)))
}

// setPublics encodes the EK and AK public areas from their templates and
// keys, and derives the names and the EK hash.
func (n *Node) setPublics(ekTmpl *tpm2.TPMTPublic, ekKey []byte, akTmpl *tpm2.TPMTPublic, akKey []byte) error {
	n.ekPublic, n.akPublic = encodePublic(ekTmpl, ekKey), encodePublic(akTmpl, akKey)
	var err error
	if n.akName, err = objectName(akTmpl.NameAlg, n.akPublic); err != nil {
		return err
	}
	// The qualified name of a primary key: H(hierarchy handle || name).
	h := sha256.New()
	h.Write(tpm2.PrimaryHandleName(tpm2.TPMRHOwner))
	h.Write(n.akName)
	n.akSigner = h.Sum(binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMAlgSHA256)))
	pub, err := n.EKPublicKey()
	if err != nil {
		return err
	}
	if n.ekHash, err = verify.EKHash(pub); err != nil {
		return err
	}
	return nil
}

// EKPublicKey returns the EK's public key.
func (n *Node) EKPublicKey() (crypto.PublicKey, error) {
	if n.ekRSA != nil {
		return &n.ekRSA.PublicKey, nil
	}
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), n.ekECC.PublicKey().Bytes())
	if err != nil {
		return nil, fmt.Errorf("unable to read the EK public key: %w", err)
	}
	return key, nil
}

// certifyEK has ca issue the node's EK certificate.
func (n *Node) certifyEK(ca *EKCA) error {
	pub, err := n.EKPublicKey()
	if err != nil {
		return err
	}
	if n.ekCert, err = ca.Issue(pub); err != nil {
		return err
	}
	n.ekInters = [][]byte{ca.inter.Raw}
	return nil
}

// EKCertificate returns the node's EK certificate (DER) and the
// intermediates it presents with it, or nil without Opts.EKCA.
func (n *Node) EKCertificate() (cert []byte, intermediates [][]byte) {
	return slices.Clone(n.ekCert), cloneAll(n.ekInters)
}

func cloneAll(bs [][]byte) [][]byte {
	if bs == nil {
		return nil
	}
	out := make([][]byte, len(bs))
	for i, b := range bs {
		out[i] = slices.Clone(b)
	}
	return out
}

// Key returns the node's key type.
func (n *Node) Key() KeyType { return n.key }

// EKHash returns the EK's identity as the broker computes it (verify.EKHash),
// the value to put on its ek_allow list.
func (n *Node) EKHash() string { return n.ekHash }

// EKPublic returns the EK's public area.
func (n *Node) EKPublic() *tpm2.TPMTPublic {
	if n.ekRSA != nil {
		pub := rsaEKTemplate
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: n.ekRSA.N.FillBytes(make([]byte, 256))})
		return &pub
	}
	raw := n.ekECC.PublicKey().Bytes() // 0x04 || X || Y
	pub := eccEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
	})
	return &pub
}

// AKName returns the AK's TPM name (nameAlg || digest of its public area),
// the name MakeCredential binds a challenge to.
func (n *Node) AKName() []byte { return slices.Clone(n.akName) }

// ChallengeRequest returns the node's EK and AK as the agent sends them:
// TPMT_PUBLIC each, and with Opts.EKCA the EK certificate and its
// intermediate.
func (n *Node) ChallengeRequest() *pb.ChallengeRequest {
	return &pb.ChallengeRequest{EkPublic: slices.Clone(n.ekPublic), AkPublic: slices.Clone(n.akPublic),
		EkCertificate: slices.Clone(n.ekCert), EkIntermediates: cloneAll(n.ekInters)}
}

// AttestRequest answers the challenge challengeID with quotes, presenting
// the same EK and AK material as ChallengeRequest and the node's event log
// (Opts.EventLog), if any.
func (n *Node) AttestRequest(challengeID string, quotes []*pb.Quote) *pb.AttestRequest {
	return &pb.AttestRequest{ChallengeId: challengeID, Quotes: quotes,
		EkPublic: slices.Clone(n.ekPublic), AkPublic: slices.Clone(n.akPublic),
		EkCertificate: slices.Clone(n.ekCert), EkIntermediates: cloneAll(n.ekInters),
		EventLog: slices.Clone(n.eventLog)}
}

// errNotTPM is the one error for a structure the node cannot parse.
var errNotTPM = errors.New("not a TPM structure")
