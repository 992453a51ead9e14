package workload

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// peerCred reads SO_PEERCRED from a unix socket connection.
func peerCred(conn net.Conn) (PeerInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return PeerInfo{}, fmt.Errorf("workload API connection is a %T, not a unix socket", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return PeerInfo{}, fmt.Errorf("unable to read peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return PeerInfo{}, fmt.Errorf("unable to read peer credentials: %w", err)
	}
	if credErr != nil {
		return PeerInfo{}, fmt.Errorf("unable to read peer credentials: %w", credErr)
	}
	if cred.Pid <= 0 {
		return PeerInfo{}, errors.New("unable to read peer credentials: no peer process")
	}
	return PeerInfo{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}
