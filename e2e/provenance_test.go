package e2e

// Signed workload selectors across processes: `keybroker serve` with a
// policy trusting a signer key and a trusted root, `keybroker-agent run`
// verifying the Sigstore bundle beside each caller's executable, and a
// plain go-spiffe workload (testdata/fetchsvid) run from a signed, a
// modified and a foreign-signed copy of its executable.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/provenance/provenancetest"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

const (
	e2eSignedKeyID      = "spiffe://" + e2eTrustDomain + "/signed/key"
	e2eSignedIdentityID = "spiffe://" + e2eTrustDomain + "/signed/identity"
	e2eSignedCosignID   = "spiffe://" + e2eTrustDomain + "/signed/cosign"
	e2eIssuer           = "https://issuer.e2e.keybroker/auth"
	e2eSubject          = "release@e2e.keybroker"
)

// buildFetchSVID builds testdata/fetchsvid into dir.
func buildFetchSVID(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "fetchsvid")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/fetchsvid")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build fetchsvid: %v\n%s", err, b)
	}
	return out
}

// copyExe copies the executable src to dir/fetchsvid, changing marker's
// last byte if modify.
func copyExe(t *testing.T, src, dir string, modify bool) string {
	t.Helper()
	data := readFile(t, src)
	if modify {
		const m = "keybroker-e2e-fetchsvid-marker-A"
		i := bytes.Index(data, []byte(m))
		if i < 0 {
			t.Fatal("marker not found in fetchsvid")
		}
		data[i+len(m)-1] = 'B' // one byte
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "fetchsvid")
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// runWorkload runs a fetchsvid executable against the agent's socket.
// go-spiffe retries a refusal until fetchsvid's timeout, 3s here.
func runWorkload(t *testing.T, exe, socket string) (string, error) {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=unix://"+socket, "FETCHSVID_TIMEOUT=3s")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func signedPolicy(p *pcrs, keyFile, rootFile, cosignKey string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `signer "release" {
  public_key = file(%q)
}
signer "cosign" {
  public_key = file(%q)
}
trusted_root "e2e" {
  json    = file(%q)
  issuers = [%q]
}
policy "signed" {
  select {
    ek_cas = ["swtpm"]
  }
  require = [
`, keyFile, cosignKey, rootFile, e2eIssuer)
	for _, r := range pcrRequire(p.value(0), p.value(7)) {
		fmt.Fprintf(&b, "    %q,\n", r)
	}
	fmt.Fprintf(&b, `  ]
  release "node-svid" {
    type      = "x509_svid"
    pcrs      = [0, 7]
    mode      = "pcr_sealed"
    spiffe_id = "spiffe://%s/node/${ek_hash_short}"
  }
  workload "signed-key" {
    spiffe_id = %q
    selectors = ["unix:uid:%d", "signed:key:release"]
  }
  workload "signed-identity" {
    spiffe_id = %q
    selectors = ["signed:identity:%s/%s"]
  }
  workload "signed-cosign" {
    spiffe_id = %q
    selectors = ["signed:key:cosign"]
  }
}
`, e2eTrustDomain, e2eSignedKeyID, os.Getuid(), e2eSignedIdentityID, e2eIssuer, e2eSubject, e2eSignedCosignID)
	return b.String()
}

func TestSignedSelectorsOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	dir := t.TempDir()
	release, other := provenancetest.NewKeySigner(t), provenancetest.NewKeySigner(t)
	ca := provenancetest.NewCA(t)
	keyFile, rootFile := filepath.Join(dir, "release.pub"), filepath.Join(dir, "trusted_root.json")
	writeFile(t, keyFile, string(release.PublicKeyPEM))
	writeFile(t, rootFile, string(ca.TrustedRootJSON))

	built := buildFetchSVID(t, filepath.Join(dir, "build"))
	signed := copyExe(t, built, filepath.Join(dir, "signed"), false)
	release.SignFile(t, signed, signed+".sigstore.json")
	// The signed bundle beside a copy with one byte changed.
	modified := copyExe(t, built, filepath.Join(dir, "modified"), true)
	if err := os.WriteFile(modified+".sigstore.json", readFile(t, signed+".sigstore.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	foreign := copyExe(t, built, filepath.Join(dir, "foreign"), false)
	other.SignFile(t, foreign, foreign+".sigstore.json")
	keyless := copyExe(t, built, filepath.Join(dir, "keyless"), true)
	ca.SignFile(t, keyless, keyless+".bundle", e2eIssuer, e2eSubject)
	// cosign, when built, signs another copy with a key pair it made;
	// without it the cosign signer is a key that signs nothing here.
	cosignKey := filepath.Join(dir, "unused.pub")
	writeFile(t, cosignKey, string(provenancetest.NewKeySigner(t).PublicKeyPEM))
	var cosigned string
	if bin := provenancetest.Cosign(t); bin != "" {
		cdir := filepath.Join(dir, "cosign")
		cosigned = copyExe(t, built, cdir, false)
		provenancetest.RunCosign(t, bin, cdir, "generate-key-pair")
		provenancetest.RunCosign(t, bin, cdir, "sign-blob", "--yes", "--key", "cosign.key", "--new-bundle-format", "--tlog-upload=false",
			"--bundle", "fetchsvid.sigstore.json", "fetchsvid")
		cosignKey = filepath.Join(cdir, "cosign.pub")
	}

	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: signedPolicy(p, keyFile, rootFile, cosignKey),
		extra: fmt.Sprintf("\nspiffe {\n  trust_domain = %q\n}\n", e2eTrustDomain)})
	socket := filepath.Join(t.TempDir(), "run", "agent.sock")
	a := startAgentRun(t, tpm, b, socket)
	a.waitLog(t, "workload X.509-SVID issued", 30*time.Second)

	t.Run("signed by the trusted key", func(t *testing.T) {
		out, err := runWorkload(t, signed, socket)
		if err != nil || strings.TrimSpace(out) != e2eSignedKeyID {
			t.Fatalf("fetchsvid: %v\n%s", err, out)
		}
	})
	t.Run("signed with cosign", func(t *testing.T) {
		if cosigned == "" {
			t.Skip(provenancetest.CosignEnv + " is not set (.ci/run builds cosign and sets it)")
		}
		out, err := runWorkload(t, cosigned, socket)
		if err != nil || strings.TrimSpace(out) != e2eSignedCosignID {
			t.Fatalf("fetchsvid: %v\n%s", err, out)
		}
	})
	t.Run("keyless, trusted root", func(t *testing.T) {
		out, err := runWorkload(t, keyless, socket)
		if err != nil || strings.TrimSpace(out) != e2eSignedIdentityID {
			t.Fatalf("fetchsvid: %v\n%s", err, out)
		}
	})
	t.Run("one byte changed", func(t *testing.T) {
		out, err := runWorkload(t, modified, socket)
		if err == nil || !strings.Contains(out, "PermissionDenied") {
			t.Fatalf("fetchsvid of the modified executable: %v\n%s", err, out)
		}
		a.waitLog(t, modified+`.sigstore.json error="no trusted signature: `, 10*time.Second)
		if !strings.Contains(a.stderr.String(), `signer \"release\": failed to verify signature: artifact does not match digest`) {
			t.Error("the agent log does not say that the artifact does not match the release signature")
		}
	})
	t.Run("signed by another key", func(t *testing.T) {
		out, err := runWorkload(t, foreign, socket)
		if err == nil || !strings.Contains(out, "PermissionDenied") {
			t.Fatalf("fetchsvid of the foreign-signed executable: %v\n%s", err, out)
		}
		a.waitLog(t, foreign+`.sigstore.json error="no trusted signature: `, 10*time.Second)
	})
	t.Run("unsigned", func(t *testing.T) {
		out, err := runWorkload(t, built, socket)
		if err == nil || !strings.Contains(out, "PermissionDenied") {
			t.Fatalf("fetchsvid without a bundle: %v\n%s", err, out)
		}
	})
	log := a.stderr.String()
	for _, want := range []string{"caller's Sigstore bundle not trusted", "failed to verify signature", `sigstore_bundle="none found"`} {
		if !strings.Contains(log, want) {
			t.Errorf("agent log lacks %q", want)
		}
	}
}
