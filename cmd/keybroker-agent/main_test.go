package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootstrapEKIntermediatesFlag checks that a bad --ek-intermediates file
// fails before the TPM or the broker is touched, naming the file.
func TestBootstrapEKIntermediatesFlag(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	bad := filepath.Join(dir, "inter.pem")
	for path, content := range map[string]string{ca: "unused", bad: "not PEM"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"bootstrap", "--tpm", "tcp://127.0.0.1:1", "--broker", "127.0.0.1:1", "--ca", ca,
		"--out", filepath.Join(dir, "out"), "--event-log", "none", "--ek-intermediates", bad}, &stdout, &stderr)
	if want := "bootstrap: EK intermediates " + bad + ": holds no PEM certificate\n"; code != 1 || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want 1, %q", code, stderr.String(), want)
	}
	if strings.Contains(stderr.String(), "failed at") {
		t.Error("bootstrap went on to a stage after a bad --ek-intermediates")
	}
}
