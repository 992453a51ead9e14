package agent

import (
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"

	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/legacy/tpm2"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/resident"
	"github.com/keybroker/keybroker/sealing"
)

// NodeOpts choose the node's keys. The zero value uses the RSA EK (the one TPM
// vendors certify) and an RSA AK.
type NodeOpts struct {
	// AK is "rsa" (RSA-2048, RSASSA-SHA256; default) or "ecc" (P-256, ECDSA-SHA256).
	AK string
	// Banks lists the PCR banks to quote. Default: SHA-256, plus SHA-384 when
	// the TPM has that bank allocated. SHA-1 is never quoted by default.
	Banks []tpm2.Algorithm
	// EKIntermediates are intermediate CA certificates (DER) sent with the EK
	// certificate, for a broker whose ek_ca holds the vendor's root but not
	// the intermediate that issued this TPM's EK certificate. They only help
	// build a chain: the broker still requires it to end at a root it
	// trusts. Default none; at most MaxEKIntermediates certificates of at
	// most MaxEKIntermediateSize bytes each, MaxEKIntermediatesSize in all
	// (see ReadEKIntermediates).
	EKIntermediates [][]byte
	// TPMResident names the tpm_resident releases the node expects (at
	// most MaxTPMResident). Before each attestation the agent creates one
	// ECDSA P-256 signing key per name inside the TPM, under the storage
	// key TSS2 key files name as TPM_RH_OWNER, certifies it with the AK
	// for the challenge and sends the certify with Attest; the broker
	// signs a certificate for the key of the release of that name, and the
	// agent writes the key as a TSS2 PEM key file. The agent does not know
	// the broker's policies: a release it does not name gets no key and
	// is refused by the broker.
	TPMResident []string
	// TPMResidentPCRs binds the keys of the tpm_resident releases it
	// names (each also in TPMResident) to the values those PCRs hold when
	// the key is created: its authPolicy is TPM2_PolicyPCR over them, so it
	// signs only in that state. For an x509_svid release whose pcrs ask
	// for it; the broker refuses a key bound to other PCRs or values.
	TPMResidentPCRs map[string]*resident.PCRs
	// TPM, if set, is how a tpm_resident node SVID's key reaches the TPM
	// to sign the agent's TLS handshakes with the broker, after this Node
	// may be closed (keybroker-agent run opens the TPM per use). Nil:
	// through the Node's own connection, which must then stay open and
	// not be used by anything else during a handshake.
	TPM resident.TPMFunc
}

// Limits on NodeOpts.EKIntermediates. The broker refuses a challenge request
// with more than 8 intermediates or one larger than 8 KiB, and stores at most
// 64 KiB per challenge (EK and AK publics and the EK certificate included).
const (
	MaxEKIntermediates     = 8
	MaxEKIntermediateSize  = 8 << 10
	MaxEKIntermediatesSize = 48 << 10
)

// Node holds the TPM keys of this machine: the EK (with its certificate when
// the TPM carries one) and an AK created under the owner hierarchy.
type Node struct {
	rw            io.ReadWriter
	ek            *client.Key
	ak            *client.Key
	banks         []tpm2.Algorithm
	intermediates [][]byte
	residentNames []string
	residentPCRs  map[string]*resident.PCRs
	tpm           resident.TPMFunc
	// resident are the keys created for the last attestation.
	resident []*resident.Key
}

// NewNode loads or creates the EK and AK in the TPM.
func NewNode(rw io.ReadWriter, opts NodeOpts) (*Node, error) {
	if err := checkEKIntermediates(opts.EKIntermediates); err != nil {
		return nil, err
	}
	if err := checkTPMResident(opts.TPMResident, opts.TPMResidentPCRs); err != nil {
		return nil, err
	}
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		return nil, fmt.Errorf("unable to load the EK: %w", err)
	}
	var ak *client.Key
	switch opts.AK {
	case "", "rsa":
		ak, err = client.AttestationKeyRSA(rw)
	case "ecc":
		ak, err = client.AttestationKeyECC(rw)
	default:
		ek.Close()
		return nil, fmt.Errorf("unknown AK type %q: want rsa or ecc", opts.AK)
	}
	if err != nil {
		ek.Close()
		return nil, fmt.Errorf("unable to create the AK: %w", err)
	}
	n := &Node{rw: rw, ek: ek, ak: ak, banks: opts.Banks, intermediates: cloneAll(opts.EKIntermediates),
		residentNames: slices.Clone(opts.TPMResident), residentPCRs: maps.Clone(opts.TPMResidentPCRs), tpm: opts.TPM}
	if n.tpm == nil {
		n.tpm = func(fn func(io.ReadWriter) error) error { return fn(rw) }
	}
	if len(n.banks) == 0 {
		if n.banks, err = defaultBanks(rw); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

func defaultBanks(rw io.ReadWriter) ([]tpm2.Algorithm, error) {
	sels, err := client.AllocatedPCRs(rw)
	if err != nil {
		return nil, fmt.Errorf("unable to read allocated PCR banks: %w", err)
	}
	var banks []tpm2.Algorithm
	for _, want := range []tpm2.Algorithm{tpm2.AlgSHA256, tpm2.AlgSHA384} {
		for _, s := range sels {
			if s.Hash == want && len(s.PCRs) > 0 {
				banks = append(banks, want)
			}
		}
	}
	if len(banks) == 0 {
		return nil, errors.New("the TPM has no SHA-256 or SHA-384 PCR bank allocated")
	}
	return banks, nil
}

// Close flushes the node's keys from the TPM (persistent handles stay).
func (n *Node) Close() {
	n.ak.Close()
	n.ek.Close()
}

// EK returns the endorsement key, for opening envelopes.
func (n *Node) EK() *client.Key { return n.ek }

// ChallengeRequest returns the node's EK and AK as the broker expects them.
func (n *Node) ChallengeRequest() (*pb.ChallengeRequest, error) {
	ekPub, err := n.ek.PublicArea().Encode()
	if err != nil {
		return nil, fmt.Errorf("unable to encode the EK public area: %w", err)
	}
	akPub, err := n.ak.PublicArea().Encode()
	if err != nil {
		return nil, fmt.Errorf("unable to encode the AK public area: %w", err)
	}
	return &pb.ChallengeRequest{
		EkPublic:        ekPub,
		EkCertificate:   n.ek.CertDERBytes(),
		EkIntermediates: cloneAll(n.intermediates),
		AkPublic:        akPub,
	}, nil
}

// ReadEKIntermediates reads NodeOpts.EKIntermediates from a PEM file holding
// one or more CERTIFICATE blocks (and nothing else), within the limits
// NewNode checks.
func ReadEKIntermediates(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("unable to read EK intermediates: %w", err)
	}
	defer f.Close()
	// PEM is base64 (4/3) plus headers and line breaks: twice the DER
	// limit is ample for any file within it.
	src, err := io.ReadAll(io.LimitReader(f, 2*MaxEKIntermediatesSize+1))
	if err != nil {
		return nil, fmt.Errorf("unable to read EK intermediates: %w", err)
	}
	if len(src) > 2*MaxEKIntermediatesSize {
		return nil, fmt.Errorf("EK intermediates %s: file exceeds %d bytes", path, 2*MaxEKIntermediatesSize)
	}
	ders, err := parseEKIntermediates(src)
	if err != nil {
		return nil, fmt.Errorf("EK intermediates %s: %w", path, err)
	}
	return ders, nil
}

// parseEKIntermediates returns the DER of every PEM certificate in src.
func parseEKIntermediates(src []byte) ([][]byte, error) {
	var ders [][]byte
	rest := src
	for i := 1; ; i++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is a %s, not a CERTIFICATE", i, block.Type)
		}
		ders = append(ders, block.Bytes)
	}
	if len(ders) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	if err := checkEKIntermediates(ders); err != nil {
		return nil, err
	}
	return ders, nil
}

// checkEKIntermediates enforces the limits on NodeOpts.EKIntermediates and
// that each is an X.509 certificate.
func checkEKIntermediates(ders [][]byte) error {
	if len(ders) > MaxEKIntermediates {
		return fmt.Errorf("%d EK intermediates, at most %d allowed", len(ders), MaxEKIntermediates)
	}
	total := 0
	for i, der := range ders {
		total += len(der)
		if len(der) > MaxEKIntermediateSize {
			return fmt.Errorf("EK intermediate %d is %d bytes, at most %d allowed", i+1, len(der), MaxEKIntermediateSize)
		}
		if _, err := x509.ParseCertificate(der); err != nil {
			return fmt.Errorf("EK intermediate %d is not an X.509 certificate: %w", i+1, err)
		}
	}
	if total > MaxEKIntermediatesSize {
		return fmt.Errorf("EK intermediates are %d bytes, at most %d allowed", total, MaxEKIntermediatesSize)
	}
	return nil
}

func cloneAll(bs [][]byte) [][]byte {
	if len(bs) == 0 {
		return nil
	}
	out := make([][]byte, len(bs))
	for i, b := range bs {
		out[i] = slices.Clone(b)
	}
	return out
}

// Activate recovers the challenge secret with TPM2_ActivateCredential. It
// succeeds only if the credential was made for this TPM's EK and this AK.
func (n *Node) Activate(resp *pb.ChallengeResponse) ([]byte, error) {
	blob, err := unsize(resp.GetCredentialBlob())
	if err != nil {
		return nil, fmt.Errorf("credential_blob: %w", err)
	}
	secret, err := unsize(resp.GetEncryptedSecret())
	if err != nil {
		return nil, fmt.Errorf("encrypted_secret: %w", err)
	}
	sess, err := client.NewEKSession(n.rw)
	if err != nil {
		return nil, fmt.Errorf("unable to start the EK policy session: %w", err)
	}
	defer sess.Close()
	ekAuth, err := sess.Auth()
	if err != nil {
		return nil, fmt.Errorf("unable to authorize the EK: %w", err)
	}
	akAuth := tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession}
	out, err := tpm2.ActivateCredentialUsingAuth(n.rw, []tpm2.AuthCommand{akAuth, ekAuth}, n.ak.Handle(), n.ek.Handle(), blob, secret)
	if err != nil {
		return nil, fmt.Errorf("the TPM refused to activate the credential (not made for this TPM's EK and AK): %w", err)
	}
	return out, nil
}

// Quote quotes every PCR of each configured bank with the activated secret as
// qualifying data.
func (n *Node) Quote(secret []byte) ([]*pb.Quote, error) {
	return n.quote(secret, n.banks)
}

// QuoteFor is Quote for the challenge ch: only the configured banks that
// the broker counts (ch.pcr_banks; empty: all) are quoted, each quote
// costing the TPM a signature. When the broker counts none of them, every
// configured bank is quoted, and the broker's refusal names the banks it
// wants.
func (n *Node) QuoteFor(ch *pb.ChallengeResponse, secret []byte) ([]*pb.Quote, error) {
	want := ch.GetPcrBanks()
	if len(want) == 0 {
		return n.quote(secret, n.banks)
	}
	var banks []tpm2.Algorithm
	for _, b := range n.banks {
		if slices.Contains(want, uint32(b)) {
			banks = append(banks, b)
		}
	}
	if len(banks) == 0 {
		banks = n.banks
	}
	return n.quote(secret, banks)
}

func (n *Node) quote(secret []byte, banks []tpm2.Algorithm) ([]*pb.Quote, error) {
	var out []*pb.Quote
	for _, bank := range banks {
		sel := tpm2.PCRSelection{Hash: bank, PCRs: allPCRs()}
		q, err := n.ak.Quote(sel, secret)
		if err != nil {
			return nil, fmt.Errorf("unable to quote bank 0x%04x: %w", uint16(bank), err)
		}
		out = append(out, &pb.Quote{Attest: q.GetQuote(), Signature: q.GetRawSig(), Pcrs: PCRValuesToProto(q.GetPcrs())})
	}
	return out, nil
}

// Open opens a released credential inside the TPM and returns its payload.
func (n *Node) Open(c *pb.Credential) ([]byte, error) {
	out, err := sealing.OpenCredential(n.ek, c)
	if errors.Is(err, sealing.ErrImport) {
		// go-tpm-tools keeps one EK policy session per loaded key; a
		// TPM2_Import the TPM refused leaves it spent, and every later
		// import would fail its policy check. Load the EK afresh.
		if ek, rerr := client.EndorsementKeyRSA(n.rw); rerr == nil {
			n.ek.Close()
			n.ek = ek
		}
	}
	return out, err
}

// openSealed opens c as Open does, and says so when a pcr_sealed
// credential does not open because the PCRs moved since the attestation.
func (n *Node) openSealed(c *pb.Credential) ([]byte, error) {
	out, err := n.Open(c)
	if err != nil && errors.Is(err, sealing.ErrImport) && c.GetMode() == pb.ReleaseMode_PCR_SEALED {
		err = fmt.Errorf("credential %q is sealed to PCR values this TPM no longer holds: %w", c.GetName(), err)
	}
	return out, err
}

func allPCRs() []int {
	pcrs := make([]int, 24)
	for i := range pcrs {
		pcrs[i] = i
	}
	return pcrs
}

// PCRValuesToProto converts go-tpm-tools PCRs to the API's form.
func PCRValuesToProto(p *tpmpb.PCRs) *pb.PCRValues {
	if p == nil {
		return nil
	}
	return &pb.PCRValues{HashAlg: uint32(p.GetHash()), Values: p.GetPcrs()}
}

// unsize strips and checks the 16-bit size prefix of a TPM2B.
func unsize(b []byte) ([]byte, error) {
	if len(b) < 2 || int(binary.BigEndian.Uint16(b)) != len(b)-2 {
		return nil, errors.New("malformed TPM2B")
	}
	return b[2:], nil
}
