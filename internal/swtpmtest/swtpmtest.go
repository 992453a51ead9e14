// Package swtpmtest runs swtpm, the libtpms software TPM that QEMU uses, as a
// separate process for tests that need a TPM behind a socket: an EK with a
// certificate chain, tpm2-tools as an independent client, a device reset.
//
//	tpm := swtpmtest.Start(t, swtpmtest.Opts{})   // provisioned EK + certificate
//	rw := tpm.Dial(t)                             // io.ReadWriteCloser for go-tpm(-tools)
//	ek, err := client.EndorsementKeyRSA(rw)
//	...
//	rw.Close()                                    // swtpm serves one client at a time
//	tpm.Reset(t)                                  // reboot: PCRs reset, transient objects gone
//
// tpm2-tools reach the same TPM with TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=<port of Addr>"
// (see TCTI). swtpm has no resource manager: flush what you load.
//
// Start skips the test when swtpm is not installed, unless the CI environment
// variable is set, in which case it fails: CI machines must run these tests.
package swtpmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// EKHandle is where swtpm_setup persists the RSA-2048 EK.
	EKHandle = 0x81010001
	// EKCertIndex is the NV index holding the RSA EK certificate (DER).
	EKCertIndex = 0x01c00002

	setupTimeout    = 60 * time.Second
	readyTimeout    = 10 * time.Second
	responseTimeout = 30 * time.Second
	startAttempts   = 5
)

// Opts configures Start. The zero value provisions an EK with a certificate.
type Opts struct {
	// NoEKCert starts swtpm on a blank state without running swtpm_setup:
	// no persistent EK, no EK certificate, and all four PCR banks (sha1,
	// sha256, sha384, sha512) active instead of sha256 only.
	NoEKCert bool
}

// TPM is a running swtpm. Its fields are read-only.
type TPM struct {
	Addr     string // "127.0.0.1:port": the raw TPM command port
	CtrlAddr string // "127.0.0.1:port+1": swtpm's control channel, where tpm2-tss's swtpm TCTI expects it
	StateDir string // absolute path of the TPM state directory

	// CAFiles are the PEM files of swtpm's local CA that signed the EK
	// certificate, root first then intermediate; nil with Opts.NoEKCert.
	CAFiles            []string
	RootCAFile         string
	IntermediateCAFile string

	dir     string // per-TPM temporary directory (state, CA, logs)
	logFile string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start provisions a fresh swtpm and starts `swtpm socket` on free loopback
// TCP ports (the command port, and the control channel on the next port),
// waits until it answers a TPM command, and registers tb.Cleanup to stop it
// and remove its temporary directory.
//
// Unless opts.NoEKCert is set, it first runs swtpm_setup --tpm2
// --create-ek-cert --create-platform-cert with a local CA kept in that
// temporary directory, so that the RSA-2048 EK at 0x81010001 has a certificate
// in NV index 0x1c00002 signed by that CA's intermediate (CN=swtpm-localca),
// itself signed by its root (CN=swtpm-localca-rootca). Only the sha256 PCR
// bank is then active.
//
// Start skips the test if swtpm or its tools are not on PATH and the CI
// environment variable is empty, and fails it if CI is set.
func Start(tb testing.TB, opts Opts) *TPM {
	tb.Helper()
	requireBinaries(tb, opts)
	// Not tb.TempDir: its name comes from the test's, and a comma in a path
	// breaks swtpm's comma-separated options (--tpmstate dir=...,...).
	dir, err := os.MkdirTemp("", "swtpmtest-")
	if err == nil {
		dir, err = filepath.Abs(dir)
	}
	if err != nil {
		tb.Fatalf("swtpmtest: unable to create a temporary directory: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if strings.ContainsRune(dir, ',') {
		tb.Fatalf("swtpmtest: temporary directory %q contains a comma, which swtpm cannot parse; set TMPDIR", dir)
	}
	t := &TPM{
		StateDir: filepath.Join(dir, "state"),
		dir:      dir,
		logFile:  filepath.Join(dir, "swtpm.log"),
	}
	if err := os.Mkdir(t.StateDir, 0o700); err != nil {
		tb.Fatalf("swtpmtest: unable to create the state directory: %v", err)
	}
	if !opts.NoEKCert {
		t.provision(tb)
	}
	tb.Cleanup(t.Stop)
	t.start(tb)
	return t
}

func requireBinaries(tb testing.TB, opts Opts) {
	tb.Helper()
	bins := []string{"swtpm", "swtpm_ioctl"}
	if !opts.NoEKCert {
		bins = append(bins, "swtpm_setup", "swtpm_localca")
	}
	var missing []string
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("swtpmtest: %s not on PATH (apt-get install swtpm swtpm-tools)", strings.Join(missing, ", "))
	if os.Getenv("CI") == "" {
		tb.Skip(msg + "; skipping, set CI to make this a failure")
	}
	tb.Fatal(msg)
}

// provision runs swtpm_setup with configuration files that keep swtpm's local
// CA (its keys, certificates and serial counter) under t.dir/ca instead of
// /var/lib/swtpm-localca.
func (t *TPM) provision(tb testing.TB) {
	tb.Helper()
	caDir := filepath.Join(t.dir, "ca")
	if err := os.Mkdir(caDir, 0o700); err != nil {
		tb.Fatalf("swtpmtest: unable to create the CA directory: %v", err)
	}
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		tb.Fatalf("swtpmtest: %v", err)
	}
	localcaConf := filepath.Join(t.dir, "swtpm-localca.conf")
	localcaOpts := filepath.Join(t.dir, "swtpm-localca.options")
	setupConf := filepath.Join(t.dir, "swtpm_setup.conf")
	t.IntermediateCAFile = filepath.Join(caDir, "issuercert.pem")
	// swtpm_localca names the root it creates after its own files.
	t.RootCAFile = filepath.Join(caDir, "swtpm-localca-rootca-cert.pem")
	files := []struct{ path, content string }{
		{localcaConf, "statedir = " + caDir + "\n" +
			"signingkey = " + filepath.Join(caDir, "signkey.pem") + "\n" +
			"issuercert = " + t.IntermediateCAFile + "\n" +
			"certserial = " + filepath.Join(caDir, "certserial") + "\n"},
		{localcaOpts, "--platform-manufacturer keybroker\n" +
			"--platform-version 1.0\n" +
			"--platform-model swtpmtest\n"},
		{setupConf, "create_certs_tool = " + localca + "\n" +
			"create_certs_tool_config = " + localcaConf + "\n" +
			"create_certs_tool_options = " + localcaOpts + "\n" +
			"active_pcr_banks = sha256\n"},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, []byte(f.content), 0o600); err != nil {
			tb.Fatalf("swtpmtest: unable to write %s: %v", f.path, err)
		}
	}

	setupLog := filepath.Join(t.dir, "swtpm_setup.log")
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "swtpm_setup", "--tpm2",
		"--tpmstate", t.StateDir,
		"--create-ek-cert", "--create-platform-cert",
		"--config", setupConf,
		"--logfile", setupLog,
		"--overwrite")
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(setupLog)
		tb.Fatalf("swtpmtest: swtpm_setup failed: %v\n%s%s", err, out, log)
	}
	for _, f := range []string{t.RootCAFile, t.IntermediateCAFile} {
		if _, err := os.Stat(f); err != nil {
			tb.Fatalf("swtpmtest: swtpm_setup left no CA certificate: %v", err)
		}
	}
	t.CAFiles = []string{t.RootCAFile, t.IntermediateCAFile}
}

// start runs `swtpm socket` on two consecutive free loopback ports, retrying with other
// ports if another process took one in the meantime.
func (t *TPM) start(tb testing.TB) {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		err := t.startOnce()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || attempt == startAttempts {
			tb.Fatalf("swtpmtest: unable to start swtpm: %v", err)
		}
	}
}

var errPortTaken = errors.New("port taken")

func (t *TPM) startOnce() error {
	port, ctrlPort, err := freePortPair()
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ctrl := net.JoinHostPort("127.0.0.1", strconv.Itoa(ctrlPort))
	os.Remove(t.logFile)
	var out bytes.Buffer
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+t.StateDir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrlPort),
		"--flags", "not-need-init,startup-clear",
		"--pid", "file="+filepath.Join(t.dir, "swtpm.pid"),
		"--log", "file="+t.logFile)
	cmd.Stdout, cmd.Stderr = &out, &out
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("unable to run swtpm: %w", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.mu.Lock()
	t.cmd, t.done = cmd, done
	t.mu.Unlock()

	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-done:
			log, _ := os.ReadFile(t.logFile)
			msg := strings.TrimSpace(out.String() + string(log))
			if strings.Contains(msg, "Address already in use") {
				return fmt.Errorf("%w: %s", errPortTaken, msg)
			}
			return fmt.Errorf("swtpm exited (%v): %s", cmd.ProcessState, msg)
		default:
		}
		if err := probe(addr); err == nil {
			t.Addr, t.CtrlAddr = addr, ctrl
			return nil
		} else if time.Now().After(deadline) {
			t.Stop()
			return fmt.Errorf("swtpm did not answer on %s within %v: %w", addr, readyTimeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freePortPair returns two consecutive loopback ports that were free a moment
// ago. tpm2-tss's swtpm TCTI finds the control channel at the command port + 1.
func freePortPair() (data, ctrl int, err error) {
	for range 50 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, fmt.Errorf("unable to find a free port: %w", err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)))
		l1.Close()
		if err == nil {
			l2.Close()
			return port, port + 1, nil
		}
	}
	return 0, 0, errors.New("unable to find two consecutive free ports")
}

// getRandom8 is TPM2_GetRandom(8): a harmless command that any started TPM
// answers with TPM_RC_SUCCESS.
var getRandom8 = []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8}

// startupClear is TPM2_Startup(TPM_SU_CLEAR).
var startupClear = []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0}

const rcInitialize = 0x100 // TPM_RC_INITIALIZE: already started

// probe checks that addr is a started TPM.
func probe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	conn := NewConn(c)
	conn.Timeout = 2 * time.Second
	defer conn.Close()
	rc, err := run(conn, getRandom8)
	if err != nil {
		return err
	}
	if rc != 0 {
		return fmt.Errorf("TPM2_GetRandom returned 0x%x", rc)
	}
	return nil
}

// run sends a command and returns the response code.
func run(rw io.ReadWriter, cmd []byte) (uint32, error) {
	if _, err := rw.Write(cmd); err != nil {
		return 0, fmt.Errorf("unable to send the TPM command: %w", err)
	}
	rsp := make([]byte, maxResponseSize)
	n, err := rw.Read(rsp)
	if err != nil {
		return 0, err
	}
	if n < headerSize {
		return 0, fmt.Errorf("short TPM response (%d bytes)", n)
	}
	return binary.BigEndian.Uint32(rsp[6:10]), nil
}

// TCTI returns the tpm2-tools TCTI configuration string for this TPM, for
// TPM2TOOLS_TCTI.
func (t *TPM) TCTI() string {
	host, port, _ := net.SplitHostPort(t.Addr)
	return "swtpm:host=" + host + ",port=" + port
}

// Dial opens a connection to the TPM command port and registers tb.Cleanup to
// close it. Close it yourself before the next Dial or Reset, or before running
// another client such as tpm2-tools: swtpm serves one connection at a time.
func (t *TPM) Dial(tb testing.TB) io.ReadWriteCloser {
	tb.Helper()
	c, err := net.DialTimeout("tcp", t.Addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("swtpmtest: unable to connect to swtpm at %s: %v", t.Addr, err)
	}
	conn := NewConn(c)
	conn.Timeout = responseTimeout
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// Reset reboots the TPM: a TPM_Init on the control channel (swtpm_ioctl -i)
// followed by TPM2_Startup(CLEAR). PCRs return to their reset values,
// transient objects and sessions are gone and saved contexts no longer load;
// persistent objects and NV indices stay. Close connections from Dial first.
func (t *TPM) Reset(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "swtpm_ioctl", "--tcp", t.CtrlAddr, "-i").CombinedOutput()
	if err != nil {
		tb.Fatalf("swtpmtest: swtpm_ioctl -i failed: %v: %s", err, out)
	}
	c, err := net.DialTimeout("tcp", t.Addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("swtpmtest: unable to connect to swtpm at %s: %v", t.Addr, err)
	}
	conn := NewConn(c)
	conn.Timeout = responseTimeout
	defer conn.Close()
	rc, err := run(conn, startupClear)
	if err != nil {
		tb.Fatalf("swtpmtest: TPM2_Startup after reset failed: %v", err)
	}
	if rc != 0 && rc != rcInitialize {
		tb.Fatalf("swtpmtest: TPM2_Startup after reset returned 0x%x", rc)
	}
}

// Stop kills swtpm and waits for it to exit. It is safe to call more than
// once; Start registers it with tb.Cleanup.
func (t *TPM) Stop() {
	t.mu.Lock()
	cmd, done := t.cmd, t.done
	t.cmd, t.done = nil, nil
	t.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}
