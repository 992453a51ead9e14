package verify_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// NodeVouched rebuilds exactly the node Node verified, from the Vouch Node
// made, without verifying the EK certificate's chain again; while the
// vouch holds, and only then.
func TestNodeVouched(t *testing.T) {
	pki := newEKPKI(t)
	ekKey := &ekRSAKey().PublicKey
	ekPub := tpm2.Marshal(ekPublicRSA(ekKey))
	ekHash := mustEKHash(t, ekKey)
	ak := defaultAK()
	vendor := verify.CA{Name: "vendor", Roots: pki.root.pool(), Intermediates: pki.inter.pool()}
	other := verify.CA{Name: "other", Roots: pki.otherRoot.pool(), Intermediates: pki.otherInter.pool()}
	leafNotAfter := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	leaf := pki.inter.issueEK(t, ekKey, ekCertOpts{notAfter: leafNotAfter})
	byOther := pki.otherInter.issueEK(t, ekKey, ekCertOpts{})
	forOtherKey := pki.inter.issueEK(t, &otherRSAKey().PublicKey, ekCertOpts{})

	same := func(t *testing.T, a, b *verify.NodeIdentity) {
		t.Helper()
		va, vb := verifiedFor(t, a, ak), verifiedFor(t, b, ak)
		if a.EKHash() != b.EKHash() || va.EKCA() != vb.EKCA() || !reflect.DeepEqual(va.EKCert(), vb.EKCert()) ||
			string(a.AKName()) != string(b.AKName()) || a.Vouch() != b.Vouch() {
			t.Fatalf("vouched node differs: %s %q %+v %v, want %s %q %+v %v", b.EKHash(), vb.EKCA(), vb.EKCert(), b.Vouch(),
				a.EKHash(), va.EKCA(), va.EKCert(), a.Vouch())
		}
	}

	t.Run("same node as Node", func(t *testing.T) {
		for _, tt := range []struct {
			name  string
			cert  []byte
			trust verify.Trust
			want  verify.Vouch
		}{
			{"second CA", leaf, verify.Trust{CAs: []verify.CA{other, vendor}}, verify.Vouch{CA: 2, NotAfter: leafNotAfter}},
			{"first CA", leaf, verify.Trust{CAs: []verify.CA{vendor}}, verify.Vouch{CA: 1, NotAfter: leafNotAfter}},
			{"by hash, no certificate", nil, verify.Trust{EKHashes: []string{ekHash}}, verify.Vouch{}},
			{"by hash, chain fails", byOther, verify.Trust{CAs: []verify.CA{vendor}, EKHashes: []string{ekHash}}, verify.Vouch{}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				n, err := verify.Node(ekPub, tt.cert, nil, ak.publicBytes(), verify.Opts{Trust: tt.trust})
				if err != nil {
					t.Fatal(err)
				}
				if got := n.Vouch(); got.CA != tt.want.CA || !got.NotAfter.Equal(tt.want.NotAfter) {
					t.Fatalf("Vouch() = %+v, want %+v (the leaf expires first)", got, tt.want)
				}
				v, err := verify.NodeVouched(ekPub, tt.cert, nil, ak.publicBytes(), verify.Opts{Trust: tt.trust}, n.Vouch())
				if err != nil {
					t.Fatal(err)
				}
				same(t, n, v)
			})
		}
	})

	n, err := verify.Node(ekPub, leaf, nil, ak.publicBytes(), verify.Opts{Trust: verify.Trust{CAs: []verify.CA{vendor}}})
	if err != nil {
		t.Fatal(err)
	}
	vouch := n.Vouch()

	t.Run("the chain is not verified again", func(t *testing.T) {
		// The same CA name with another root: Node refuses, the vouch
		// stands (a vouch is only ever used under the Trust that made it).
		swapped := verify.Trust{CAs: []verify.CA{{Name: "vendor", Roots: pki.otherRoot.pool()}}}
		if _, err := verify.Node(ekPub, leaf, nil, ak.publicBytes(), verify.Opts{Trust: swapped}); err == nil {
			t.Fatal("Node accepted a chain to another root")
		}
		v, err := verify.NodeVouched(ekPub, leaf, nil, ak.publicBytes(), verify.Opts{Trust: swapped}, vouch)
		if err != nil {
			t.Fatalf("NodeVouched verified the chain again: %v", err)
		}
		if got := verifiedFor(t, v, ak).EKCA(); got != "vendor" {
			t.Fatalf("EKCA() = %q, want vendor", got)
		}
	})

	const notChained = "ek_certificate does not chain to a trusted EK CA"
	for _, tt := range []struct {
		name      string
		cert      []byte
		inter     [][]byte
		trust     verify.Trust
		vouch     verify.Vouch
		wantCheck verify.Check
		wantErr   string
		wantCA    string
	}{
		{name: "chain expired since: verified again", cert: leaf, vouch: vouch,
			trust:     verify.Trust{CAs: []verify.CA{vendor}, Now: leafNotAfter.Add(time.Hour)},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "CA no longer in trust: verified again", cert: leaf, vouch: verify.Vouch{CA: 2, NotAfter: leafNotAfter},
			trust:     verify.Trust{CAs: []verify.CA{{Name: "vendor", Roots: pki.otherRoot.pool()}}},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "CA no longer in trust, chain good: verified again", cert: leaf, vouch: verify.Vouch{CA: 3, NotAfter: leafNotAfter},
			trust: verify.Trust{CAs: []verify.CA{other, vendor}}, wantCA: "vendor"},
		{name: "unnamed CA: verified again", cert: leaf, vouch: verify.Vouch{CA: 255},
			trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCA: "vendor"},
		{name: "by hash: the hash is still checked", cert: byOther, vouch: verify.Vouch{},
			trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "by hash without a certificate: the hash is still checked", vouch: verify.Vouch{},
			trust: verify.Trust{EKHashes: []string{"00"}}, wantCheck: verify.CheckEKTrust, wantErr: "EK is not trusted"},
		{name: "certificate of another key", cert: forOtherKey, vouch: vouch, trust: verify.Trust{CAs: []verify.CA{vendor}},
			wantCheck: verify.CheckEKTrust, wantErr: "ek_certificate does not certify ek_public"},
		{name: "garbage certificate", cert: []byte("not DER"), vouch: vouch, trust: verify.Trust{CAs: []verify.CA{vendor}},
			wantCheck: verify.CheckInput, wantErr: "ek_certificate is not an X.509 certificate"},
		{name: "garbage intermediate", cert: leaf, inter: [][]byte{[]byte("not DER")}, vouch: vouch,
			trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCheck: verify.CheckInput, wantErr: "an ek_intermediates entry is not an X.509 certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v, err := verify.NodeVouched(ekPub, tt.cert, tt.inter, ak.publicBytes(), verify.Opts{Trust: tt.trust}, tt.vouch)
			assertCheck(t, err, tt.wantCheck, tt.wantErr)
			if err == nil {
				if got := verifiedFor(t, v, ak).EKCA(); got != tt.wantCA {
					t.Fatalf("EKCA() = %q, want %q", got, tt.wantCA)
				}
			}
		})
	}
}

// Index gives each indexed Trust its own epoch.
func TestTrustEpoch(t *testing.T) {
	var zero [16]byte
	plain := verify.Trust{EKHashes: []string{"a"}}
	a, b := plain.Index(), plain.Index()
	if plain.Epoch() != zero || a.Epoch() == zero || a.Epoch() == b.Epoch() {
		t.Fatalf("epochs: plain %x, indexed %x and %x; want zero, then two distinct", plain.Epoch(), a.Epoch(), b.Epoch())
	}
}
