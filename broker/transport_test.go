package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"

	"github.com/keybroker/keybroker/broker/issue"
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

// testTLSPair is a server configuration with the broker CA's serving
// certificate for 127.0.0.1 and a client configuration trusting that CA.
func testTLSPair(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.ServingCertificate([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	return &tls.Config{Certificates: []tls.Certificate{serving}, MinVersion: tls.VersionTLS13},
		&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
}
