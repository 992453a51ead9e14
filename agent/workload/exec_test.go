//go:build linux

package workload

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// helperEnv makes the test binary a helper process (TestMain) that
// connects to the socket $KEYBROKER_WORKLOAD_HELPER_SOCKET, keeps the
// connection across exec, waits for a line on stdin, then executes
// $KEYBROKER_WORKLOAD_HELPER_EXEC, which waits for stdin to close.
const (
	helperEnv     = "KEYBROKER_WORKLOAD_HELPER"
	helperSockEnv = "KEYBROKER_WORKLOAD_HELPER_SOCKET"
	helperExecEnv = "KEYBROKER_WORKLOAD_HELPER_EXEC"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "connect-exec":
		os.Exit(connectThenExec())
	case "wait":
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func connectThenExec() int {
	// A raw socket without close-on-exec: the connection outlives exec.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: os.Getenv(helperSockEnv)})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var b [1]byte
	if _, err := os.Stdin.Read(b[:]); err != nil {
		return 1
	}
	next := os.Getenv(helperExecEnv)
	env := append(os.Environ(), helperEnv+"=wait")
	err = syscall.Exec(next, []string{next}, env)
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// copyExecutable copies the test binary to dir/name with extra bytes at
// the end: the same program under another SHA-256.
func copyExecutable(t *testing.T, name, extra string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, append(data, extra...), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExecAfterConnect runs a real process that connects as one program
// and then executes another: the calls of its connection are refused from
// then on, both a first call made after the exec and a stream that
// attested it before.
func TestExecAfterConnect(t *testing.T) {
	first := copyExecutable(t, "first", "first")
	second := copyExecutable(t, "second", "second")
	sock := filepath.Join(t.TempDir(), "api.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()

	cmd := exec.Command(first)
	cmd.Env = append(os.Environ(), helperEnv+"=connect-exec", helperSockEnv+"="+sock, helperExecEnv+"="+second)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	conn, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	info, err := peerCred(conn)
	if err != nil {
		t.Fatal(err)
	}
	src := newFakeSource(t)
	s := NewServer(src, WithLogger(quietLog()))
	a := s.att
	peer, err := a.connected(info)
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.attest(peer)
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != first || c.SHA256 != sha256Hex(t, first) {
		t.Fatalf("caller before exec = %s %s, want %s", c.Path, c.SHA256, first)
	}
	// An entry the caller matches by its uid, so that only the executable
	// check can refuse it.
	src.set(src.snapshot(Entry{Name: "any", ID: webID, Selectors: []Selector{{Type: SelectorTypeUnix, Value: fmt.Sprintf("uid:%d", c.UID)}}}))
	if _, _, _, err := s.identity(c, "FetchX509SVID"); err != nil {
		t.Fatalf("identity before exec = %v", err)
	}

	if _, err := stdin.Write([]byte{'\n'}); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join("/proc", fmt.Sprint(info.PID), "exe")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if p, _ := os.Readlink(exe); p == second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper did not execute the second program")
		}
	}

	if got, err := a.attest(peer); !errors.Is(err, errExecChanged) {
		t.Errorf("first call after exec = %+v, %v; want errExecChanged", got, err)
	}
	_, _, _, err = s.identity(c, "FetchX509SVID")
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != msgNotAttested {
		t.Errorf("streamed response after exec = %v, want PermissionDenied %q", err, msgNotAttested)
	}
	// A new connection of the same process is the second program.
	again, err := a.connected(info)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.attest(again); err != nil || c.Path != second || c.SHA256 != sha256Hex(t, second) {
		t.Errorf("new connection after exec = %s %s, %v; want %s", c.Path, c.SHA256, err, second)
	}
}
