package broker

import (
	"context"
	"net"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Per-connection bounds of the gRPC transport. Nodes connect, make two
// unary calls and leave, so the transport is tuned for short connections:
// fixed flow-control windows as large as an event log, which turn off
// grpc-go's bandwidth estimation (a PING and a WINDOW_UPDATE written on
// the first data of every connection); write buffers shared between
// connections instead of 32 KiB held by each; no read buffer of its own
// (crypto/tls buffers each record it decrypts already); a bound on
// concurrent calls per connection; calls run on a pool of long-lived
// goroutines, whose stacks have grown already, rather than on a new
// goroutine each.
//
// A peer that vanishes is found by HTTP/2 PINGs after connTime of
// silence (unanswered for connTimeout), and a connection without calls
// for connIdle is closed, instead of by TCP keepalives: those cost four
// setsockopt calls on every accepted connection.
const (
	streamWindow         = 1 << 20
	maxStreamsPerConnect = 128
	connTime             = time.Minute
	connTimeout          = 20 * time.Second
	connIdle             = 5 * time.Minute
	// handshakeTimeout bounds a connection's TLS handshake (grpc-go's
	// default, 120 s, would let silent connections hold handshake workers
	// and stretch a graceful stop for two minutes).
	handshakeTimeout = 30 * time.Second
)

func transportOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestSize),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(streamWindow),
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(0),
		grpc.MaxConcurrentStreams(maxStreamsPerConnect),
		grpc.NumStreamWorkers(streamWorkers()),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: connTime, Timeout: connTimeout, MaxConnectionIdle: connIdle}),
		grpc.ConnectionTimeout(handshakeTimeout),
	}
}

// streamWorkers is the size of the pool that runs calls: enough for the
// calls of a boot storm waiting on their commit at once. A call that
// finds every worker busy runs on a goroutine of its own.
func streamWorkers() uint32 { return uint32(workersPerCPU * runtime.GOMAXPROCS(0)) }

// workersPerCPU sizes the pools of calls and handshakes: each waits on
// the network or the store's commit most of its time.
const workersPerCPU = 64

// listenTCP listens on addr without TCP keepalives (see connTime).
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{Enable: false}, KeepAlive: -1}
	lis, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return plainListener{lis}, nil
}

// plainListener hands out connections that do not expose their file
// descriptor (syscall.Conn): grpc-go reads four socket options of every
// such connection for channelz, which the broker does not serve. (grpc-go
// then also leaves TCP_USER_TIMEOUT unset; an unanswered keepalive PING
// still closes a dead peer's connection after connTime + connTimeout.)
type plainListener struct{ net.Listener }

func (l plainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return plainConn{c}, nil
}

// plainConn is a net.Conn and nothing more.
type plainConn struct{ net.Conn }

// handshakePool runs the TLS server handshakes of creds on long-lived
// goroutines: grpc-go otherwise runs each on the connection's new
// goroutine, whose stack is copied as it grows through the hybrid key
// exchange (ML-KEM's large frames), on every connection. A handshake that
// finds every worker busy runs on the connection's goroutine as before.
type handshakePool struct {
	credentials.TransportCredentials
	work chan func()
	stop chan struct{}
}

func newHandshakePool(creds credentials.TransportCredentials, workers int) *handshakePool {
	p := &handshakePool{TransportCredentials: creds, work: make(chan func()), stop: make(chan struct{})}
	for range workers {
		go p.worker()
	}
	return p
}

func (p *handshakePool) worker() {
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		select {
		case f := <-p.work:
			f()
		case <-p.stop:
			return
		}
	}
}

// ServerHandshake is creds' ServerHandshake, run on an idle worker.
func (p *handshakePool) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	type result struct {
		conn net.Conn
		info credentials.AuthInfo
		err  error
	}
	done := make(chan result, 1)
	handshake := func() {
		conn, info, err := p.TransportCredentials.ServerHandshake(raw)
		done <- result{conn, info, err}
	}
	select {
	case p.work <- handshake:
		r := <-done
		return r.conn, r.info, r.err
	default:
		return p.TransportCredentials.ServerHandshake(raw)
	}
}

// Clone shares the pool.
func (p *handshakePool) Clone() credentials.TransportCredentials {
	return &handshakePool{TransportCredentials: p.TransportCredentials.Clone(), work: p.work, stop: p.stop}
}

// close stops the workers once the server has stopped.
func (p *handshakePool) close() { close(p.stop) }
