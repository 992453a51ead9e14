package workload

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
	a, _, logs := signedAttestor(t, exe, loc)
	return callerSignedFacts(t, a, trust), logs.String()
}

// signedAttestor returns an attestor of a fake /proc (returned too) with
// pid 42 running exe, whose root is the real one, and its log (debug
// level).
func signedAttestor(t *testing.T, exe string, loc BundleLocations) (*attestor, string, *bytes.Buffer) {
	t.Helper()
	dir := fakeProc(t, "42", "777", exe)
	if err := os.Symlink("/", filepath.Join(dir, "42", "root")); err != nil {
		t.Fatal(err)
	}
	logs := new(bytes.Buffer)
	return newAttestor(dir, loc, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))), dir, logs
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
	t.Run("executable changed after signing, same size, same attestor", func(t *testing.T) {
		exe := writeExe(t, "program v1")
		release.SignFile(t, exe, exe+".sigstore.json")
		a, _, logs := signedAttestor(t, exe, beside)
		if got := callerSignedFacts(t, a, trust); !slices.Equal(got, []string{"signed:key:release"}) {
			t.Fatalf("signed selectors before the change = %v", got)
		}
		fi, err := os.Stat(exe)
		if err != nil {
			t.Fatal(err)
		}
		// Let the filesystem's clock move on, so that the change time of
		// the rewrite differs from the one the hash was cached under; the
		// modification time is put back as a forger would.
		time.Sleep(20 * time.Millisecond)
		if err := os.WriteFile(exe, []byte("program v2"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(exe, time.Time{}, fi.ModTime()); err != nil {
			t.Fatal(err)
		}
		if got := callerSignedFacts(t, a, trust); len(got) != 0 || !strings.Contains(logs.String(), "caller's Sigstore bundle not trusted") || !strings.Contains(logs.String(), `signer \"release\"`) {
			t.Fatalf("signed selectors after the change = %v, log:\n%s", got, logs.String())
		}
		if len(a.hashes) != 2 {
			t.Errorf("%d cached hashes, want 2 (one per content)", len(a.hashes))
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

// TestSignedSelectorsRefusedForProcess checks that a signature is not
// taken for the process when something else than the signed bytes may run
// in it: the refusals leave the caller its unix selectors only.
func TestSignedSelectorsRefusedForProcess(t *testing.T) {
	release, trust := releaseTrust(t)
	tests := []struct {
		name    string
		status  string // replaces /proc/42/status when set
		environ string // replaces /proc/42/environ when set
		remove  string // a /proc/42 file to remove
		wantLog string
	}{
		{name: "traced", status: "Name:\tweb\nTracerPid:\t4242\n", wantLog: "the process is traced by process 4242"},
		{name: "no TracerPid", status: "Name:\tweb\n", wantLog: "no TracerPid in the caller's status"},
		{name: "LD_PRELOAD", environ: "PATH=/bin\x00LD_PRELOAD=/tmp/evil.so\x00", wantLog: "the process's environment sets LD_PRELOAD"},
		{name: "LD_AUDIT", environ: "LD_AUDIT=/tmp/evil.so\x00", wantLog: "the process's environment sets LD_AUDIT"},
		{name: "LD_LIBRARY_PATH", environ: "HOME=/\x00LD_LIBRARY_PATH=/tmp\x00", wantLog: "the process's environment sets LD_LIBRARY_PATH"},
		{name: "environment too large", environ: strings.Repeat("A", maxEnvironSize+1), wantLog: "larger than 1048576 bytes"},
		{name: "environment unreadable", remove: "environ", wantLog: "unable to read the caller's environment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exe := writeExe(t, "program v1")
			release.SignFile(t, exe, exe+".sigstore.json")
			a, dir, logs := signedAttestor(t, exe, BundleLocations{BesideExecutable: true})
			if got := callerSignedFacts(t, a, trust); !slices.Equal(got, []string{"signed:key:release"}) {
				t.Fatalf("signed selectors of a clean process = %v, log:\n%s", got, logs.String())
			}
			for name, content := range map[string]string{"status": tt.status, "environ": tt.environ} {
				if content != "" {
					if err := os.WriteFile(filepath.Join(dir, "42", name), []byte(content), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tt.remove != "" {
				if err := os.Remove(filepath.Join(dir, "42", tt.remove)); err != nil {
					t.Fatal(err)
				}
			}
			got := callerSignedFacts(t, a, trust)
			if len(got) != 0 || !strings.Contains(logs.String(), "no signed selectors for the caller") || !strings.Contains(logs.String(), tt.wantLog) {
				t.Fatalf("signed selectors = %v, log:\n%s", got, logs.String())
			}
		})
	}
}

// TestSignedSelectorsNeedLocalFilesystem runs the same bytes, signed,
// from a local file and from a procfs file (a filesystem not on the list):
// only the first gets signed selectors, and the second is not cached.
func TestSignedSelectorsNeedLocalFilesystem(t *testing.T) {
	const procFile = "/proc/sys/kernel/ostype"
	content, err := os.ReadFile(procFile)
	if err != nil {
		t.Skipf("no %s: %v", procFile, err)
	}
	release, trust := releaseTrust(t)
	sum := sha256.Sum256(content)
	bundles := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundles, hex.EncodeToString(sum[:])+".sigstore.json"), release.Sign(t, content), 0o644); err != nil {
		t.Fatal(err)
	}
	loc := BundleLocations{Dirs: []string{bundles}}

	local := writeExe(t, string(content))
	if got, logs := signedFacts(t, local, loc, trust); !slices.Equal(got, []string{"signed:key:release"}) {
		t.Fatalf("signed selectors from a local file = %v, log:\n%s", got, logs)
	}
	a, _, logs := signedAttestor(t, procFile, loc)
	got := callerSignedFacts(t, a, trust)
	if len(got) != 0 || !strings.Contains(logs.String(), "the executable is not on a local filesystem") {
		t.Fatalf("signed selectors from procfs = %v, log:\n%s", got, logs.String())
	}
	if len(a.hashes) != 0 {
		t.Errorf("%d cached hashes for a file on procfs, want none", len(a.hashes))
	}
}

func TestReadBundle(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "web.sigstore.json")
	if err := os.WriteFile(bundle, []byte(`{"mediaType":"x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, err := readBundle("", bundle); err != nil || string(data) != `{"mediaType":"x"}` {
		t.Fatalf("readBundle = %q, %v", data, err)
	}

	t.Run("FIFO refused without blocking", func(t *testing.T) {
		fifo := filepath.Join(dir, "fifo.bundle")
		if err := unix.Mkfifo(fifo, 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := readBundle("", fifo); done <- err }()
		select {
		case err := <-done:
			if err == nil || err.Error() != "not a regular file" {
				t.Errorf("readBundle(FIFO) = %v, want not a regular file", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("readBundle blocked on a FIFO")
		}
	})
	t.Run("symbolic link refused", func(t *testing.T) {
		link := filepath.Join(dir, "link.bundle")
		if err := os.Symlink(bundle, link); err != nil {
			t.Fatal(err)
		}
		if _, err := readBundle("", link); !errors.Is(err, unix.ELOOP) {
			t.Errorf("readBundle(symlink) = %v, want ELOOP", err)
		}
	})
	t.Run("absolute symbolic links resolve inside the caller's root", func(t *testing.T) {
		// The caller's root has /app -> <dir>: in the agent's filesystem
		// <dir>/web.sigstore.json exists, in the caller's it does not.
		root := t.TempDir()
		if err := os.Symlink(dir, filepath.Join(root, "app")); err != nil {
			t.Fatal(err)
		}
		if _, err := readBundle(root, "/app/web.sigstore.json"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("readBundle through an absolute link = %v, want not found", err)
		}
		inside := filepath.Join(root, dir)
		if err := os.MkdirAll(inside, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(inside, "web.sigstore.json"), []byte("inside"), 0o644); err != nil {
			t.Fatal(err)
		}
		if data, err := readBundle(root, "/app/web.sigstore.json"); err != nil || string(data) != "inside" {
			t.Errorf("readBundle inside the root = %q, %v; want the root's file", data, err)
		}
	})
	t.Run("magic links refused", func(t *testing.T) {
		f, err := os.Open(bundle)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		magic := filepath.Join("/proc/self/fd", strconv.Itoa(int(f.Fd())))
		if _, err := readBundle("", magic); err == nil {
			t.Error("readBundle through a /proc magic link succeeded")
		}
	})
}

func TestOnLocalFilesystem(t *testing.T) {
	for _, tt := range []struct {
		path      string
		wantLocal bool
	}{
		{path: "/proc/self/stat", wantLocal: false}, // procfs: not on the list
		{path: writeExe(t, "program"), wantLocal: true},
	} {
		f, err := os.Open(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		local, fsType, err := onLocalFilesystem(f)
		f.Close()
		if err != nil || local != tt.wantLocal {
			t.Errorf("onLocalFilesystem(%s) = %v (%s), %v; want %v", tt.path, local, fsType, err, tt.wantLocal)
		}
	}
}

// releaseTrust returns a key signer and a trust with it as signer
// "release".
func releaseTrust(t *testing.T) (*provenancetest.KeySigner, *provenance.Trust) {
	t.Helper()
	release := provenancetest.NewKeySigner(t)
	der, err := provenance.ParsePublicKey(release.PublicKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := provenance.NewTrust([]provenance.Key{{Name: "release", DER: der}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return release, trust
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
