package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/resident"
)

// TestBootstrapTPMResident: with a tpm_resident release the agent creates
// the key in the TPM and the broker signs only its certificate; key.pem is
// a TSS2 key file (0600) whose key the TPM loads under the owner's storage
// key and signs with, and the signature verifies with the certificate the
// broker's CA issued.
func TestBootstrapTPMResident(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_resident"})
	node, err := agent.NewNode(env.RW, agent.NodeOpts{TPMResident: []string{"node-tls"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	out := filepath.Join(t.TempDir(), "tls")
	if _, err := agent.Bootstrap(context.Background(), direct{srv: env.Server}, node, agent.BootstrapOpts{OutDir: out}); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	files := readSet(t, out)
	if !strings.HasPrefix(files[agent.KeyFile], "-----BEGIN TSS2 PRIVATE KEY-----\n") {
		t.Fatalf("key.pem is not a TSS2 key file:\n%s", files[agent.KeyFile])
	}
	if fi, _ := os.Stat(filepath.Join(out, agent.KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode = %v, want 0600", fi.Mode().Perm())
	}
	key, err := resident.ParsePEM([]byte(files[agent.KeyFile]))
	if err != nil {
		t.Fatalf("ParsePEM: %v", err)
	}
	leaf, err := parseCert(files[agent.CertFile])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(env.CA.Certificate())
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		t.Fatalf("the certificate does not chain to the broker's CA: %v", err)
	}
	digest := sha256.Sum256([]byte("handshake transcript"))
	r, s := signInTPM(t, env.RW, key, digest[:])
	if !ecdsa.Verify(leaf.PublicKey.(*ecdsa.PublicKey), digest[:], r, s) {
		t.Fatal("a signature by the TPM-resident key does not verify with the released certificate")
	}
}

// TestBootstrapTPMResidentRefused: a node that offers no key for a
// tpm_resident release gets nothing, and writes nothing.
func TestBootstrapTPMResidentRefused(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_resident"})
	out := filepath.Join(t.TempDir(), "tls")
	_, err := agent.Bootstrap(context.Background(), direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out})
	if err == nil || !strings.Contains(err.Error(), `broker refused (FailedPrecondition): release: "node-tls" is tpm_resident and the node offered no TPM key for it (agent --tpm-resident node-tls)`) {
		t.Fatalf("Bootstrap without a resident key: %v, want the release refused", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("the refused bootstrap wrote %s", out)
	}
}

func TestNodeOptsTPMResident(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	sel := &resident.PCRs{Bank: tpm2.TPMAlgSHA256, PCRs: []uint32{7}}
	for _, tt := range []struct {
		name    string
		names   []string
		pcrs    map[string]*resident.PCRs
		wantErr string
	}{
		{"empty name", []string{""}, nil, `tpm_resident release name "" must be 1 to 128 bytes`},
		{"twice", []string{"a", "a"}, nil, `tpm_resident release "a" is listed twice`},
		{"too many", strings.Split("a,b,c,d,e,f,g,h,i", ","), nil, "at most 8 tpm_resident releases"},
		{"PCRs for an unlisted release", []string{"a"}, map[string]*resident.PCRs{"b": sel}, `tpm_resident release "b" is bound to PCRs but not listed`},
		{"no PCR", []string{"a"}, map[string]*resident.PCRs{"a": {Bank: tpm2.TPMAlgSHA256}}, `tpm_resident release "a" is bound to no PCR`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.NewNode(env.RW, agent.NodeOpts{TPMResident: tt.names, TPMResidentPCRs: tt.pcrs})
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("NewNode = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// signInTPM loads a TSS2 key file's key as its consumers do (under the
// primary resident.ParentTemplate makes in the owner hierarchy) and signs
// digest with it.
func signInTPM(t *testing.T, rw io.ReadWriter, key *resident.Key, digest []byte) (*big.Int, *big.Int) {
	t.Helper()
	tpm := transport.FromReadWriter(rw)
	parent, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(resident.ParentTemplate())}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: parent.ObjectHandle}.Execute(tpm)
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](key.Public)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](key.Private)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := tpm2.Load{ParentHandle: tpm2.NamedHandle{Handle: parent.ObjectHandle, Name: parent.Name},
		InPrivate: *priv, InPublic: tpm2.New2B(*pub)}.Execute(tpm)
	if err != nil {
		t.Fatalf("the TPM does not load the key file's key: %v", err)
	}
	defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(tpm)
	sig, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	e, err := sig.Signature.Signature.ECDSA()
	if err != nil {
		t.Fatal(err)
	}
	return new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)
}

func parseCert(certPEM string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}
