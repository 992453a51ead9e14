package workload

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProc makes a /proc with one process: stat with the given start time,
// exe pointing at exe, an untraced status and an environment without
// loader variables.
func fakeProc(t *testing.T, pid, startTime, exe string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, pid)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	// The command name holds spaces and parentheses, as it may.
	stat := pid + " (a (weird) name) S 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 " + startTime + " 1000 100\n"
	if err := os.WriteFile(filepath.Join(p, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "status"), []byte("Name:\tweb\nState:\tS (sleeping)\nTracerPid:\t0\nUid:\t1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "environ"), []byte("PATH=/usr/bin\x00HOME=/\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if exe != "" {
		if err := os.Symlink(exe, filepath.Join(p, "exe")); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestProcessStartTime(t *testing.T) {
	dir := fakeProc(t, "42", "123456", "")
	got, err := processStartTime(dir, 42)
	if err != nil || got != 123456 {
		t.Fatalf("processStartTime = %d, %v; want 123456", got, err)
	}
	if _, err := processStartTime(dir, 43); err == nil {
		t.Error("processStartTime of a missing process succeeded")
	}
	// And the real one: this process.
	if _, err := processStartTime(DefaultProcDir, int32(os.Getpid())); err != nil {
		t.Errorf("processStartTime(self) = %v", err)
	}
}

func TestAttestCaller(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "web")
	if err := os.WriteFile(exe, []byte("program v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("program v1"))
	dir := fakeProc(t, "42", "777", exe)
	a := newAttestor(dir, BundleLocations{}, quietLog())
	connect := func(t *testing.T) PeerInfo {
		t.Helper()
		p, err := a.connected(PeerInfo{PID: 42, UID: 1000, GID: 100})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	peer := connect(t)
	if peer.StartTime != 777 {
		t.Fatalf("start time %d, want 777", peer.StartTime)
	}

	c, err := a.attest(peer)
	if err != nil {
		t.Fatal(err)
	}
	if c.PID != 42 || c.UID != 1000 || c.GID != 100 || c.Path != exe || c.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("attest = %+v, want pid 42, uid 1000, gid 100, path %s, sha256 %x", c, exe, sum)
	}

	t.Run("hash cached while the file is unchanged", func(t *testing.T) {
		if len(a.hashes) != 1 {
			t.Fatalf("%d cached hashes, want 1", len(a.hashes))
		}
		for k := range a.hashes {
			a.hashes[k] = "cached"
		}
		if c, _ := a.attest(connect(t)); c.SHA256 != "cached" {
			t.Errorf("SHA256 = %q, want the cached value", c.SHA256)
		}
	})
	t.Run("a changed file ends the connection and is hashed again", func(t *testing.T) {
		if err := os.WriteFile(exe, []byte("program v2, longer"), 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := a.attest(peer); !errors.Is(err, errExecChanged) {
			t.Errorf("attest on the old connection = %v, want errExecChanged", err)
		}
		sum := sha256.Sum256([]byte("program v2, longer"))
		if c, _ := a.attest(connect(t)); c.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("SHA256 = %q after the executable changed, want %x", c.SHA256, sum)
		}
	})
	t.Run("PID reused by another process", func(t *testing.T) {
		reused := peer
		reused.StartTime = 776 // the process that connected started earlier
		if _, err := a.attest(reused); !errors.Is(err, errCallerGone) {
			t.Errorf("attest = %v, want errCallerGone", err)
		}
	})
	t.Run("process gone", func(t *testing.T) {
		gone := peer
		gone.PID = 43
		if _, err := a.attest(gone); !errors.Is(err, errCallerGone) {
			t.Errorf("attest = %v, want errCallerGone", err)
		}
		if _, err := a.connected(gone); err == nil {
			t.Error("connected succeeded for a missing process")
		}
	})
	t.Run("unreadable executable: uid and gid only", func(t *testing.T) {
		dir := fakeProc(t, "42", "777", filepath.Join(t.TempDir(), "missing"))
		a := newAttestor(dir, BundleLocations{}, quietLog())
		p, err := a.connected(PeerInfo{PID: 42, UID: 1000, GID: 100})
		if err != nil {
			t.Fatal(err)
		}
		c, err := a.attest(p)
		if err != nil {
			t.Fatal(err)
		}
		if c.Path != "" || c.SHA256 != "" || c.UID != 1000 {
			t.Errorf("attest = %+v, want uid and gid only", c)
		}
	})
	t.Run("executable too large to hash: uid and gid only", func(t *testing.T) {
		big := filepath.Join(t.TempDir(), "big")
		if err := os.WriteFile(big, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(big, MaxExecutableSize+1); err != nil { // sparse
			t.Fatal(err)
		}
		a := newAttestor(fakeProc(t, "42", "777", big), BundleLocations{}, quietLog())
		p, err := a.connected(PeerInfo{PID: 42, UID: 1000, GID: 100})
		if err != nil {
			t.Fatal(err)
		}
		if p.exe.err == nil || !strings.Contains(p.exe.err.Error(), "larger than 1073741824 bytes") {
			t.Errorf("executable error = %v, want larger than 1073741824 bytes", p.exe.err)
		}
		if c, err := a.attest(p); err != nil || c.SHA256 != "" || c.Path != "" {
			t.Errorf("attest = %+v, %v; want uid and gid only", c, err)
		}
	})
}

func TestAttestSelf(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	a := newAttestor(DefaultProcDir, BundleLocations{}, quietLog())
	p, err := a.connected(PeerInfo{PID: int32(os.Getpid()), UID: uint32(os.Getuid())})
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.attest(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != exe || c.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("attest(self) = %+v; want path %s and sha256 %x", c, exe, sum)
	}
	if !strings.HasPrefix(c.Selectors()[2].String(), "unix:path:/") {
		t.Errorf("selectors %v", c.Selectors())
	}
}
