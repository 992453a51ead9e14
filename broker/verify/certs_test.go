package verify_test

import (
	"encoding/pem"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/verify"
)

func TestValidEKHash(t *testing.T) {
	good := strings.Repeat("ab", 32)
	for s, want := range map[string]bool{
		good:                     true,
		strings.ToUpper(good):    false,
		good[:62]:                false,
		good + "00":              false,
		strings.Repeat("zz", 32): false,
		"":                       false,
	} {
		if verify.ValidEKHash(s) != want {
			t.Errorf("ValidEKHash(%q) = %v, want %v", s, !want, want)
		}
	}
}

// Trust anchors read as PEM (certificates only) or DER; the PEM reader
// used for PEM-only fields refuses DER.
func TestParseCertificates(t *testing.T) {
	ca := newTestCA(t, "Parse Root", nil)
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})
	for _, tt := range []struct {
		name    string
		data    []byte
		pemOnly bool
		want    int
		wantErr string
	}{
		{"PEM", pemCert, false, 1, ""},
		{"PEM, a key block skipped", append(append([]byte{}, key...), pemCert...), false, 1, ""},
		{"two PEM certificates", append(append([]byte{}, pemCert...), pemCert...), true, 2, ""},
		{"DER", ca.der, false, 1, ""},
		{"DER where PEM is required", ca.der, true, 0, "holds no PEM certificate"},
		{"a key only", key, false, 0, "holds no PEM certificate"},
		{"garbage", []byte("garbage"), false, 0, "is neither PEM nor a DER certificate"},
		{"broken PEM certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), false, 0, "PEM block 1: "},
	} {
		parse := verify.ParseCertificates
		if tt.pemOnly {
			parse = verify.ParsePEMCertificates
		}
		certs, err := parse(tt.data)
		switch {
		case tt.wantErr == "" && (err != nil || len(certs) != tt.want):
			t.Errorf("%s: %d certificates, %v; want %d", tt.name, len(certs), err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: %v, want %q", tt.name, err, tt.wantErr)
		}
	}
}
