package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// systemdAnalyze returns the path of systemd-analyze, skipping the test
// where it is not installed.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd): the units are not checked")
	}
	return path
}

// installUnit copies a unit (and, with dropIns, its .d directory) into a
// new directory, with ExecStart pointing at the release build of its
// binary: verify requires an existing executable. It returns the unit's
// path.
func installUnit(t *testing.T, name string, dropIns bool) string {
	t.Helper()
	dir := t.TempDir()
	src, err := os.ReadFile(filepath.Join("systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	bins := releaseBinaries(t)
	re := regexp.MustCompile(`(?m)^ExecStart=/usr/local/bin/([a-z-]+) `)
	if n := len(re.FindAllIndex(src, -1)); n != 1 {
		t.Fatalf("%s has %d ExecStart=/usr/local/bin/... lines, want 1", name, n)
	}
	src = re.ReplaceAllFunc(src, func(m []byte) []byte {
		cmd := re.FindSubmatch(m)[1]
		return []byte("ExecStart=" + filepath.Join(bins, string(cmd)+"_linux_"+runtime.GOARCH) + " ")
	})
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	if dropIns {
		matches, _ := filepath.Glob(filepath.Join("systemd", name+".d", "*.conf"))
		for _, m := range matches {
			copyFile(t, m, filepath.Join(dir, name+".d", filepath.Base(m)))
		}
	}
	return path
}

// analyze runs systemd-analyze with the unit's directory first in the unit
// path (so drop-ins next to it apply) and returns its combined output.
func analyze(t *testing.T, unitPath string, args ...string) (string, error) {
	t.Helper()
	c := exec.Command(systemdAnalyze(t), append(args, unitPath)...)
	c.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+filepath.Dir(unitPath)+":", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")
	out, err := c.CombinedOutput()
	return string(out), err
}

// verifyProblems runs `systemd-analyze verify` and returns its complaints
// about the unit. Lines about other units (the machine's own) are logged,
// not counted.
func verifyProblems(t *testing.T, unitPath string) []string {
	t.Helper()
	out, err := analyze(t, unitPath, "verify")
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case line == "":
		case strings.Contains(line, filepath.Base(unitPath)) || strings.Contains(line, filepath.Dir(unitPath)):
			problems = append(problems, line)
		default:
			t.Logf("systemd-analyze verify, about another unit: %s", line)
		}
	}
	if err != nil && len(problems) == 0 {
		problems = append(problems, "systemd-analyze verify: "+err.Error()+": "+out)
	}
	return problems
}

func TestUnitsVerify(t *testing.T) {
	systemdAnalyze(t)
	for _, name := range []string{"keybroker.service", "keybroker-agent.service"} {
		for _, dropIns := range []bool{false, true} {
			if dropIns {
				if _, err := os.Stat(filepath.Join("systemd", name+".d")); err != nil {
					continue
				}
			}
			t.Run(name+"/drop-ins="+strconv.FormatBool(dropIns), func(t *testing.T) {
				if p := verifyProblems(t, installUnit(t, name, dropIns)); len(p) > 0 {
					t.Errorf("systemd-analyze verify %s:\n%s", name, strings.Join(p, "\n"))
				}
			})
		}
	}
	// The check above can fail: a misspelled directive and a wrong value
	// are reported.
	t.Run("broken copy", func(t *testing.T) {
		path := installUnit(t, "keybroker.service", false)
		src, _ := os.ReadFile(path)
		bad := strings.Replace(string(src), "ProtectHome=yes", "ProtecHome=yes\nProtectHome=yess", 1)
		if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		p := strings.Join(verifyProblems(t, path), "\n")
		if !strings.Contains(p, "Unknown key 'ProtecHome'") || !strings.Contains(p, "yess") {
			t.Errorf("verify of a broken unit reported %q, want the unknown key and the bad value", p)
		}
	})
}

// maxExposure is each unit's overall exposure as systemd 252's
// `systemd-analyze security --offline=yes` scores it (0 best, 10 worst):
// a weakened unit scores higher and fails.
var maxExposure = map[string]float64{
	"keybroker.service":       1.1,
	"keybroker-agent.service": 2.0,
}

func TestUnitsExposure(t *testing.T) {
	help, _ := exec.Command(systemdAnalyze(t), "security", "--help").CombinedOutput()
	if !strings.Contains(string(help), "--offline") {
		t.Skip("this systemd-analyze cannot score unit files offline (systemd < 250)")
	}
	for name, max := range maxExposure {
		t.Run(name, func(t *testing.T) {
			out, err := analyze(t, installUnit(t, name, false), "security", "--offline=yes", "--no-pager")
			m := regexp.MustCompile(`Overall exposure level for ` + regexp.QuoteMeta(name) + `: ([0-9.]+)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("systemd-analyze security: %v, no exposure level in:\n%s", err, out)
			}
			got, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: exposure %.1f (at most %.1f)", name, got, max)
			if got > max {
				t.Errorf("%s exposure %.1f, want at most %.1f; what it misses:\n%s", name, got, max, exposed(out))
			}
		})
	}
}

// exposed keeps the lines of a security report that cost exposure.
func exposed(report string) string {
	var lines []string
	for _, l := range strings.Split(report, "\n") {
		if strings.HasPrefix(l, "✗") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}
