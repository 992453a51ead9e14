package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const (
	maxLog   = 256 << 10 // output kept per member, across restarts
	tailRows = 25        // log lines quoted in a failure message
)

// member is one etcd server process of a Cluster. Its ports, data directory
// and command line stay the same across restarts.
type member struct {
	name      string
	clientURL string
	peerURL   string
	dataDir   string
	args      []string
	out       *tailBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has exited
	err  error         // cmd's exit status, set before done closes
}

// start runs the member's process; it returns once the process exists, not
// once it serves (see waitHealthy).
func (m *member) start(bin string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil && !closed(m.done) {
		return nil
	}
	fmt.Fprintf(m.out, "--- etcdtest: starting %s at %s\n", m.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(bin, m.args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = m.out, m.out
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("unable to start etcd member %s: %w", m.name, err)
	}
	done := make(chan struct{})
	m.cmd, m.done, m.err = cmd, done, nil
	go func() {
		err := cmd.Wait()
		m.mu.Lock()
		m.err = err
		m.mu.Unlock()
		close(done)
	}()
	return nil
}

// kill sends SIGKILL, as `kill -9` would, and waits for the process to exit.
func (m *member) kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil || closed(done) {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	fmt.Fprintf(m.out, "--- etcdtest: killed %s at %s\n", m.name, time.Now().Format(time.RFC3339Nano))
}

// running reports whether the member's process is alive.
func (m *member) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil && !closed(m.done)
}

// exited returns the exit error once the process has ended, nil while it runs.
func (m *member) exited() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || !closed(m.done) {
		return nil
	}
	if m.err == nil {
		return errors.New("exit status 0")
	}
	return m.err
}

// waitHealthy waits until a linearizable read through this member alone
// succeeds: the member runs, sees a leader and has caught up with it.
func (m *member) waitHealthy(deadline time.Time, tlsConf *tls.Config) error {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{m.clientURL},
		DialTimeout: time.Second,
		TLS:         tlsConf.Clone(),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("unable to create a client for etcd member %s: %w", m.name, err)
	}
	defer cli.Close()
	last := errors.New("no answer yet")
	for time.Now().Before(deadline) {
		if err := m.exited(); err != nil {
			return fmt.Errorf("etcd member %s exited: %w", m.name, err)
		}
		_, err := m.get(cli)
		if err == nil {
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("etcd member %s not healthy in time: %w", m.name, last)
}

// get reads one key through cli, waiting at most a second and no longer
// than the member's process lives.
func (m *member) get(cli *clientv3.Client) (*clientv3.GetResponse, error) {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return cli.Get(ctx, "etcdtest/health")
}

// closed reports whether ch is closed.
func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// cleanEnv is the test's environment without ETCD_* variables, which etcd
// would read as flags.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago. Another process may still take one before etcd binds it; Start retries
// in that case.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("unable to find a free loopback port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tailBuffer keeps the last maxLog bytes written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > maxLog {
		t.b = append([]byte(nil), t.b[len(t.b)-maxLog:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// tail returns the last n lines.
func (t *tailBuffer) tail(n int) string {
	lines := strings.Split(strings.TrimRight(t.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
