package challenge_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
)

// ekCertNode is testNode's node trusted through an EK certificate from a
// test CA, second in its Trust's CAs, under an indexed Trust.
func ekCertNode(t *testing.T) (*verify.NodeIdentity, challenge.Evidence, verify.Trust) {
	t.Helper()
	_, ev := testNode(t)
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ev.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	ekKey, err := tpm2.Pub(*pub)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test EK CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	ekTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment}
	if ev.EKCertificate, err = x509.CreateCertificate(rand.Reader, ekTmpl, ca, ekKey, caKey); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	trust := verify.Trust{CAs: []verify.CA{{Name: "unused", Roots: x509.NewCertPool()}, {Name: "test", Roots: roots}}}.Index()
	node, err := verify.Node(ev.EKPublic, ev.EKCertificate, nil, ev.AKPublic, verify.Opts{Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	return node, ev, trust
}

// A challenge carries the node's vouch; Open returns it to an Issuer of
// the same epoch only.
func TestChallengeCarriesVouch(t *testing.T) {
	ctx := context.Background()
	node, ev, trust := ekCertNode(t)
	if v := node.Vouch(); v.CA != 2 || v.NotAfter.IsZero() {
		t.Fatalf("node vouch %+v: want CA 2 and the chain's expiry", v)
	}
	st := openStore(t)
	iss := challenge.New(st, challenge.Opts{Epoch: trust.Epoch()})
	issued, err := iss.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}
	c, err := iss.Open(ctx, issued.ID, ev)
	if err != nil {
		t.Fatal(err)
	}
	if c.Vouch == nil || c.Vouch.CA != node.Vouch().CA || !c.Vouch.NotAfter.Equal(node.Vouch().NotAfter) {
		t.Fatalf("Open vouch %+v, want %+v", c.Vouch, node.Vouch())
	}
	v, err := verify.NodeVouched(c.EKPublic, c.EKCertificate, c.EKIntermediates, c.AKPublic, verify.Opts{Trust: trust}, *c.Vouch)
	if err != nil || v.EKHash() != node.EKHash() {
		t.Fatalf("NodeVouched with the challenge's vouch: %v", err)
	}

	// Another replica, or this one restarted: another epoch, no vouch.
	other := challenge.New(st, challenge.Opts{Epoch: trust.Index().Epoch()})
	if c, err := other.Open(ctx, issued.ID, ev); err != nil || c.Vouch != nil {
		t.Fatalf("Open by another epoch: vouch %+v, %v; want none", c.Vouch, err)
	}
	// An Issuer without an epoch neither seals nor returns vouches.
	plain := challenge.New(st, challenge.Opts{})
	if c, err := plain.Open(ctx, issued.ID, ev); err != nil || c.Vouch != nil {
		t.Fatalf("Open without an epoch: vouch %+v, %v; want none", c.Vouch, err)
	}
	unvouched, err := plain.Issue(ctx, node, ev)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := iss.Open(ctx, unvouched.ID, ev); err != nil || c.Vouch != nil {
		t.Fatalf("a challenge issued without an epoch: vouch %+v, %v; want none", c.Vouch, err)
	}
	// The vouch stands for this EK and AK material only.
	changed := ev
	changed.EKIntermediates = [][]byte{ev.EKCertificate}
	if _, err := iss.Open(ctx, issued.ID, changed); !errors.Is(err, challenge.ErrMismatch) {
		t.Fatalf("Open with other material: %v, want ErrMismatch", err)
	}
}

// Tokens sealed before tokens carried vouches (version 1) still open,
// without a vouch.
func TestOpenVersion1Token(t *testing.T) {
	ctx := context.Background()
	node, ev, trust := ekCertNode(t)
	st := openStore(t)
	iss := challenge.New(st, challenge.Opts{Epoch: trust.Epoch()})
	if _, err := iss.Issue(ctx, node, ev); err != nil { // makes the first key
		t.Fatal(err)
	}
	keys, err := st.ChallengeKeys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v, %v", keys, err)
	}
	secretHash := [32]byte{1, 2, 3}
	exp := time.Now().Add(time.Minute).Truncate(time.Nanosecond)
	token := challenge.SealV1(keys[0], secretHash, ev, exp)
	c, err := iss.Open(ctx, token, ev)
	if err != nil {
		t.Fatalf("Open of a version 1 token: %v", err)
	}
	if c.Vouch != nil || c.SecretHash != secretHash || !c.ExpiresAt.Equal(exp) || c.ID != challenge.IDOf(token) {
		t.Fatalf("version 1 token opened as %+v", c)
	}
	tampered := []byte(token)
	tampered[len(tampered)/2] ^= 'A' ^ 'B' // a base64url letter still, another byte
	if tampered[len(tampered)/2] == token[len(token)/2] {
		t.Fatal("the token was not changed")
	}
	if _, err := iss.Open(ctx, string(tampered), ev); !errors.Is(err, challenge.ErrUnknown) {
		t.Fatalf("a tampered version 1 token: %v, want ErrUnknown", err)
	}
}

// A chain valid past 2262 (EK certificates valid until 9999) is vouched
// for until the latest time a token can say, not a wrapped one.
func TestVouchFarFuture(t *testing.T) {
	ctx := context.Background()
	node, ev, trust := ekCertNode(t)
	v := node.Vouch()
	v.NotAfter = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	iss := challenge.New(openStore(t), challenge.Opts{Epoch: trust.Epoch()})
	issued, err := iss.IssueVouched(ctx, node, ev, v)
	if err != nil {
		t.Fatal(err)
	}
	c, err := iss.Open(ctx, issued.ID, ev)
	if err != nil || c.Vouch == nil {
		t.Fatalf("Open: %v, %v", c.Vouch, err)
	}
	if want := time.Unix(0, math.MaxInt64); !c.Vouch.NotAfter.Equal(want) {
		t.Fatalf("vouch until %v, want %v", c.Vouch.NotAfter, want)
	}
}
