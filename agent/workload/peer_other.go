//go:build !linux

package workload

import (
	"errors"
	"net"
)

func peerCred(net.Conn) (PeerInfo, error) {
	return PeerInfo{}, errors.New("workload attestation needs SO_PEERCRED (Linux)")
}
