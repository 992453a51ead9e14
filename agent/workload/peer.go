package workload

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// PeerInfo is what the kernel says about the process on the other end of a
// Workload API connection, recorded when it connected (SO_PEERCRED). It is
// the connection's credentials.AuthInfo.
type PeerInfo struct {
	credentials.CommonAuthInfo
	PID int32
	UID uint32
	GID uint32
	// StartTime is the process's start time (/proc/<pid>/stat field 22)
	// when it connected: a later process reusing the PID has another one.
	StartTime uint64

	// exe is the executable the process ran when it connected.
	exe executable
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return peerAuthType }

const peerAuthType = "unix-peercred"

// peerCredentials is the server's transport "security": it does no
// cryptography (the socket is local) and records each connection's peer
// credentials, start time and executable for the handlers to attest the
// caller.
type peerCredentials struct {
	att *attestor
}

func (c peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info, err := peerCred(conn)
	if err != nil {
		return nil, nil, err
	}
	if info, err = c.att.connected(info); err != nil {
		return nil, nil, err
	}
	info.SecurityLevel = credentials.NoSecurity
	return conn, info, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peer credentials are for the Workload API server only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: peerAuthType}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil }

// peerFromContext returns the peer credentials of a call's connection.
func peerFromContext(ctx context.Context) (PeerInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return PeerInfo{}, false
	}
	info, ok := p.AuthInfo.(PeerInfo)
	return info, ok
}
