package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// The broker's listener hands gRPC connections without TCP keepalives
// (HTTP/2 PINGs find vanished peers instead), with Nagle off, and that do
// not expose their file descriptor, so that grpc-go does not read their
// socket options for channelz.
func TestListenerForShortConnections(t *testing.T) {
	lis, err := listenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(syscall.Conn); ok {
		t.Fatal("accepted connection exposes syscall.Conn; grpc-go would read its socket options on every connection")
	}
	if got, want := c.RemoteAddr().String(), client.LocalAddr().String(); got != want {
		t.Fatalf("RemoteAddr = %s; want %s (admission limits key on it)", got, want)
	}
	tcp, ok := c.(plainConn).Conn.(*net.TCPConn)
	if !ok {
		t.Fatalf("underlying connection is %T; want *net.TCPConn", c.(plainConn).Conn)
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var keepalive, nodelay int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		if keepalive, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); serr != nil {
			return
		}
		nodelay, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if keepalive != 0 {
		t.Errorf("SO_KEEPALIVE = %d; want 0", keepalive)
	}
	if nodelay == 0 {
		t.Error("TCP_NODELAY is off; responses would wait for Nagle")
	}
}

// stackCreds is TLS credentials that note whether each server handshake
// ran on a handshake pool worker.
type stackCreds struct {
	credentials.TransportCredentials
	onWorker chan bool
}

func (c stackCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	buf := make([]byte, 64<<10)
	c.onWorker <- strings.Contains(string(buf[:runtime.Stack(buf, false)]), "(*handshakePool).worker")
	return c.TransportCredentials.ServerHandshake(raw)
}

// Handshakes run on the pool's workers; with every worker busy (a client
// that never speaks) the next runs on the connection's own goroutine, and
// after close every handshake does.
func TestHandshakePool(t *testing.T) {
	serverCfg, clientCfg := testTLSPair(t)
	creds := stackCreds{credentials.NewTLS(serverCfg), make(chan bool, 8)}
	pool := newHandshakePool(creds, 1)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	// handshake runs one server handshake on the pool; the client speaks
	// TLS, or says nothing until closed.
	handshake := func(t *testing.T, speak bool) (onWorker bool, result chan error, client net.Conn) {
		t.Helper()
		client, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		raw, err := lis.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		result = make(chan error, 2)
		go func() {
			conn, info, err := pool.ServerHandshake(raw)
			if err == nil && (conn == nil || info.AuthType() != "tls") {
				err = fmt.Errorf("handshake gave conn %v, auth info %v", conn, info)
			}
			result <- err
		}()
		if speak {
			go func() { result <- tls.Client(client, clientCfg).Handshake() }()
		}
		return <-creds.onWorker, result, client
	}
	if onWorker, res, _ := handshake(t, true); !onWorker {
		t.Error("handshake with an idle worker ran on the connection's goroutine")
	} else if err := errors.Join(<-res, <-res); err != nil {
		t.Fatal(err)
	}
	// The only worker is now busy with a client that sends nothing.
	onWorker, silent, silentClient := handshake(t, false)
	if !onWorker {
		t.Fatal("handshake with an idle worker ran on the connection's goroutine")
	}
	if onWorker, res, _ := handshake(t, true); onWorker {
		t.Error("handshake ran on a worker although the only one is busy")
	} else if err := errors.Join(<-res, <-res); err != nil {
		t.Fatal(err)
	}
	// Closed, the pool takes no more handshakes once its worker is free.
	pool.close()
	silentClient.Close()
	if err := <-silent; err == nil {
		t.Fatal("handshake with a client that closed without a word succeeded")
	}
	if onWorker, res, _ := handshake(t, true); onWorker {
		t.Error("handshake ran on a worker after close")
	} else if err := errors.Join(<-res, <-res); err != nil {
		t.Fatal(err)
	}
}

// testTLSPair is a server configuration with a self-signed P-256
// certificate for 127.0.0.1 and a client configuration trusting it.
func testTLSPair(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "broker"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS13},
		&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
}
