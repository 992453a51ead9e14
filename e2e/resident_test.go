package e2e

// tpm_resident: the released certificate's key lives in the TPM, and a
// TLS server no one here wrote (OpenSSL's s_server through Debian's
// tpm2-openssl provider) serves with it.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// skipUnlessTPM2OpenSSL skips (fails when CI is set) unless openssl, its
// tpm2 provider and the tpm2-abrmd resource manager are installed.
func skipUnlessTPM2OpenSSL(t *testing.T) {
	t.Helper()
	skipUnlessE2E(t)
	var missing []string
	for _, b := range []string{"openssl", "tpm2-abrmd", "dbus-daemon"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	// The provider needs a TPM to initialise; look for its module instead
	// (openssl version -m: MODULESDIR: "/usr/lib/…/ossl-modules").
	out, _ := exec.Command("openssl", "version", "-m").Output()
	dir := strings.Trim(strings.TrimSpace(strings.TrimPrefix(string(out), "MODULESDIR:")), `"`)
	if _, err := os.Stat(filepath.Join(dir, "tpm2.so")); err != nil {
		missing = append(missing, "the tpm2 provider")
	}
	if len(missing) == 0 {
		return
	}
	msg := strings.Join(missing, ", ") + " not installed (apt-get install tpm2-openssl tpm2-abrmd libtss2-tcti-tabrmd0 dbus-daemon)"
	if os.Getenv("CI") == "" {
		t.Skip(msg + "; skipping, set CI to make this a failure")
	}
	t.Fatal(msg)
}

// TestTPMResidentOpenSSL: with --tpm-resident the agent creates the key of
// a tpm_resident release inside swtpm and writes it as a TSS2 key file;
// the broker signed only its certificate (a node that offers no key is
// refused). openssl s_server loads that key file through the tpm2
// provider (which recreates the parent storage key in swtpm and loads the
// key under it) and completes a TLS 1.3 handshake, its CertificateVerify
// signed inside the TPM, with a client that verifies the chain to the
// broker's CA. On another TPM the key file does not load.
func TestTPMResidentOpenSSL(t *testing.T) {
	skipUnlessTPM2OpenSSL(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policyHCL(policyOpts{
		selector: `ek_cas = ["swtpm"]`, require: pcrRequire(p.value(0), p.value(7)), mode: "tpm_resident"})})
	out := filepath.Join(t.TempDir(), "tls")

	refused := bootstrap(t, tpm, b, out)
	wantExit(t, refused, 1)
	wantContains(t, "agent stderr", refused.stderr, "broker refused (FailedPrecondition)",
		`release: "node-tls" is tpm_resident and the node offered no TPM key for it (agent --tpm-resident node-tls)`)

	got := wantBootstrapped(t, bootstrap(t, tpm, b, out, "--tpm-resident", "node-tls"), "TPM_RESIDENT")
	keyFile, certFile := filepath.Join(out, "key.pem"), filepath.Join(out, "cert.pem")
	if key := string(readFile(t, keyFile)); !strings.HasPrefix(key, "-----BEGIN TSS2 PRIVATE KEY-----\n") {
		t.Fatalf("key.pem is not a TSS2 key file:\n%s", key)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v; want mode 0600", err)
	}

	// The key file on another TPM: the provider cannot load the key (one
	// key and its parent fit in swtpm's object slots without a resource
	// manager).
	other := swtpmtest.Start(t, swtpmtest.Opts{})
	if r := openssl(t, []string{"TPM2OPENSSL_TCTI=" + other.TCTI()}, "pkey", "-provider", "tpm2", "-provider", "default",
		"-in", keyFile, "-pubout"); r.code == 0 {
		t.Errorf("openssl pkey loaded the key file on another TPM:\n%s", r.stdout)
	}

	// A TLS server keeps the key loaded and hashes the handshake with the
	// tpm2 provider's digests, more objects than swtpm holds at once:
	// tpm2-abrmd swaps them, as a kernel resource manager would.
	env := resourceManager(t, tpm)
	pub := openssl(t, env, "pkey", "-provider", "tpm2", "-provider", "default", "-in", keyFile, "-pubout")
	certPub := openssl(t, nil, "x509", "-in", certFile, "-noout", "-pubkey")
	if pub.code != 0 || pub.stdout != certPub.stdout {
		t.Fatalf("the key file's public key (exit %d):\n%s\nis not the certificate's:\n%s", pub.code, pub.stdout, certPub.stdout)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(readFile(t, b.caFile)) {
		t.Fatal("no broker CA certificate")
	}
	state := handshakeOpenSSL(t, env, keyFile, certFile, ekHash[:16]+".nodes.e2e.keybroker", roots)
	if leaf := state.PeerCertificates[0]; leaf.SerialNumber.Text(16) != got.serial {
		t.Errorf("s_server presented serial %s, want the released %s", leaf.SerialNumber.Text(16), got.serial)
	}
	if state.Version != tls.VersionTLS13 {
		t.Errorf("TLS version 0x%x, want 1.3", state.Version)
	}
}

// openssl runs the openssl command with extra environment variables.
func openssl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), processTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, r.stderr)
	}
	return r
}

// resourceManager starts a private D-Bus session bus and tpm2-abrmd on it
// in front of tpm (which then serves no other client), and returns the
// environment that points the tpm2 provider at it. Both stop when the test
// ends.
func resourceManager(t *testing.T, tpm *swtpmtest.TPM) []string {
	t.Helper()
	bus := exec.Command("dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1")
	busOut, err := bus.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	killWithParent(bus)
	if err := bus.Start(); err != nil {
		t.Fatalf("dbus-daemon: %v", err)
	}
	t.Cleanup(func() { _ = bus.Process.Kill(); _ = bus.Wait() })
	addr, err := bufio.NewReader(busOut).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	env := []string{"DBUS_SESSION_BUS_ADDRESS=" + strings.TrimSpace(addr), "TPM2OPENSSL_TCTI=tabrmd:bus_type=session"}

	rm := exec.Command("tpm2-abrmd", "--session", "--allow-root", "--tcti="+tpm.TCTI())
	rm.Env = append(os.Environ(), env[0])
	log := &syncBuffer{}
	rm.Stdout, rm.Stderr = log, log
	killWithParent(rm)
	if err := rm.Start(); err != nil {
		t.Fatalf("tpm2-abrmd: %v", err)
	}
	t.Cleanup(func() {
		_ = rm.Process.Kill()
		_ = rm.Wait()
		if t.Failed() {
			t.Logf("tpm2-abrmd output:\n%s", log.String())
		}
	})
	// Ready once the provider can reach the TPM through it.
	deadline := time.Now().Add(logWaitTimeout)
	for {
		r := openssl(t, env, "rand", "-provider", "tpm2", "-provider", "default", "-propquery", "?provider=tpm2", "-hex", "8")
		if r.code == 0 {
			return env
		}
		if time.Now().After(deadline) {
			t.Fatalf("tpm2-abrmd did not serve the TPM:\n%s\n%s", r.stderr, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// handshakeOpenSSL runs openssl s_server with keyFile through the tpm2
// provider (env), completes a TLS 1.3 handshake with it as a Go client
// that verifies the chain to roots for serverName, and returns the
// connection state.
func handshakeOpenSSL(t *testing.T, env []string, keyFile, certFile, serverName string, roots *x509.CertPool) tls.ConnectionState {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "openssl", "s_server", "-provider", "tpm2", "-provider", "default",
		"-propquery", "?provider=tpm2", "-key", keyFile, "-cert", certFile, "-accept", addr, "-www")
	cmd.Env = append(os.Environ(), env...)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("openssl s_server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("openssl s_server output:\n%s", log.String())
		}
	})

	// Wait for the listener (s_server serves until the test ends).
	deadline := time.Now().Add(logWaitTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			t.Fatalf("openssl s_server exited:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("openssl s_server does not listen on %s: %v\n%s", addr, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{
		RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatalf("TLS handshake with openssl s_server: %v", err)
	}
	defer conn.Close()
	// -www answers a GET with a status page: the server side of the
	// connection works past the handshake.
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.0 200") {
		t.Fatalf("s_server answered %q, %v", line, err)
	}
	return conn.ConnectionState()
}
