package packaging

import (
	"bytes"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// The version and revision the tests stamp release builds with.
const (
	testVersion  = "v0.0.0-packaging-test"
	testRevision = "0123456789abcdef0123456789abcdef01234567"
)

// hostRelease is `make release` for this machine's platform, built once
// for all tests of the package (TestMain removes it).
var hostRelease struct {
	once sync.Once
	dir  string
	out  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if hostRelease.dir != "" {
		os.RemoveAll(hostRelease.dir)
	}
	os.Exit(code)
}

// repoRoot is the module root: this package's parent directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// makeRelease runs `make release` in the source tree root for one set of
// platforms and commands into dist, and returns SHA256SUMS.
func makeRelease(root, dist, platforms, cmds string) (string, error) {
	c := exec.Command("make", "-C", root, "--no-print-directory", "release", "DIST="+dist,
		"VERSION="+testVersion, "REVISION="+testRevision,
		"RELEASE_PLATFORMS="+platforms, "RELEASE_CMDS="+cmds)
	if out, err := c.CombinedOutput(); err != nil {
		return "", &buildError{err: err, out: out}
	}
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	return string(sums), err
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return "make release: " + e.err.Error() + "\n" + string(e.out) }

// releaseBinaries returns the directory holding keybroker_linux_<arch> and
// keybroker-agent_linux_<arch> for this machine, built by `make release`.
func releaseBinaries(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("release binaries are built for linux")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed: the release is built by `make release`")
	}
	root := repoRoot(t)
	hostRelease.once.Do(func() {
		hostRelease.dir, hostRelease.err = os.MkdirTemp("", "keybroker-release-")
		if hostRelease.err == nil {
			hostRelease.out, hostRelease.err = makeRelease(root, hostRelease.dir,
				"linux/"+runtime.GOARCH, "keybroker keybroker-agent")
		}
	})
	if hostRelease.err != nil {
		t.Fatal(hostRelease.err)
	}
	return hostRelease.dir
}

// releaseBinary is the path of one command's host release build.
func releaseBinary(t *testing.T, cmd string) string {
	t.Helper()
	return filepath.Join(releaseBinaries(t), cmd+"_linux_"+runtime.GOARCH)
}

func TestReleaseStaticStamped(t *testing.T) {
	root := repoRoot(t)
	for _, cmd := range []string{"keybroker", "keybroker-agent"} {
		t.Run(cmd, func(t *testing.T) {
			bin := releaseBinary(t, cmd)
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatalf("release binary is not ELF: %v", err)
			}
			defer f.Close()
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Error("binary has a program interpreter: it is dynamically linked")
				}
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("binary needs shared libraries %q", libs)
			}
			if f.Section(".symtab") != nil {
				t.Error("binary keeps its symbol table: -s is missing")
			}
			data, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(data, []byte(root)) {
				t.Errorf("binary names the source directory %s: -trimpath is missing", root)
			}
			out, err := exec.Command(bin, "--version").CombinedOutput()
			if err != nil {
				t.Fatalf("%s --version: %v\n%s", cmd, err, out)
			}
			if !strings.Contains(string(out), testVersion) || !strings.Contains(string(out), testRevision) {
				t.Errorf("%s --version = %q, want %s and %s", cmd, out, testVersion, testRevision)
			}
		})
	}
}

// TestReleaseWithoutSimulator: the release is built without cgo, so the
// embedded TPM simulator is not in it; asking for it fails saying why,
// rather than running without a TPM.
func TestReleaseWithoutSimulator(t *testing.T) {
	cases := []struct {
		name string
		cmd  string
		args []string
	}{
		{"agent --tpm simulator", "keybroker-agent", []string{"ek-hash", "--tpm", "simulator"}},
		{"broker demo", "keybroker", []string{"demo"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := exec.Command(releaseBinary(t, tc.cmd), tc.args...)
			c.Dir = t.TempDir()
			out, err := c.CombinedOutput()
			if c.ProcessState == nil || c.ProcessState.ExitCode() != 1 {
				t.Fatalf("%s %s: %v, want exit status 1\n%s", tc.cmd, tc.args, err, out)
			}
			if !strings.Contains(string(out), "using the simulator requires building with CGO") {
				t.Errorf("output = %q, want it to say the simulator needs cgo", out)
			}
		})
	}
}

// TestReleaseReproducible builds the agent for linux/arm64 with `make
// release` in two copies of the source tree at different paths and
// requires byte-identical binaries. (`make release-check` compares the
// whole release, the second build with an empty build cache.)
func TestReleaseReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent twice for linux/arm64; skipped with -short")
	}
	releaseBinaries(t) // the same skips
	tmp := t.TempDir()
	a, b := filepath.Join(tmp, "a", "src"), filepath.Join(tmp, "b", "keybroker")
	copyTree(t, repoRoot(t), a)
	copyTree(t, a, b)
	var sums [2]string
	for i, src := range []string{a, b} {
		dist := filepath.Join(tmp, "dist", string(rune('a'+i)))
		s, err := makeRelease(src, dist, "linux/arm64", "keybroker-agent")
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = s
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}  keybroker-agent_linux_arm64\n$`).MatchString(sums[0]) {
		t.Fatalf("SHA256SUMS = %q, want one sha256sum line for keybroker-agent_linux_arm64", sums[0])
	}
	if sums[0] != sums[1] {
		t.Errorf("two builds differ:\n%s%s", sums[0], sums[1])
	}
}

// copyTree copies the regular files of a source tree, leaving out hidden
// directories (.git) and build output (bin, dist).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || rel == "bin" || rel == "dist") {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o644)
	})
	if err != nil {
		t.Fatalf("unable to copy the source tree: %v", err)
	}
}
