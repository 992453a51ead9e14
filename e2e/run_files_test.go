package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// certSerial is the serial of the certificate in path (PEM), hex.
func certSerial(t *testing.T, path string) string {
	t.Helper()
	block, _ := pem.Decode(readFile(t, path))
	if block == nil {
		t.Fatalf("%s holds no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", c.SerialNumber)
}

// waitFor polls cond every 100ms until it holds, or fails after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
	}
}

// keybroker-agent run --out keeps a short-lived TLS credential current
// with no SPIFFE at all: it re-attests at half the certificate's life,
// rewrites the files and runs --on-change; once the node's boot changed,
// re-attestation fails and the files stay as they were.
func TestRunKeepsFilesCurrent(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	policy := strings.Replace(sealedPolicy(p), `ttl         = "1h"`, `ttl         = "6s"`, 1)
	if policy == sealedPolicy(p) {
		t.Fatal("the policy's ttl was not replaced")
	}
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policy})
	out := filepath.Join(t.TempDir(), "tls")
	hook, marker := onChange(t)
	socket := filepath.Join(t.TempDir(), "run", "agent.sock")
	a := startAgentRunWith(t, tpm, b, socket, "keeping the files current", "--out", out, "--on-change", hook)
	first := certSerial(t, filepath.Join(out, "cert.pem"))
	waitFor(t, "the certificate renewed", 20*time.Second, func() bool { return certSerial(t, filepath.Join(out, "cert.pem")) != first })
	second := certSerial(t, filepath.Join(out, "cert.pem"))
	waitFor(t, "--on-change ran for the renewal", 5*time.Second, func() bool {
		return strings.HasPrefix(string(readFile(t, marker)), "changed "+second+" ")
	})
	if _, err := tls.LoadX509KeyPair(filepath.Join(out, "cert.pem"), filepath.Join(out, "key.pem")); err != nil {
		t.Fatalf("the renewed key and certificate do not match: %v", err)
	}

	// The boot changes: re-attestation fails, the files stay.
	p.measure(t, 7, "unknown bootloader")
	a.waitLog(t, "re-attestation failed: the files stay as they are until they expire", 20*time.Second)
	last := certSerial(t, filepath.Join(out, "cert.pem"))
	time.Sleep(2 * time.Second) // retries at most every second (--retry-max 1s)
	if now := certSerial(t, filepath.Join(out, "cert.pem")); now != last {
		t.Fatalf("the certificate changed from %s to %s after the node was refused", last, now)
	}
}
