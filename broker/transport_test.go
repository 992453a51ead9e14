package broker

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
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
