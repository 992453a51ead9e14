package softtpm

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/verify"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

func newEKCA(t testing.TB) *EKCA {
	t.Helper()
	ca, err := NewEKCA("test")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// trustCA trusts the EKs whose certificate chains to ca's root, and no EK
// by hash.
func trustCA(ca *EKCA) verify.Trust {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root())
	return verify.Trust{CAs: []verify.CA{{Name: "vendor", Roots: pool}}}
}

// verifiedBy runs the broker's node and quote verification of req under
// trust, with node's quote.
func verifiedBy(t *testing.T, node *Node, req *pb.ChallengeRequest, trust verify.Trust) (*verify.Verified, error) {
	t.Helper()
	id, err := verify.Node(req.GetEkPublic(), req.GetEkCertificate(), req.GetEkIntermediates(), req.GetAkPublic(), verify.Opts{Trust: trust})
	if err != nil {
		return nil, err
	}
	secret := random(t, 32)
	quotes, err := node.Quote(secret)
	if err != nil {
		t.Fatal(err)
	}
	return verify.Quotes(id, sha256.Sum256(secret), []verify.Quote{toVerify(quotes[0])}, verify.Opts{})
}

// A node made with an EK CA presents an EK certificate for its own EK
// public key, issued by the CA's intermediate, which it presents too; the
// certificate chains to the root, and the broker's verification trusts the
// node through the CA alone (no EK hash), reading the TPM facts.
func TestEKCertificate(t *testing.T) {
	ca := newEKCA(t)
	for _, key := range keyTypes {
		t.Run(key.String(), func(t *testing.T) {
			node, err := New(Opts{Key: key, EKCA: ca})
			if err != nil {
				t.Fatal(err)
			}
			der, inters := node.EKCertificate()
			if len(der) == 0 || len(inters) != 1 || !bytes.Equal(inters[0], ca.Intermediate()) {
				t.Fatalf("EK certificate of %d bytes with %d intermediates, want one and the CA's intermediate", len(der), len(inters))
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			ek, err := node.EKPublicKey()
			if err != nil {
				t.Fatal(err)
			}
			if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(ek) {
				t.Errorf("the EK certificate certifies %T, not the node's EK", cert.PublicKey)
			}
			inter, err := x509.ParseCertificate(inters[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := cert.CheckSignatureFrom(inter); err != nil {
				t.Errorf("the EK certificate is not signed by the intermediate: %v", err)
			}
			if err := inter.CheckSignatureFrom(ca.Root()); err != nil {
				t.Errorf("the intermediate is not signed by the root: %v", err)
			}

			req := node.ChallengeRequest()
			if !bytes.Equal(req.GetEkCertificate(), der) || len(req.GetEkIntermediates()) != 1 || !bytes.Equal(req.GetEkIntermediates()[0], inters[0]) {
				t.Error("ChallengeRequest does not carry the EK certificate and its intermediate")
			}
			att := node.AttestRequest("id", nil)
			if !bytes.Equal(att.GetEkCertificate(), der) || !slices.EqualFunc(att.GetEkIntermediates(), inters, bytes.Equal) {
				t.Error("AttestRequest does not present the same EK certificate and intermediates")
			}

			v, err := verifiedBy(t, node, req, trustCA(ca))
			if err != nil {
				t.Fatalf("the broker's verification refuses the node: %v", err)
			}
			if v.EKCA() != "vendor" {
				t.Errorf("EK CA %q, want vendor", v.EKCA())
			}
			if f := v.EKCert(); f == nil || f.Manufacturer != ekManufacturer || f.Model != ekModel || f.Version != ekVersion {
				t.Errorf("EK certificate facts %+v, want the softtpm TPM SAN", f)
			}
		})
	}
}

// The CA trust is what admits a node: a node certified by another CA, or
// with no certificate, is refused under the same trust; a copy of another
// node's certificate does not certify this node's EK.
func TestEKCertificateRefused(t *testing.T) {
	ca, other := newEKCA(t), newEKCA(t)
	trust := trustCA(ca)
	stranger, err := New(Opts{EKCA: other})
	if err != nil {
		t.Fatal(err)
	}
	uncertified := newNode(t, ECC)
	if der, inters := uncertified.EKCertificate(); der != nil || inters != nil {
		t.Fatalf("a node made without an EK CA has a certificate")
	}
	thief := newNode(t, ECC)
	victim, err := New(Opts{EKCA: ca})
	if err != nil {
		t.Fatal(err)
	}
	stolen := thief.ChallengeRequest()
	stolen.EkCertificate, stolen.EkIntermediates = victim.EKCertificate()

	tests := []struct {
		name string
		node *Node
		req  *pb.ChallengeRequest
		want string
	}{
		{"another CA", stranger, stranger.ChallengeRequest(), "ek_certificate does not chain to a trusted EK CA"},
		{"no certificate", uncertified, uncertified.ChallengeRequest(), "EK is not trusted"},
		{"another node's certificate", thief, stolen, "ek_certificate does not certify ek_public"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := verifiedBy(t, tt.node, tt.req, trust)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("verification: %v, want %q", err, tt.want)
			}
		})
	}
}

// The root PEM is the root certificate, a CA, as an ek_ca block reads it.
func TestEKCARootPEM(t *testing.T) {
	ca := newEKCA(t)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.RootPEM()) {
		t.Fatal("RootPEM holds no certificate")
	}
	if !ca.Root().IsCA || !pool.Equal(trustCA(ca).CAs[0].Roots) {
		t.Error("RootPEM is not the CA's root")
	}
}
