package vaulte2e

// A small swtpm runner. The main module's internal/swtpmtest would be
// importable from here (github.com/keybroker/keybroker/e2e/vault lies under
// the tree of github.com/keybroker/keybroker), but importing any package of
// the main module puts its go.mod into this module's graph, and minimal
// version selection would then move Vault's dependencies (gRPC, x/crypto,
// OpenTelemetry, vault/api, ...) to the main module's newer versions: a
// Vault build nobody has checked. This module requires only what Vault
// 1.19.5 requires, and talks to the TPM through swtpm's tools and tpm2-tools.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// swtpm is a running swtpm with an RSA EK certificate from a local CA.
type swtpm struct {
	addr     string // 127.0.0.1:port, raw TPM commands
	ctrlPort int    // addr's port + 1, swtpm's control channel
	dir      string
	ca       localCA

	cmd  *exec.Cmd
	done chan struct{}
}

// localCA is a swtpm_localca directory: its root and the intermediate that
// signs EK certificates.
type localCA struct {
	dir                string
	root, intermediate string // PEM files
}

// newLocalCA returns an empty CA directory; the first swtpm provisioned
// with it creates the CA, later ones share it.
func newLocalCA(t *testing.T) localCA {
	t.Helper()
	dir := tempDir(t, "swtpm-ca-")
	return localCA{dir: dir,
		root:         filepath.Join(dir, "swtpm-localca-rootca-cert.pem"),
		intermediate: filepath.Join(dir, "issuercert.pem")}
}

// tempDir is an absolute temporary directory removed at cleanup. Not
// t.TempDir: its name comes from the test's, and a comma breaks swtpm's
// comma-separated options.
func tempDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err == nil {
		dir, err = filepath.Abs(dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// requireTools skips the test when swtpm or tpm2-tools are missing, unless
// CI is set: CI machines must run it.
func requireTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, b := range []string{"swtpm", "swtpm_setup", "swtpm_localca", "tpm2_pcrextend"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("%s not on PATH (apt-get install swtpm swtpm-tools tpm2-tools)", strings.Join(missing, ", "))
	if os.Getenv("CI") == "" {
		t.Skip(msg + "; skipping, set CI to make this a failure")
	}
	t.Fatal(msg)
}

// startSWTPM provisions a fresh TPM whose EK certificate ca signs (only the
// sha256 PCR bank active) and runs `swtpm socket` on loopback until the
// test ends.
func startSWTPM(t *testing.T, ca localCA) *swtpm {
	t.Helper()
	requireTools(t)
	s := &swtpm{dir: tempDir(t, "swtpm-"), ca: ca}
	state := filepath.Join(s.dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"localca.conf": "statedir = " + ca.dir + "\n" +
			"signingkey = " + filepath.Join(ca.dir, "signkey.pem") + "\n" +
			"issuercert = " + ca.intermediate + "\n" +
			"certserial = " + filepath.Join(ca.dir, "certserial") + "\n",
		"localca.options": "--platform-manufacturer keybroker\n--platform-version 1.0\n--platform-model vaulte2e\n",
		"setup.conf": "create_certs_tool = " + localca + "\n" +
			"create_certs_tool_config = " + filepath.Join(s.dir, "localca.conf") + "\n" +
			"create_certs_tool_options = " + filepath.Join(s.dir, "localca.options") + "\n" +
			"active_pcr_banks = sha256\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	setupLog := filepath.Join(s.dir, "setup.log")
	out, err := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", state,
		"--create-ek-cert", "--create-platform-cert", "--config", filepath.Join(s.dir, "setup.conf"),
		"--logfile", setupLog, "--overwrite").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(setupLog)
		t.Fatalf("swtpm_setup: %v\n%s%s", err, out, log)
	}
	for attempt := 1; ; attempt++ {
		err := s.start(state)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			t.Fatalf("unable to start swtpm: %v", err)
		}
	}
	t.Cleanup(s.stop)
	return s
}

var errPortTaken = errors.New("port taken")

func (s *swtpm) start(state string) error {
	port, err := freePortPair()
	if err != nil {
		return err
	}
	logFile := filepath.Join(s.dir, "swtpm.log")
	os.Remove(logFile)
	var out bytes.Buffer
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+state,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+logFile)
	cmd.Stdout, cmd.Stderr = &out, &out
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("unable to run swtpm: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			log, _ := os.ReadFile(logFile)
			msg := out.String() + string(log)
			if strings.Contains(msg, "Address already in use") {
				return fmt.Errorf("%w: %s", errPortTaken, msg)
			}
			return fmt.Errorf("swtpm exited: %s", msg)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			s.addr, s.ctrlPort = addr, port+1
			return nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("swtpm did not listen on %s", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *swtpm) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// freePortPair returns a loopback port whose successor was free too a
// moment ago: tpm2-tss's swtpm TCTI finds the control channel there.
func freePortPair() (int, error) {
	for range 50 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)))
		l1.Close()
		if err == nil {
			l2.Close()
			return port, nil
		}
	}
	return 0, errors.New("unable to find two consecutive free ports")
}

// spec is the agent's --tpm for this TPM.
func (s *swtpm) spec() string { return "tcp://" + s.addr }

// extend measures event into sha256 PCR pcr with tpm2_pcrextend and returns
// the digest extended.
func (s *swtpm) extend(t *testing.T, pcr int, event string) [sha256.Size]byte {
	t.Helper()
	sum := sha256.Sum256([]byte(event))
	host, port, _ := net.SplitHostPort(s.addr)
	cmd := exec.Command("tpm2_pcrextend", fmt.Sprintf("%d:sha256=%s", pcr, hex.EncodeToString(sum[:])))
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=swtpm:host="+host+",port="+port)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_pcrextend: %v\n%s", err, out)
	}
	return sum
}

// extendedFromZero is the value of a PCR that was zero and had events
// extended into it, in order.
func extendedFromZero(events ...[sha256.Size]byte) string {
	var pcr [sha256.Size]byte
	for _, e := range events {
		pcr = sha256.Sum256(append(pcr[:], e[:]...))
	}
	return hex.EncodeToString(pcr[:])
}
