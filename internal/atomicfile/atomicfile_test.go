package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func TestWriteSetReplacesAndSetsMode(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	cert := filepath.Join(dir, "cert.pem")
	if err := WriteSet([]File{{key, []byte("k1"), 0o600}, {cert, []byte("c1"), 0o644}}); err != nil {
		t.Fatal(err)
	}
	if err := WriteSet([]File{{key, []byte("k2"), 0o600}, {cert, []byte("c2"), 0o644}}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{key: "k2", cert: "c2"} {
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	fi, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode = %v, want 0600", fi.Mode().Perm())
	}
}

func TestWriteSetFailureKeepsPreviousSet(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	if err := Write(key, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The second file's directory does not exist: nothing may be replaced.
	err := WriteSet([]File{{key, []byte("new"), 0o600}, {filepath.Join(dir, "missing", "cert.pem"), []byte("c"), 0o644}})
	if err == nil {
		t.Fatal("WriteSet succeeded with an unwritable file")
	}
	got, _ := os.ReadFile(key)
	if string(got) != "old" {
		t.Errorf("key.pem = %q after a failed set, want the old content", got)
	}
	assertNoTempFiles(t, dir, "key.pem")
}

func TestWriteFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	// The target is a directory, so the rename cannot happen.
	target := filepath.Join(dir, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(target, "keep")
	if err := os.WriteFile(inside, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(target, []byte("new"), 0o600); err == nil {
		t.Fatal("Write over a directory succeeded")
	}
	if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
		t.Errorf("target is no longer the old directory: %v", err)
	}
	if got, err := os.ReadFile(inside); err != nil || string(got) != "old" {
		t.Errorf("old content = %q, %v; want old", got, err)
	}
	assertNoTempFiles(t, dir, "target")
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Write into a missing directory: got %v, want ErrNotExist", err)
	}
}

func TestWriteNewNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	if err := WriteNew(path, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteNew(path, []byte("second"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteNew: got %v, want ErrExist", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "first" {
		t.Errorf("content = %q, want first", got)
	}
	assertNoTempFiles(t, dir, "key.pem")
}

func TestWriteIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "f")
	if err := Write(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode = %v, %v; want 0644", fi.Mode().Perm(), err)
	}
}

func assertNoTempFiles(t *testing.T, dir string, keep ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !slices.Contains(keep, e.Name()) {
			t.Errorf("leftover file %s", e.Name())
		}
	}
}
