package swtpmtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

const (
	headerSize      = 10      // TPM response header: tag(2) size(4) code(4)
	maxResponseSize = 1 << 20 // far above any TPM buffer; guards against garbage
)

// Conn frames TPM commands over swtpm's raw TCP command port. Each Write sends
// one whole command; the following Reads return that command's whole response,
// read to the length its 10-byte header gives, so a single Read with a large
// enough buffer (as go-tpm's legacy tpmutil.RunCommandRaw does) sees it all.
// A Read with a smaller buffer returns the rest on the next Reads.
//
// Conn works as the io.ReadWriter of go-tpm's legacy API and go-tpm-tools'
// client, and through transport.FromReadWriter with go-tpm's tpm2 API. swtpm
// serves one connection at a time: close a Conn before opening the next.
type Conn struct {
	conn net.Conn
	// Timeout bounds the wait for each response; zero waits forever. A
	// response that never comes usually means another connection to the
	// same swtpm is still open.
	Timeout time.Duration

	mu      sync.Mutex
	pending []byte // unread part of the last response
	closed  bool
}

// NewConn wraps a connection to swtpm's command port.
func NewConn(c net.Conn) *Conn { return &Conn{conn: c} }

// Write sends one TPM command. An unread rest of the previous response is
// discarded.
func (c *Conn) Write(cmd []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = nil
	return c.conn.Write(cmd)
}

// Read returns the response to the last command, reading it whole from the
// connection first if nothing of it is buffered.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		rsp, err := c.readResponse()
		if err != nil {
			return 0, err
		}
		c.pending = rsp
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *Conn) readResponse() ([]byte, error) {
	if c.Timeout > 0 {
		if err := c.conn.SetReadDeadline(time.Now().Add(c.Timeout)); err != nil {
			return nil, fmt.Errorf("unable to set the response deadline: %w", err)
		}
		defer c.conn.SetReadDeadline(time.Time{})
	}
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(c.conn, hdr); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("no TPM response within %v (is another connection to this swtpm still open?): %w", c.Timeout, err)
		}
		return nil, fmt.Errorf("unable to read the TPM response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > maxResponseSize {
		return nil, fmt.Errorf("TPM response header gives an invalid size %d", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(c.conn, rsp[headerSize:]); err != nil {
		return nil, fmt.Errorf("unable to read the TPM response body: %w", err)
	}
	return rsp, nil
}

// Close closes the connection. It is safe to call more than once.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.conn.Close()
}
