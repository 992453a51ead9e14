package workload

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultSocket is where the agent serves the Workload API by default.
// Workloads find it through SPIFFE_ENDPOINT_SOCKET=unix:///run/keybroker/agent.sock.
const DefaultSocket = "/run/keybroker/agent.sock"

// Socket and directory modes. Any local user may connect: identity comes
// from attesting the caller, not from file permissions. A directory that
// already exists keeps its mode, so an operator can narrow who reaches the
// socket with its group.
const (
	SocketDirMode = 0o755
	SocketMode    = 0o777
)

// Listen creates the Workload API socket at path (absolute): it creates
// the parent directory (SocketDirMode) if missing, removes a stale socket
// left by an agent that died (refusing if another process still serves
// it, or if path is not a socket), listens, and sets the socket's mode to
// SocketMode. Closing the listener removes the socket.
func Listen(path string) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("workload socket %q: path must be absolute", path)
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, SocketDirMode); err != nil {
			return nil, fmt.Errorf("unable to create %s: %w", dir, err)
		}
		// MkdirAll's mode is filtered by the umask.
		if err := os.Chmod(dir, SocketDirMode); err != nil {
			return nil, fmt.Errorf("unable to set the mode of %s: %w", dir, err)
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("workload socket %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("workload socket %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("unable to remove stale socket %s: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("unable to listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, SocketMode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("unable to set the mode of %s: %w", path, err)
	}
	return lis, nil
}
