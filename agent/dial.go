package agent

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Dial connects to a broker over TLS, trusting only the CA certificates in
// caPEM (the broker's own CA bundle, pinned). serverName overrides the name
// checked in the broker's certificate; empty means the host part of addr.
func Dial(addr string, caPEM []byte, serverName string) (*grpc.ClientConn, error) {
	cfg, err := TLSConfig(addr, caPEM, serverName)
	if err != nil {
		return nil, err
	}
	return DialConfig(addr, cfg)
}

// TLSConfig is the TLS client configuration Dial uses: TLS 1.3, trusting
// only the CA certificates in caPEM, checking serverName (empty: the host
// part of addr) in the broker's certificate.
func TLSConfig(addr string, caPEM []byte, serverName string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("the broker CA bundle holds no PEM certificate")
	}
	if serverName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("broker address %q: %w", addr, err)
		}
		serverName = host
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13}, nil
}

// DialConfig connects to a broker at addr over TLS with cfg (as made by
// TLSConfig, which many connections may share), with the agent's
// connection settings.
func DialConfig(addr string, cfg *tls.Config) (*grpc.ClientConn, error) {
	return dialTLS(addr, cfg)
}

// callWindow is the flow-control window of the agent's connections, larger
// than any broker reply: a fixed window turns off grpc-go's bandwidth
// estimation, whose PINGs the broker would answer on every connection.
const callWindow = 1 << 20

// dialTLS sets up a gRPC connection to addr over TLS with cfg.
func dialTLS(addr string, cfg *tls.Config) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithInitialWindowSize(callWindow),
		grpc.WithInitialConnWindowSize(callWindow),
	)
	if err != nil {
		return nil, fmt.Errorf("unable to set up a connection to %s: %w", addr, err)
	}
	return conn, nil
}

// EKHash returns the node's EK identity as the broker computes it: the
// lowercase hex SHA-256 of the EK public key in PKIX DER form. Operators put
// it in ek_allow and in policies' ek_hashes.
func (n *Node) EKHash() (string, error) {
	der, err := x509.MarshalPKIXPublicKey(n.ek.PublicKey())
	if err != nil {
		return "", fmt.Errorf("unable to encode the EK public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}
