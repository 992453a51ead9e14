package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
)

// OpenTPM opens the TPM named by spec:
//
//	simulator          the embedded reference TPM simulator (fresh state each time)
//	tcp://HOST:PORT    a TPM taking raw commands over TCP, such as swtpm's data port
//	/dev/tpmrm0        a device (use the kernel resource manager, not /dev/tpm0)
func OpenTPM(spec string) (io.ReadWriteCloser, error) {
	switch {
	case spec == "simulator":
		sim, err := simulator.Get()
		if err != nil {
			return nil, fmt.Errorf("unable to start the embedded TPM simulator: %w", err)
		}
		return sim, nil
	case strings.HasPrefix(spec, "tcp://"):
		addr := strings.TrimPrefix(spec, "tcp://")
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("unable to connect to TPM at %s: %w", addr, err)
		}
		return &tcpTPM{conn: c}, nil
	case strings.HasPrefix(spec, "/"):
		rw, err := tpm2.OpenTPM(spec)
		if err != nil {
			return nil, fmt.Errorf("unable to open TPM device %s: %w", spec, err)
		}
		return rw, nil
	}
	return nil, fmt.Errorf("unknown TPM %q: want simulator, tcp://HOST:PORT or a device path", spec)
}

// maxTPMResponse bounds a response read from a TCP TPM.
const maxTPMResponse = 64 << 10

// tcpTPM frames TPM commands over a stream: each Write sends one command and
// the following Reads return exactly one whole response, whose size is in its
// 10-byte header.
type tcpTPM struct {
	conn    net.Conn
	pending []byte
}

func (t *tcpTPM) Write(cmd []byte) (int, error) {
	if len(t.pending) > 0 {
		return 0, errors.New("tpm: previous response not fully read")
	}
	if err := t.conn.SetDeadline(time.Now().Add(2 * time.Minute)); err != nil {
		return 0, err
	}
	return t.conn.Write(cmd)
}

func (t *tcpTPM) Read(p []byte) (int, error) {
	if len(t.pending) == 0 {
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(t.conn, hdr); err != nil {
			return 0, fmt.Errorf("tpm: unable to read response header: %w", err)
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < 10 || size > maxTPMResponse {
			return 0, fmt.Errorf("tpm: response size %d out of range", size)
		}
		resp := make([]byte, size)
		copy(resp, hdr)
		if _, err := io.ReadFull(t.conn, resp[10:]); err != nil {
			return 0, fmt.Errorf("tpm: unable to read response body: %w", err)
		}
		t.pending = resp
	}
	n := copy(p, t.pending)
	t.pending = t.pending[n:]
	return n, nil
}

func (t *tcpTPM) Close() error { return t.conn.Close() }
