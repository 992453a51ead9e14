package workload

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/provenance"
	"github.com/keybroker/keybroker/internal/provenance/provenancetest"
)

const (
	testIssuer  = "https://issuer.test/auth"
	testSubject = "builder@example.com"
)

// signedFacts returns the signed selectors of a caller running exe (pid
// 42 of a fake /proc whose root is the real one) against trust, with the
// agent's log.
func signedFacts(t *testing.T, exe string, loc BundleLocations, trust *provenance.Trust) ([]string, string) {
	t.Helper()
	dir := fakeProc(t, "42", "777", exe)
	if err := os.Symlink("/", filepath.Join(dir, "42", "root")); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	a := newAttestor(dir, loc, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	return callerSignedFacts(t, a, trust), logs.String()
}

// callerSignedFacts connects pid 42 of a's /proc and returns its signed
// selectors against trust.
func callerSignedFacts(t *testing.T, a *attestor, trust *provenance.Trust) []string {
	t.Helper()
	p, err := a.connected(PeerInfo{PID: 42, UID: 1000, GID: 100})
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.attest(p)
	if err != nil {
		t.Fatal(err)
	}
	snap := &Snapshot{Trust: trust, Entries: []Entry{{Name: "signed", ID: webID, Selectors: []Selector{{Type: SelectorTypeSigned, Value: "key:release"}}}}}
	var out []string
	sel, _ := a.selectors(c, snap)
	for _, s := range sel {
		if s.Type == SelectorTypeSigned {
			out = append(out, s.String())
		}
	}
	return out
}

func writeExe(t *testing.T, content string) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "web")
	if err := os.WriteFile(exe, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

func TestSignedSelectorsOfCaller(t *testing.T) {
	release, other := provenancetest.NewKeySigner(t), provenancetest.NewKeySigner(t)
	ca := provenancetest.NewCA(t)
	der, err := provenance.ParsePublicKey(release.PublicKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := provenance.NewTrust([]provenance.Key{{Name: "release", DER: der}},
		[]provenance.Root{{Name: "ci", JSON: ca.TrustedRootJSON, Issuers: []string{testIssuer}}})
	if err != nil {
		t.Fatal(err)
	}
	beside := BundleLocations{BesideExecutable: true}

	t.Run("key, bundle beside the executable", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		release.SignFile(t, exe, exe+".sigstore.json")
		got, _ := signedFacts(t, exe, beside, trust)
		if !slices.Equal(got, []string{"signed:key:release"}) {
			t.Fatalf("signed selectors = %v", got)
		}
	})
	t.Run("identity, bundle in a directory by digest", func(t *testing.T) {
		exe := writeExe(t, "program v2")
		bundles := t.TempDir()
		c := Caller{SHA256: sha256Hex(t, exe)}
		ca.SignFile(t, exe, filepath.Join(bundles, c.SHA256+".bundle"), testIssuer, testSubject)
		got, _ := signedFacts(t, exe, BundleLocations{Dirs: []string{bundles}}, trust)
		if !slices.Equal(got, []string{"signed:identity:" + testIssuer + "/" + testSubject}) {
			t.Fatalf("signed selectors = %v", got)
		}
	})
	t.Run("executable changed after signing", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		release.SignFile(t, exe, exe+".sigstore.json")
		if err := os.WriteFile(exe, []byte("program v1!"), 0o755); err != nil {
			t.Fatal(err)
		}
		got, logs := signedFacts(t, exe, beside, trust)
		if len(got) != 0 || !strings.Contains(logs, "caller's Sigstore bundle not trusted") || !strings.Contains(logs, `signer \"release\"`) {
			t.Fatalf("signed selectors = %v, log:\n%s", got, logs)
		}
	})
	t.Run("signed by an untrusted key", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		other.SignFile(t, exe, exe+".sigstore.json")
		got, logs := signedFacts(t, exe, beside, trust)
		if len(got) != 0 || !strings.Contains(logs, "failed to verify signature") {
			t.Fatalf("signed selectors = %v, log:\n%s", got, logs)
		}
	})
	t.Run("no bundle", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		got, logs := signedFacts(t, exe, beside, trust)
		if len(got) != 0 || !strings.Contains(logs, "no Sigstore bundle for the caller's executable") {
			t.Fatalf("signed selectors = %v, log:\n%s", got, logs)
		}
	})
	t.Run("bundle too large", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		if err := os.WriteFile(exe+".bundle", make([]byte, provenance.MaxBundleSize+1), 0o644); err != nil {
			t.Fatal(err)
		}
		got, logs := signedFacts(t, exe, beside, trust)
		if len(got) != 0 || !strings.Contains(logs, "larger than") {
			t.Fatalf("signed selectors = %v, log:\n%s", got, logs)
		}
	})
	t.Run("nowhere to look", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		release.SignFile(t, exe, exe+".sigstore.json")
		if got, _ := signedFacts(t, exe, BundleLocations{}, trust); len(got) != 0 {
			t.Fatalf("signed selectors = %v with no bundle locations", got)
		}
	})
	t.Run("no trust", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		release.SignFile(t, exe, exe+".sigstore.json")
		if got, logs := signedFacts(t, exe, beside, nil); len(got) != 0 || logs != "" {
			t.Fatalf("signed selectors = %v without trust, log:\n%s", got, logs)
		}
	})
}

func sha256Hex(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
