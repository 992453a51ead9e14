package atomicfile

import (
	"os"
	"path/filepath"
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
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "key.pem" {
			t.Errorf("leftover file %s", e.Name())
		}
	}
}
