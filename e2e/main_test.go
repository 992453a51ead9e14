package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// bins holds the binaries under test, built once per test binary on first
// use, so that -short runs and runs of the interop tests alone build nothing.
var bins struct {
	once   sync.Once
	dir    string
	broker string // keybroker
	agent  string // keybroker-agent
	err    error
}

// binaries builds bin/keybroker and bin/keybroker-agent from the module this
// package belongs to, once.
func binaries(t *testing.T) (broker, agent string) {
	t.Helper()
	bins.once.Do(func() {
		start := time.Now()
		bins.err = buildBinaries()
		if bins.err == nil {
			t.Logf("built keybroker and keybroker-agent in %v", time.Since(start).Round(time.Millisecond))
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.broker, bins.agent
}

func buildBinaries() error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("go not on PATH: %w", err)
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return fmt.Errorf("go env GOMOD names no module (%q)", gomod)
	}
	dir, err := os.MkdirTemp("", "keybroker-e2e-bin-")
	if err != nil {
		return err
	}
	bins.dir = dir
	cmd := exec.Command(goBin, "build", "-o", dir+string(os.PathSeparator), "./cmd/...")
	cmd.Dir = filepath.Dir(gomod)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/... in %s: %v\n%s", cmd.Dir, err, stderr.String())
	}
	bins.broker = filepath.Join(dir, "keybroker")
	bins.agent = filepath.Join(dir, "keybroker-agent")
	for _, b := range []string{bins.broker, bins.agent} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("go build left no %s: %w", filepath.Base(b), err)
		}
	}
	return nil
}
