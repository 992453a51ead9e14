package e2e

// Interop: quotes and EK certificates produced by an independent TPM client
// (tpm2-tools) on swtpm pass keybroker's verification, and tampered ones fail
// with the check that caught them.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// quotedPCRs is the selection every interop quote covers.
var quotedPCRs = []int{0, 1, 2, 3, 7}

// measurement is extended into PCR 7 before quoting, so that the quoted
// values are not all zero.
var measurement = sha256.Sum256([]byte("keybroker interop measurement"))

// expectedPCR7 is PCR 7 after one extend from reset: SHA-256(zeros || measurement).
func expectedPCR7() []byte {
	h := sha256.New()
	h.Write(make([]byte, sha256.Size))
	h.Write(measurement[:])
	return h.Sum(nil)
}

func skipUnlessInterop(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("interop with swtpm and tpm2-tools; skipped with -short")
	}
	var missing []string
	for _, b := range []string{"tpm2_createek", "tpm2_createak", "tpm2_readpublic", "tpm2_quote",
		"tpm2_pcrextend", "tpm2_flushcontext", "tpm2_nvread"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "tpm2-tools not installed (" + strings.Join(missing, ", ") + " not on PATH; apt-get install tpm2-tools)"
	if os.Getenv("CI") == "" {
		t.Skip(msg + "; skipping, set CI to make this a failure")
	}
	t.Fatal(msg)
}

// tools runs tpm2-tools against one swtpm, in one working directory.
type tools struct {
	t    *testing.T
	dir  string
	tcti string
}

func newTools(t *testing.T, tpm *swtpmtest.TPM) *tools {
	return &tools{t: t, dir: t.TempDir(), tcti: tpm.TCTI()}
}

func (x *tools) run(args ...string) {
	x.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = x.dir
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+x.tcti)
	if out, err := cmd.CombinedOutput(); err != nil {
		x.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// flush evicts the transient objects a tool left loaded: swtpm has no
// resource manager and only a few object slots.
func (x *tools) flush() {
	x.t.Helper()
	x.run("tpm2_flushcontext", "-t")
}

func (x *tools) read(name string) []byte {
	x.t.Helper()
	b, err := os.ReadFile(filepath.Join(x.dir, name))
	if err != nil {
		x.t.Fatal(err)
	}
	return b
}

// toolQuote is what tpm2-tools produced, in the encodings the broker's API
// carries.
type toolQuote struct {
	ekPublic []byte // TPMT_PUBLIC
	akPublic []byte // TPMT_PUBLIC
	akName   []byte
	nonce    []byte // the quote's qualifying data
	quote    verify.Quote
}

// quoteWithTools reboots the TPM, extends PCR 7, then with tpm2-tools alone
// gets an EK (ekAlg "rsa" or "ecc" creates one with tpm2_createek; "persistent"
// uses swtpm_setup's certified RSA EK), creates an AK under it and quotes
// sha256 PCRs 0-3,7 with a fresh 32-byte nonce. The PCR values are read back
// through go-tpm-tools and cross-checked against tpm2_quote's own output.
func quoteWithTools(t *testing.T, tpm *swtpmtest.TPM, x *tools, ekAlg, akAlg, scheme string) toolQuote {
	t.Helper()
	tpm.Reset(t)
	x.run("tpm2_pcrextend", "7:sha256="+hex.EncodeToString(measurement[:]))

	ekCtx := "ek.ctx"
	if ekAlg == "persistent" {
		ekCtx = "0x81010001"
		x.run("tpm2_readpublic", "-c", ekCtx, "-f", "tpmt", "-o", "ek.pub")
	} else {
		x.run("tpm2_createek", "-G", ekAlg, "-c", ekCtx, "-u", "ek.pub", "-f", "tpmt")
		x.flush()
	}
	x.run("tpm2_createak", "-C", ekCtx, "-c", "ak.ctx", "-G", akAlg, "-g", "sha256", "-s", scheme,
		"-u", "ak.pub", "-f", "tpmt", "-n", "ak.name")
	x.flush()

	nonce := make([]byte, 32)
	rand.Read(nonce)
	x.run("tpm2_quote", "-c", "ak.ctx", "-l", "sha256:0,1,2,3,7", "-q", hex.EncodeToString(nonce),
		"-g", "sha256", "-m", "quote.msg", "-s", "quote.sig", "-o", "pcrs.bin", "-F", "values")
	x.flush()

	// tpm2-tools are done; go-tpm-tools is now the only client.
	rw := tpm.Dial(t)
	pcrs, err := client.ReadPCRs(rw, legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: quotedPCRs})
	if err != nil {
		t.Fatalf("unable to read PCRs: %v", err)
	}
	rw.Close()
	var concat []byte
	for _, i := range quotedPCRs {
		concat = append(concat, pcrs.Pcrs[uint32(i)]...)
	}
	if !bytes.Equal(concat, x.read("pcrs.bin")) {
		t.Fatalf("PCRs read by go-tpm-tools differ from tpm2_quote's:\n%x\n%x", concat, x.read("pcrs.bin"))
	}
	return toolQuote{
		ekPublic: x.read("ek.pub"),
		akPublic: x.read("ak.pub"),
		akName:   x.read("ak.name"),
		nonce:    nonce,
		quote: verify.Quote{
			Attest:    x.read("quote.msg"),
			Signature: x.read("quote.sig"),
			Bank:      tpm2.TPMAlgSHA256,
			PCRs:      pcrs.Pcrs,
		},
	}
}

// ekHash is verify.EKHash of a TPMT_PUBLIC's key.
func ekHash(t *testing.T, ekPublic []byte) string {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ekPublic)
	if err != nil {
		t.Fatalf("EK public from tpm2-tools is not a TPMT_PUBLIC: %v", err)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		t.Fatal(err)
	}
	h, err := verify.EKHash(key)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// cloneQuote deep-copies a quote so a test case can tamper with it.
func cloneQuote(q verify.Quote) verify.Quote {
	c := verify.Quote{Attest: bytes.Clone(q.Attest), Signature: bytes.Clone(q.Signature), Bank: q.Bank,
		PCRs: map[uint32][]byte{}}
	for k, v := range q.PCRs {
		c.PCRs[k] = bytes.Clone(v)
	}
	return c
}

func TestInteropQuote(t *testing.T) {
	skipUnlessInterop(t)
	start := time.Now()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	t.Logf("swtpm provisioned and started in %v", time.Since(start))

	variants := []struct{ name, ekAlg, akAlg, scheme string }{
		{"rsa", "rsa", "rsa", "rsassa"},
		{"ecc", "ecc", "ecc", "ecdsa"},
	}
	for _, vt := range variants {
		t.Run(vt.name, func(t *testing.T) {
			start := time.Now()
			x := newTools(t, tpm)
			tq := quoteWithTools(t, tpm, x, vt.ekAlg, vt.akAlg, vt.scheme)
			t.Logf("tpm2-tools EK+AK+quote in %v", time.Since(start))

			trust := verify.Trust{EKHashes: []string{ekHash(t, tq.ekPublic)}}
			node, err := verify.Node(tq.ekPublic, nil, nil, tq.akPublic, verify.Opts{Trust: trust})
			if err != nil {
				t.Fatalf("Node: %v", err)
			}
			if !bytes.Equal(node.AKName(), tq.akName) {
				t.Errorf("AKName = %x, tpm2_createak says %x", node.AKName(), tq.akName)
			}
			nonceHash := sha256.Sum256(tq.nonce)
			v, err := verify.Quotes(node, nonceHash, []verify.Quote{tq.quote}, verify.Opts{})
			if err != nil {
				t.Fatalf("Quotes: %v", err)
			}
			if got := v.Banks(); !slices.Equal(got, []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}) {
				t.Errorf("Banks = %v, want sha256", got)
			}
			if got := v.PCRs(tpm2.TPMAlgSHA256)[7]; !bytes.Equal(got, expectedPCR7()) {
				t.Errorf("verified PCR 7 = %x, want %x", got, expectedPCR7())
			}
			if v.EKCA() != "" || v.EKCert() != nil {
				t.Errorf("EK trusted by hash, yet EKCA=%q EKCert=%v", v.EKCA(), v.EKCert())
			}

			otherNonce := sha256.Sum256([]byte("another challenge"))
			tests := []struct {
				name      string
				tamper    func(q *verify.Quote)
				nonceHash [32]byte
				wantCheck verify.Check
				wantErr   string
			}{
				{
					name:      "flipped attest byte",
					tamper:    func(q *verify.Quote) { q.Attest[len(q.Attest)/2] ^= 0x01 },
					wantCheck: verify.CheckSignature,
					wantErr:   "quote_signature: quote signature does not verify with the AK",
				},
				{
					name:      "flipped magic",
					tamper:    func(q *verify.Quote) { q.Attest[0] ^= 0x01 },
					wantCheck: verify.CheckSignature, // the signature is checked before anything else
					wantErr:   "quote_signature: quote signature does not verify with the AK",
				},
				{
					name:      "flipped signature byte",
					tamper:    func(q *verify.Quote) { q.Signature[len(q.Signature)-1] ^= 0x01 },
					wantCheck: verify.CheckSignature,
					wantErr:   "quote_signature: quote signature does not verify with the AK",
				},
				{
					name:      "wrong nonce",
					nonceHash: otherNonce,
					wantCheck: verify.CheckNonce,
					wantErr:   "quote_nonce: quote qualifying data is not the activated challenge secret",
				},
				{
					name:      "changed PCR value",
					tamper:    func(q *verify.Quote) { q.PCRs[7][0] ^= 0x01 },
					wantCheck: verify.CheckPCRDigest,
					wantErr:   "pcr_digest: reported sha256 PCR values do not match the quoted digest",
				},
				{
					name:      "missing PCR",
					tamper:    func(q *verify.Quote) { delete(q.PCRs, 3) },
					wantCheck: verify.CheckPCRDigest,
					wantErr:   "pcr_digest: reported PCRs differ from the quoted selection",
				},
				{
					name:      "PCR swapped for an unquoted one",
					tamper:    func(q *verify.Quote) { q.PCRs[8] = q.PCRs[3]; delete(q.PCRs, 3) },
					wantCheck: verify.CheckPCRDigest,
					wantErr:   "pcr_digest: quoted PCR 3 is not reported",
				},
				{
					name:      "other bank claimed",
					tamper:    func(q *verify.Quote) { q.Bank = tpm2.TPMAlgSHA384 },
					wantCheck: verify.CheckBank,
					wantErr:   "pcr_bank: quote must select exactly the reported bank sha384",
				},
				{
					name:      "sha1 bank claimed",
					tamper:    func(q *verify.Quote) { q.Bank = tpm2.TPMAlgSHA1 },
					wantCheck: verify.CheckBank,
					wantErr:   "pcr_bank: SHA-1 PCR bank is not allowed",
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					q := cloneQuote(tq.quote)
					if tt.tamper != nil {
						tt.tamper(&q)
					}
					nh := nonceHash
					if tt.nonceHash != ([32]byte{}) {
						nh = tt.nonceHash
					}
					_, err := verify.Quotes(node, nh, []verify.Quote{q}, verify.Opts{})
					if got := verify.FailedCheck(err); got != tt.wantCheck {
						t.Fatalf("FailedCheck = %q (err %v), want %q", got, err, tt.wantCheck)
					}
					if err.Error() != tt.wantErr {
						t.Errorf("error = %q, want %q", err, tt.wantErr)
					}
				})
			}
		})
	}
}

func TestInteropEKCertificate(t *testing.T) {
	skipUnlessInterop(t)
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	x := newTools(t, tpm)
	tq := quoteWithTools(t, tpm, x, "persistent", "rsa", "rsassa")

	// The EK certificate as tpm2-tools and go-tpm-tools read it from NV.
	x.run("tpm2_nvread", "0x1c00002", "-C", "o", "-o", "ekcert.der")
	certDER := x.read("ekcert.der")
	x.run("tpm2_nvread", "0x1c00016", "-C", "o", "-o", "ecc-ekcert.der")
	eccCertDER := x.read("ecc-ekcert.der") // certifies swtpm's ECC EK, not the RSA one
	rw := tpm.Dial(t)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatalf("go-tpm-tools EK: %v", err)
	}
	if !bytes.Equal(ek.CertDERBytes(), certDER) {
		t.Fatalf("go-tpm-tools and tpm2_nvread read different EK certificates")
	}
	rw.Close()

	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		t.Fatal(err)
	}
	hash := ekHash(t, tq.ekPublic)
	if h, err := verify.EKHash(cert.PublicKey); err != nil || h != hash {
		t.Fatalf("EKHash of the certificate = %s (%v), of the TPM public area %s", h, err, hash)
	}

	root, inter := readPEM(t, tpm.RootCAFile), readPEM(t, tpm.IntermediateCAFile)
	swtpmCA := verify.CA{Name: "swtpm", Roots: pool(root), Intermediates: pool(inter)}
	otherRoot, otherInter := selfMadeCA(t)
	otherCA := verify.CA{Name: "other", Roots: pool(otherRoot), Intermediates: pool(otherInter)}

	tests := []struct {
		name          string
		cert          []byte
		intermediates [][]byte
		trust         verify.Trust
		wantCA        string
		wantCheck     verify.Check // "" means accepted
		wantErr       string       // prefix of the error
	}{
		{
			name:   "swtpm CA",
			cert:   certDER,
			trust:  verify.Trust{CAs: []verify.CA{swtpmCA}},
			wantCA: "swtpm",
		},
		{
			name:   "another CA tried first",
			cert:   certDER,
			trust:  verify.Trust{CAs: []verify.CA{otherCA, swtpmCA}},
			wantCA: "swtpm",
		},
		{
			name:          "root trusted, node presents the intermediate",
			cert:          certDER,
			intermediates: [][]byte{inter.Raw},
			trust:         verify.Trust{CAs: []verify.CA{{Name: "swtpm-root", Roots: pool(root)}}},
			wantCA:        "swtpm-root",
		},
		{
			name:      "root trusted, intermediate missing",
			cert:      certDER,
			trust:     verify.Trust{CAs: []verify.CA{{Name: "swtpm-root", Roots: pool(root)}}},
			wantCheck: verify.CheckEKTrust,
			wantErr:   "ek_trust: ek_certificate does not chain to a trusted EK CA",
		},
		{
			name:      "another CA",
			cert:      certDER,
			trust:     verify.Trust{CAs: []verify.CA{otherCA}},
			wantCheck: verify.CheckEKTrust,
			wantErr:   "ek_trust: ek_certificate does not chain to a trusted EK CA",
		},
		{
			name:          "another CA, with the swtpm intermediate presented",
			cert:          certDER,
			intermediates: [][]byte{inter.Raw},
			trust:         verify.Trust{CAs: []verify.CA{otherCA}},
			wantCheck:     verify.CheckEKTrust,
			wantErr:       "ek_trust: ek_certificate does not chain to a trusted EK CA",
		},
		{
			name:      "nothing trusted",
			cert:      certDER,
			wantCheck: verify.CheckEKTrust,
			wantErr:   "ek_trust: ek_certificate does not chain to a trusted EK CA",
		},
		{
			name:      "before the certificate is valid",
			cert:      certDER,
			trust:     verify.Trust{CAs: []verify.CA{swtpmCA}, Now: cert.NotBefore.Add(-time.Hour)},
			wantCheck: verify.CheckEKTrust,
			wantErr:   "ek_trust: ek_certificate does not chain to a trusted EK CA",
		},
		{
			name:   "another CA, EK trusted by hash",
			cert:   certDER,
			trust:  verify.Trust{CAs: []verify.CA{otherCA}, EKHashes: []string{hash}},
			wantCA: "",
		},
		{
			name:      "certificate of another EK",
			cert:      eccCertDER,
			trust:     verify.Trust{CAs: []verify.CA{swtpmCA}, EKHashes: []string{hash}},
			wantCheck: verify.CheckEKTrust,
			wantErr:   "ek_trust: ek_certificate does not certify ek_public",
		},
		{
			name:      "not a certificate",
			cert:      certDER[:100],
			trust:     verify.Trust{CAs: []verify.CA{swtpmCA}},
			wantCheck: verify.CheckInput,
			wantErr:   "input: ek_certificate is not an X.509 certificate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node, err := verify.Node(tq.ekPublic, tt.cert, tt.intermediates, tq.akPublic, verify.Opts{Trust: tt.trust})
			if tt.wantCheck != "" {
				if got := verify.FailedCheck(err); got != tt.wantCheck {
					t.Fatalf("FailedCheck = %q (err %v), want %q", got, err, tt.wantCheck)
				}
				if !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Errorf("error = %q, want prefix %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Node: %v", err)
			}
			if node.EKHash() != hash {
				t.Errorf("EKHash = %s, want %s", node.EKHash(), hash)
			}
			v, err := verify.Quotes(node, sha256.Sum256(tq.nonce), []verify.Quote{tq.quote}, verify.Opts{})
			if err != nil {
				t.Fatalf("Quotes: %v", err)
			}
			if v.EKCA() != tt.wantCA {
				t.Errorf("EKCA = %q, want %q", v.EKCA(), tt.wantCA)
			}
			facts := v.EKCert()
			if tt.wantCA == "" {
				if facts != nil {
					t.Errorf("EKCert = %+v for an EK trusted by hash", facts)
				}
				return
			}
			if facts == nil {
				t.Fatal("EKCert = nil for an EK trusted by certificate")
			}
			// swtpm writes IBM's vendor ID and model "swtpm" into the TPM SAN.
			if facts.Manufacturer != "id:00001014" || facts.Model != "swtpm" || facts.Version == "" {
				t.Errorf("EKCert TPM facts = %q/%q/%q, want id:00001014/swtpm/<version>",
					facts.Manufacturer, facts.Model, facts.Version)
			}
			if facts.Issuer != "CN=swtpm-localca" || !facts.NotAfter.Equal(cert.NotAfter) {
				t.Errorf("EKCert issuer %q, not after %v", facts.Issuer, facts.NotAfter)
			}
		})
	}
}

func readPEM(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// selfMadeCA makes a root and an intermediate that have nothing to do with
// swtpm's local CA.
func selfMadeCA(t *testing.T) (root, inter *x509.Certificate) {
	t.Helper()
	mk := func(cn string, serial int64, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(serial),
			Subject:               pkix.Name{CommonName: cn},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(time.Hour),
			KeyUsage:              x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, key
	}
	root, rootKey := mk("other-rootca", 1, nil, nil)
	inter, _ = mk("other-intermediate", 2, root, rootKey)
	return root, inter
}
