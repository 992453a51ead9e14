//go:build !linux

package workload

import (
	"errors"
	"net"
	"os"
)

func peerCred(net.Conn) (PeerInfo, error) {
	return PeerInfo{}, errors.New("workload attestation needs SO_PEERCRED (Linux)")
}

type fileKey struct{}

func keyOf(os.FileInfo) (fileKey, bool) { return fileKey{}, false }
