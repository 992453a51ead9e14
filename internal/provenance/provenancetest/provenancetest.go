// Package provenancetest signs artifacts for tests with sigstore-go's own
// signing API: with a key (KeySigner), or keyless with a test Sigstore
// (CA: a Fulcio-style CA and a timestamp authority, exported as a
// trusted_root.json). It is for tests only.
package provenancetest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"google.golang.org/protobuf/encoding/protojson"
)

// KeySigner signs with its own ECDSA P-256 key.
type KeySigner struct {
	kp *sign.EphemeralKeypair
	// PublicKeyPEM is the key as a policy's signer block takes it.
	PublicKeyPEM []byte
}

// NewKeySigner returns a signer with a fresh key.
func NewKeySigner(tb testing.TB) *KeySigner {
	tb.Helper()
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		tb.Fatal(err)
	}
	pemKey, err := kp.GetPublicKeyPem()
	if err != nil {
		tb.Fatal(err)
	}
	return &KeySigner{kp: kp, PublicKeyPEM: []byte(pemKey)}
}

// Sign returns a Sigstore bundle (JSON) of a signature of artifact, with
// no timestamp and no transparency log entry (as cosign sign-blob
// --tlog-upload=false makes).
func (s *KeySigner) Sign(tb testing.TB, artifact []byte) []byte {
	tb.Helper()
	b, err := sign.Bundle(&sign.PlainData{Data: artifact}, s.kp, sign.BundleOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return marshal(tb, b)
}

// SignStatement returns a Sigstore bundle (JSON) of a DSSE envelope
// holding an in-toto statement of predicateType whose subject is artifact,
// with no timestamp and no transparency log entry.
func (s *KeySigner) SignStatement(tb testing.TB, artifact []byte, predicateType string) []byte {
	tb.Helper()
	sum := sha256.Sum256(artifact)
	st, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"name": "artifact", "digest": map[string]string{"sha256": hex.EncodeToString(sum[:])}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	})
	if err != nil {
		tb.Fatal(err)
	}
	b, err := sign.Bundle(&sign.DSSEData{Data: st, PayloadType: "application/vnd.in-toto+json"}, s.kp, sign.BundleOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return marshal(tb, b)
}

// SignFile signs the file at path and writes the bundle to bundlePath.
func (s *KeySigner) SignFile(tb testing.TB, path, bundlePath string) {
	tb.Helper()
	writeBundle(tb, bundlePath, s.Sign(tb, readFile(tb, path)))
}

// CA is a test Sigstore: a root CA with a Fulcio-style intermediate that
// certifies signing keys for an OIDC identity, and a timestamp authority.
type CA struct {
	vs           *ca.VirtualSigstore
	interm       *x509.Certificate
	intermSigner any
	// TrustedRootJSON is the trusted_root.json a policy's trusted_root
	// block takes.
	TrustedRootJSON []byte
}

// NewCA returns a test Sigstore and its trusted root (Fulcio CA and
// timestamp authority; no transparency or CT log).
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		tb.Fatal(err)
	}
	rootCert, rootKey, err := ca.GenerateRootCa()
	if err != nil {
		tb.Fatal(err)
	}
	interm, intermKey, err := ca.GenerateFulcioIntermediate(rootCert, rootKey)
	if err != nil {
		tb.Fatal(err)
	}
	fulcio := &root.FulcioCertificateAuthority{Root: rootCert, Intermediates: []*x509.Certificate{interm},
		ValidityPeriodStart: time.Now().Add(-24 * time.Hour), URI: "https://fulcio.test"}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, []root.CertificateAuthority{fulcio}, nil, vs.TimestampingAuthorities(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	js, err := tr.MarshalJSON()
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{vs: vs, interm: interm, intermSigner: intermKey, TrustedRootJSON: js}
}

// SignOpts vary a keyless signature, to make bad ones.
type SignOpts struct {
	// NotBefore starts the certificate's 10 minutes of validity; zero:
	// now.
	NotBefore time.Time
	// NoTimestamp leaves the signed timestamp out.
	NoTimestamp bool
	// TimestampBy has another CA's timestamp authority sign the
	// timestamp; nil: this CA's.
	TimestampBy *CA
}

// Sign returns a bundle of a signature of artifact by a fresh key that the
// CA certifies for subject (an email address, or a URI) at issuer, with a
// signed timestamp.
func (c *CA) Sign(tb testing.TB, artifact []byte, issuer, subject string, opts SignOpts) []byte {
	tb.Helper()
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		tb.Fatal(err)
	}
	nb := opts.NotBefore
	if nb.IsZero() {
		nb = time.Now().Add(-time.Minute)
	}
	b, err := sign.Bundle(&sign.PlainData{Data: artifact}, kp, sign.BundleOptions{
		CertificateProvider: certProvider{c: c, issuer: issuer, subject: subject, notBefore: nb},
	})
	if err != nil {
		tb.Fatal(err)
	}
	if !opts.NoTimestamp {
		tsa := c
		if opts.TimestampBy != nil {
			tsa = opts.TimestampBy
		}
		ts, err := tsa.vs.TimestampResponse(b.GetMessageSignature().GetSignature())
		if err != nil {
			tb.Fatal(err)
		}
		b.VerificationMaterial.TimestampVerificationData = &protobundle.TimestampVerificationData{
			Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: ts}},
		}
	}
	return marshal(tb, b)
}

// SignFile signs the file at path and writes the bundle to bundlePath.
func (c *CA) SignFile(tb testing.TB, path, bundlePath, issuer, subject string) {
	tb.Helper()
	writeBundle(tb, bundlePath, c.Sign(tb, readFile(tb, path), issuer, subject, SignOpts{}))
}

// certProvider certifies the signing key like Fulcio: the subject as an
// email SAN (or URI SAN when it has a scheme), the issuer in the OIDC
// issuer extension, code signing, 10 minutes.
type certProvider struct {
	c         *CA
	issuer    string
	subject   string
	notBefore time.Time
}

func (p certProvider) GetCertificate(_ context.Context, kp sign.Keypair, _ *sign.CertificateProviderOptions) ([]byte, error) {
	issuerExt, err := asn1.Marshal(p.issuer)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    p.notBefore,
		NotAfter:     p.notBefore.Add(10 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}, Value: []byte(p.issuer)},
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}, Value: issuerExt},
		},
	}
	if strings.Contains(p.subject, "://") {
		u, err := url.Parse(p.subject)
		if err != nil {
			return nil, err
		}
		tmpl.URIs = []*url.URL{u}
	} else {
		tmpl.EmailAddresses = []string{p.subject}
	}
	return x509.CreateCertificate(rand.Reader, tmpl, p.c.interm, kp.GetPublicKey(), p.c.intermSigner)
}

func marshal(tb testing.TB, b *protobundle.Bundle) []byte {
	tb.Helper()
	js, err := protojson.Marshal(b)
	if err != nil {
		tb.Fatal(err)
	}
	return js
}

func readFile(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func writeBundle(tb testing.TB, path string, b []byte) {
	tb.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// CosignEnv names the cosign CLI the tests sign with (.ci/run builds it
// from the module proxy and sets it).
const CosignEnv = "KEYBROKER_COSIGN"

// Cosign returns the cosign CLI of $KEYBROKER_COSIGN, or "" when unset.
func Cosign(tb testing.TB) string {
	tb.Helper()
	bin := os.Getenv(CosignEnv)
	if bin == "" {
		return ""
	}
	if _, err := os.Stat(bin); err != nil {
		tb.Fatalf("%s: %v", CosignEnv, err)
	}
	return bin
}

// RunCosign runs the cosign CLI bin in dir, offline (HOME is dir), with an
// empty key password.
func RunCosign(tb testing.TB, bin, dir string, args ...string) {
	tb.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=", "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("cosign %v: %v\n%s", args, err, out)
	}
}
