package swtpmtest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

func skipIfShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs swtpm; skipped with -short")
	}
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

func TestStartProvisionsEKCertificate(t *testing.T) {
	skipIfShort(t)
	tpm := Start(t, Opts{})
	if want := []string{tpm.RootCAFile, tpm.IntermediateCAFile}; !slices.Equal(tpm.CAFiles, want) {
		t.Fatalf("CAFiles = %v, want %v", tpm.CAFiles, want)
	}
	if !strings.HasPrefix(tpm.TCTI(), "swtpm:host=127.0.0.1,port=") {
		t.Errorf("TCTI() = %q", tpm.TCTI())
	}
	root := readPEMCert(t, tpm.RootCAFile)
	inter := readPEMCert(t, tpm.IntermediateCAFile)
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate is not signed by the root: %v", err)
	}

	rw := tpm.Dial(t)
	handles, err := client.Handles(rw, tpm2.HandleTypePersistent)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(handles, tpmutil.Handle(EKHandle)) {
		t.Fatalf("persistent handles %v lack the EK 0x%x", handles, EKHandle)
	}
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	if ek.Handle() != EKHandle {
		t.Errorf("go-tpm-tools EK handle = 0x%x, want the provisioned 0x%x (template mismatch?)", ek.Handle(), EKHandle)
	}
	cert := ek.Cert()
	if cert == nil {
		t.Fatalf("no EK certificate in NV 0x%x", EKCertIndex)
	}
	if err := cert.CheckSignatureFrom(inter); err != nil {
		t.Errorf("EK certificate is not signed by the intermediate: %v", err)
	}
	if cert.Issuer.String() != inter.Subject.String() {
		t.Errorf("EK certificate issuer %q, want %q", cert.Issuer, inter.Subject)
	}
	sels, err := client.AllocatedPCRs(rw)
	if err != nil {
		t.Fatal(err)
	}
	if len(sels) != 1 || sels[0].Hash != tpm2.AlgSHA256 {
		t.Errorf("allocated PCR banks %v, want sha256 only", sels)
	}
}

func TestResetClearsPCRsAndObjects(t *testing.T) {
	skipIfShort(t)
	tpm := Start(t, Opts{NoEKCert: true})
	if tpm.CAFiles != nil {
		t.Errorf("CAFiles = %v without an EK certificate", tpm.CAFiles)
	}
	const pcr = 16
	sel := tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{pcr}}

	rw := tpm.Dial(t)
	sels, err := client.AllocatedPCRs(rw)
	if err != nil {
		t.Fatal(err)
	}
	if len(sels) != 4 {
		t.Errorf("blank state has %d PCR banks, want 4", len(sels))
	}
	digest := sha256.Sum256([]byte("measured"))
	if err := tpm2.PCRExtend(rw, pcr, tpm2.AlgSHA256, digest[:], ""); err != nil {
		t.Fatal(err)
	}
	// A transient key, left loaded on purpose: Reset must drop it.
	if _, err := client.NewKey(rw, tpm2.HandleOwner, client.SRKTemplateECC()); err != nil {
		t.Fatal(err)
	}
	before, err := client.ReadPCRs(rw, sel)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before.Pcrs[pcr], make([]byte, 32)) {
		t.Fatal("PCR 16 still zero after extend")
	}
	rw.Close()

	tpm.Reset(t)

	rw = tpm.Dial(t)
	defer rw.Close()
	after, err := client.ReadPCRs(rw, sel)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after.Pcrs[pcr], make([]byte, 32)) {
		t.Errorf("PCR 16 = %x after Reset, want zeros", after.Pcrs[pcr])
	}
	transient, err := client.Handles(rw, tpm2.HandleTypeTransient)
	if err != nil {
		t.Fatal(err)
	}
	if len(transient) != 0 {
		t.Errorf("transient handles %v survive Reset", transient)
	}
}

func TestStop(t *testing.T) {
	skipIfShort(t)
	// The comma in the name would break swtpm's options if Start put the
	// state under t.TempDir.
	t.Run("stop, then dial", func(t *testing.T) {
		tpm := Start(t, Opts{NoEKCert: true})
		tpm.Stop()
		tpm.Stop() // idempotent
		if c, err := net.Dial("tcp", tpm.Addr); err == nil {
			c.Close()
			t.Fatalf("swtpm still listens on %s after Stop", tpm.Addr)
		}
		if _, err := os.Stat(tpm.StateDir); err != nil {
			t.Fatalf("state directory gone before cleanup: %v", err)
		}
	})
}

// recorder is a testing.TB that records Skip and Fatal instead of ending the
// real test.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recorder) Skip(args ...any) {
	r.skipped, r.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any) {
	r.failed, r.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func TestStartWithoutSwtpm(t *testing.T) {
	tests := []struct {
		name, ci    string
		wantSkipped bool
	}{
		{name: "skips outside CI", ci: "", wantSkipped: true},
		{name: "fails in CI", ci: "true", wantSkipped: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", t.TempDir())
			t.Setenv("CI", tt.ci)
			r := &recorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				Start(r, Opts{})
			}()
			<-done
			if r.skipped != tt.wantSkipped || r.failed == tt.wantSkipped {
				t.Fatalf("skipped=%v failed=%v, want skipped=%v", r.skipped, r.failed, tt.wantSkipped)
			}
			if !strings.Contains(r.msg, "swtpm, swtpm_ioctl, swtpm_setup, swtpm_localca not on PATH") {
				t.Errorf("message %q does not name the missing tools", r.msg)
			}
		})
	}
}
