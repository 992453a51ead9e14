package agent_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// intermediateDER makes a CA certificate of roughly pad more bytes than a
// minimal one.
func intermediateDER(t *testing.T, cn string, pad int) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	if pad > 0 {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: make([]byte, pad)}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemCerts(ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return out
}

func TestEKIntermediateLimitsMatchTheBroker(t *testing.T) {
	if agent.MaxEKIntermediates != verify.MaxIntermediates || agent.MaxEKIntermediateSize != verify.MaxCertSize {
		t.Errorf("agent limits %d × %d bytes, broker refuses beyond %d × %d bytes",
			agent.MaxEKIntermediates, agent.MaxEKIntermediateSize, verify.MaxIntermediates, verify.MaxCertSize)
	}
}

func TestReadEKIntermediates(t *testing.T) {
	dir := t.TempDir()
	a, b := intermediateDER(t, "intermediate a", 0), intermediateDER(t, "intermediate b", 0)
	nine := make([][]byte, 9)
	for i := range nine {
		nine[i] = a
	}
	big7k := intermediateDER(t, "big", 7<<10)
	tests := []struct {
		name    string
		content []byte // nil: the file does not exist
		want    [][]byte
		wantErr string
	}{
		{name: "one", content: pemCerts(a), want: [][]byte{a}},
		{name: "two with text around", content: append(append([]byte("# vendor chain\n"), pemCerts(a, b)...), "\n"...), want: [][]byte{a, b}},
		{name: "missing", wantErr: "unable to read EK intermediates: open "},
		{name: "empty", content: []byte{}, wantErr: "holds no PEM certificate"},
		{name: "DER, not PEM", content: a, wantErr: "holds no PEM certificate"},
		{
			name:    "private key",
			content: append(pemCerts(a), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})...),
			wantErr: "PEM block 2 is a PRIVATE KEY, not a CERTIFICATE",
		},
		{
			name:    "not a certificate",
			content: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x00}}),
			wantErr: "EK intermediate 1 is not an X.509 certificate: ",
		},
		{name: "nine", content: pemCerts(nine...), wantErr: "9 EK intermediates, at most 8 allowed"},
		{name: "too large", content: pemCerts(a, intermediateDER(t, "huge", 9<<10)), wantErr: "EK intermediate 2 is "},
		{
			name:    "too large in all",
			content: pemCerts(big7k, big7k, big7k, big7k, big7k, big7k, big7k, big7k),
			wantErr: "bytes, at most 49152 allowed",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".pem")
			if tc.content != nil {
				if err := os.WriteFile(path, tc.content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := agent.ReadEKIntermediates(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				if tc.content != nil && !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tc.want, bytes.Equal) {
				t.Errorf("got %d certificates, want %d, in order", len(got), len(tc.want))
			}
		})
	}
}

// TestChallengeRequestCarriesEKIntermediates checks that NodeOpts'
// intermediates travel in the challenge request, as given, and that NewNode
// refuses too many before it touches the TPM.
func TestChallengeRequestCarriesEKIntermediates(t *testing.T) {
	a, b := intermediateDER(t, "intermediate a", 0), intermediateDER(t, "intermediate b", 0)

	if _, err := agent.NewNode(nil, agent.NodeOpts{EKIntermediates: slices.Repeat([][]byte{a}, 9)}); err == nil ||
		err.Error() != "9 EK intermediates, at most 8 allowed" {
		t.Fatalf("NewNode with 9 intermediates = %v", err)
	}

	rw := tpmtest.Open(t)
	opts := agent.NodeOpts{EKIntermediates: [][]byte{slices.Clone(a), slices.Clone(b)}}
	node, err := agent.NewNode(rw, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	opts.EKIntermediates[0][0] ^= 0xff // the node keeps its own copy
	req, err := node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(req.GetEkIntermediates(), [][]byte{a, b}, bytes.Equal) {
		t.Errorf("ChallengeRequest carries %d intermediates, want a and b in order", len(req.GetEkIntermediates()))
	}
	req.EkIntermediates[1][0] ^= 0xff // nor does a request share it
	if again, _ := node.ChallengeRequest(); !bytes.Equal(again.GetEkIntermediates()[1], b) {
		t.Error("a caller changed the node's intermediates through a request")
	}

	plain, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if req, err := plain.ChallengeRequest(); err != nil || req.GetEkIntermediates() != nil {
		t.Errorf("without intermediates: %v, %d sent", err, len(req.GetEkIntermediates()))
	}
}
