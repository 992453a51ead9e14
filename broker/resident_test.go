package broker_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/resident"
)

// TestAttestTPMResident: through the server's Attest, a tpm_resident
// release is a certificate for the certified key with no key in the
// payload; a certify over another secret is refused with check
// resident_key, recorded as such, and releases nothing; an oversized
// resident key is refused before any work.
func TestAttestTPMResident(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_resident"})
	ak, err := client.AttestationKeyRSA(env.RW) // the node's AK again (same template)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ak.Close)
	ctx := context.Background()
	answer := func(t *testing.T, secretFor func(secret []byte) []byte) (*pb.AttestResponse, *resident.Key, error) {
		t.Helper()
		ch, secret := env.Challenge(t)
		req := env.AttestRequest(t, ch, secret)
		k, err := resident.Create(env.RW, uint32(ak.Handle()), secretFor(secret), "node-tls")
		if err != nil {
			t.Fatal(err)
		}
		req.ResidentKeys = []*pb.ResidentKey{{Name: k.Name, Public: k.Public, CertifyInfo: k.CertifyInfo, Signature: k.Signature}}
		resp, err := env.Server.Attest(ctx, req)
		return resp, k, err
	}

	t.Run("released", func(t *testing.T) {
		resp, k, err := answer(t, func(s []byte) []byte { return s })
		if err != nil {
			t.Fatalf("Attest: %v", err)
		}
		if len(resp.GetCredentials()) != 1 || resp.GetCredentials()[0].GetMode() != pb.ReleaseMode_TPM_RESIDENT {
			t.Fatalf("credentials = %v, want one TPM_RESIDENT", resp.GetCredentials())
		}
		var tc pb.TLSCredential
		openResident(t, env, resp.GetCredentials()[0], &tc)
		if len(tc.GetKeyPem()) != 0 {
			t.Error("a tpm_resident payload carries a key")
		}
		cert := certifiedKey(t, tc.GetCertificatePem(), k)
		rs := env.Receipts(t)
		if got := rs[0].Released; len(got) != 1 || got[0].Mode != "tpm_resident" || got[0].Serial != cert.SerialNumber.Text(16) {
			t.Errorf("receipt released %+v", got)
		}
	})

	t.Run("certify over another secret", func(t *testing.T) {
		_, _, err := answer(t, func([]byte) []byte { return bytes.Repeat([]byte{7}, 32) })
		want := `resident_key: resident key "node-tls": certify qualifying data is not bound to this challenge (receipt `
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), want) {
			t.Fatalf("Attest = %v, want PermissionDenied %q", err, want)
		}
		rec := env.Receipts(t)[0]
		if rec.Allowed || rec.Check != "resident_key" || len(rec.Released) != 0 || rec.DenyListed {
			t.Errorf("receipt = allowed %v, check %q, released %v, deny-listed %v", rec.Allowed, rec.Check, rec.Released, rec.DenyListed)
		}
	})

	t.Run("oversized", func(t *testing.T) {
		ch, secret := env.Challenge(t)
		req := env.AttestRequest(t, ch, secret)
		req.ResidentKeys = []*pb.ResidentKey{{Name: "node-tls", Public: make([]byte, 2<<10)}}
		_, err := env.Server.Attest(ctx, req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "input: a resident key exceeds its size limits") {
			t.Fatalf("Attest = %v, want InvalidArgument", err)
		}
	})
}

// TestAttestTPMResidentSVID: an x509_svid release in tpm_resident mode
// bound to PCRs 0 and 7 is the node SVID for the certified key, with no key
// in the payload, when the key's PolicyPCR is over the quoted values; a
// key not bound to them, bound to other PCRs, certified by another AK or
// over another secret is refused, and nothing is released.
func TestAttestTPMResidentSVID(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound", SPIFFE: true, SVIDMode: "tpm_resident", SVIDExtra: "\n    pcrs      = [0, 7]"})
	ak, err := client.AttestationKeyRSA(env.RW) // the node's AK again (same template)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ak.Close)
	otherAK, err := client.AttestationKeyECC(env.RW) // stands for another TPM's AK
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(otherAK.Close)
	ctx := context.Background()
	bound := func(pcrs string) resident.CreateOpts {
		sel, err := resident.ParsePCRs(pcrs)
		if err != nil {
			t.Fatal(err)
		}
		return resident.CreateOpts{PCRs: sel}
	}
	answer := func(t *testing.T, akHandle uint32, secretFor func([]byte) []byte, opts resident.CreateOpts) (*pb.AttestResponse, *resident.Key, error) {
		t.Helper()
		ch, secret := env.Challenge(t)
		req := env.AttestRequest(t, ch, secret)
		k, err := resident.CreateWith(env.RW, akHandle, secretFor(secret), "node-svid", opts)
		if err != nil {
			t.Fatal(err)
		}
		req.ResidentKeys = []*pb.ResidentKey{{Name: k.Name, Public: k.Public, CertifyInfo: k.CertifyInfo, Signature: k.Signature}}
		resp, err := env.Server.Attest(ctx, req)
		return resp, k, err
	}
	same := func(s []byte) []byte { return s }

	t.Run("released", func(t *testing.T) {
		resp, k, err := answer(t, uint32(ak.Handle()), same, bound("sha256:0,7"))
		if err != nil {
			t.Fatalf("Attest: %v", err)
		}
		var svid *pb.Credential
		for _, c := range resp.GetCredentials() {
			if c.GetType() == pb.CredentialType_X509_SVID {
				svid = c
			}
		}
		if svid == nil || svid.GetMode() != pb.ReleaseMode_TPM_RESIDENT {
			t.Fatalf("credentials = %v, want a TPM_RESIDENT X509_SVID", resp.GetCredentials())
		}
		var sc pb.X509SVIDCredential
		openResident(t, env, svid, &sc)
		if len(sc.GetKeyPem()) != 0 {
			t.Error("a tpm_resident SVID payload carries a key")
		}
		cert := certifiedKey(t, sc.GetCertificatesPem(), k)
		if len(cert.URIs) != 1 || cert.URIs[0].String() != sc.GetSpiffeId() || !strings.HasPrefix(sc.GetSpiffeId(), "spiffe://example.org/node/") {
			t.Errorf("SVID names %v, payload %q", cert.URIs, sc.GetSpiffeId())
		}
	})

	refusals := []struct {
		name     string
		akHandle func() uint32
		secret   func([]byte) []byte
		opts     resident.CreateOpts
		code     codes.Code
		check    string
		want     string
	}{
		{"key not bound to PCRs", func() uint32 { return uint32(ak.Handle()) }, same, resident.CreateOpts{}, codes.FailedPrecondition, "release",
			`release: "node-svid" is tpm_resident bound to PCRs and the node's TPM key for it is not bound to the attested values (agent --tpm-resident node-svid=sha256:0,7)`},
		{"key bound to other PCRs", func() uint32 { return uint32(ak.Handle()) }, same, bound("sha256:7"), codes.FailedPrecondition, "release",
			`release: "node-svid" is tpm_resident bound to PCRs and the node's TPM key for it is not bound to the attested values`},
		{"certify by another AK", func() uint32 { return uint32(otherAK.Handle()) }, same, bound("sha256:0,7"), codes.PermissionDenied, "resident_key",
			`resident_key: resident key "node-svid": certify signature does not verify with the AK`},
		{"certify over another secret", func() uint32 { return uint32(ak.Handle()) }, func([]byte) []byte { return bytes.Repeat([]byte{7}, 32) }, bound("sha256:0,7"),
			codes.PermissionDenied, "resident_key", `resident_key: resident key "node-svid": certify qualifying data is not bound to this challenge`},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := answer(t, tt.akHandle(), tt.secret, tt.opts)
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Attest = %v, want %s %q", err, tt.code, tt.want)
			}
			rec := env.Receipts(t)[0]
			if rec.Allowed || rec.Check != tt.check || len(rec.Released) != 0 {
				t.Errorf("receipt = allowed %v, check %q, released %v", rec.Allowed, rec.Check, rec.Released)
			}
		})
	}
}

// openResident opens c in the node's TPM into msg.
func openResident(t *testing.T, env *brokertest.Env, c *pb.Credential, msg proto.Message) {
	t.Helper()
	payload, err := env.Node.Open(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(payload, msg); err != nil {
		t.Fatal(err)
	}
}

// certifiedKey returns the first certificate of certPEM, failing the test
// unless it is for k's public key.
func certifiedKey(t *testing.T, certPEM []byte, k *resident.Key) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := x509.MarshalPKIXPublicKey(pub)
	if !bytes.Equal(cert.RawSubjectPublicKeyInfo, want) {
		t.Error("the certificate is not for the certified key")
	}
	return cert
}
