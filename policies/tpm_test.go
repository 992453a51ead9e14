package policies_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/broker/verify"
)

// testCA is the name of the EK CA that issues the simulator's test EK
// certificate.
const testCA = "test-ca"

// tpmFixture is the embedded simulator with its EK, an EK certificate from
// a test CA, and an AK.
type tpmFixture struct {
	once   sync.Once
	mu     sync.Mutex // serializes TPM commands
	err    error
	sim    *simulator.Simulator
	ek, ak *client.Key
	ekPub  []byte // TPMT_PUBLIC
	akPub  []byte // TPMT_PUBLIC
	ekCert []byte // DER, issued by caPool's root
	caPool *x509.CertPool
}

// testTPM is the one simulator of this test binary (only one may be open per
// process). It is opened by useTPM and closed by TestMain.
var testTPM tpmFixture

func TestMain(m *testing.M) {
	code := m.Run()
	if testTPM.sim != nil {
		for _, k := range []*client.Key{testTPM.ak, testTPM.ek} {
			if k != nil {
				k.Close()
			}
		}
		if err := testTPM.sim.Close(); err != nil && code == 0 {
			fmt.Fprintln(os.Stderr, "unable to close the TPM simulator:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func (t *tpmFixture) open() error {
	sim, err := simulator.Get()
	if err != nil {
		return fmt.Errorf("unable to open the TPM simulator: %w", err)
	}
	t.sim = sim
	// Give PCR 7 a value other than its reset value, like a measured boot.
	digest := sha256.Sum256([]byte("secure boot state"))
	if err := legacy.PCRExtend(sim, tpmutil.Handle(7), legacy.AlgSHA256, digest[:], ""); err != nil {
		return fmt.Errorf("unable to extend PCR 7: %w", err)
	}
	if t.ek, err = client.EndorsementKeyRSA(sim); err != nil {
		return fmt.Errorf("unable to create the EK: %w", err)
	}
	if t.ak, err = client.AttestationKeyRSA(sim); err != nil {
		return fmt.Errorf("unable to create the AK: %w", err)
	}
	if t.ekPub, err = t.ek.PublicArea().Encode(); err != nil {
		return fmt.Errorf("unable to encode the EK public area: %w", err)
	}
	if t.akPub, err = t.ak.PublicArea().Encode(); err != nil {
		return fmt.Errorf("unable to encode the AK public area: %w", err)
	}
	t.ekCert, t.caPool, err = issueEKCert(t.ek.PublicKey())
	return err
}

// issueEKCert makes a test CA and an EK certificate for ekKey.
func issueEKCert(ekKey any) ([]byte, *x509.CertPool, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keybroker test EK CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to create the test EK CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, err
	}
	ekTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageKeyEncipherment,
	}
	ekDER, err := x509.CreateCertificate(rand.Reader, ekTmpl, ca, ekKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to create the test EK certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return ekDER, pool, nil
}

// useTPM returns the simulator fixture, opening it on first use.
func useTPM() (*tpmFixture, error) {
	testTPM.once.Do(func() { testTPM.err = testTPM.open() })
	return &testTPM, testTPM.err
}

// node describes how attest presents the simulator's TPM.
type node struct {
	pcrs  []int // the SHA-256 PCRs to quote; default all 24
	viaCA bool  // trust the EK by its certificate instead of by hash
}

// attest quotes the simulator and verifies the quote as the broker does,
// returning the *verify.Verified that policies evaluate.
func attest(tb testing.TB, n node) *verify.Verified {
	tb.Helper()
	v, err := attestNode(n)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// attestNode is attest for examples, which have no testing.TB.
func attestNode(n node) (*verify.Verified, error) {
	t, err := useTPM()
	if err != nil {
		return nil, err
	}
	pcrs := n.pcrs
	if pcrs == nil {
		for i := range 24 {
			pcrs = append(pcrs, i)
		}
	}
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	t.mu.Lock()
	q, err := t.ak.Quote(legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: pcrs}, nonce)
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("unable to quote: %w", err)
	}

	var trust verify.Trust
	var ekCert []byte
	if n.viaCA {
		ekCert = t.ekCert
		trust.CAs = []verify.CA{{Name: testCA, Roots: t.caPool}}
	} else {
		h, err := verify.EKHash(t.ek.PublicKey())
		if err != nil {
			return nil, err
		}
		trust.EKHashes = []string{h}
	}
	id, err := verify.Node(t.ekPub, ekCert, nil, t.akPub, verify.Opts{Trust: trust})
	if err != nil {
		return nil, fmt.Errorf("unable to verify the node: %w", err)
	}
	v, err := verify.Quotes(id, sha256.Sum256(nonce), []verify.Quote{{
		Attest: q.GetQuote(), Signature: q.GetRawSig(), Bank: tpm2.TPMAlgSHA256, PCRs: q.GetPcrs().GetPcrs(),
	}}, verify.Opts{})
	if err != nil {
		return nil, fmt.Errorf("unable to verify the quote: %w", err)
	}
	return v, nil
}

// ekHash returns the simulator EK's identity hash.
func ekHash(tb testing.TB) string {
	tb.Helper()
	t, err := useTPM()
	if err != nil {
		tb.Fatal(err)
	}
	h, err := verify.EKHash(t.ek.PublicKey())
	if err != nil {
		tb.Fatal(err)
	}
	return h
}
