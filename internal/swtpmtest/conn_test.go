package swtpmtest

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeTPM accepts one connection and answers each 12-byte command with
// respond(cmd), written one byte at a time so that a reader relying on a
// single Read would see a fragment.
func fakeTPM(t *testing.T, respond func(cmd []byte) []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for {
			cmd := make([]byte, 12)
			if _, err := io.ReadFull(c, cmd); err != nil {
				return
			}
			for _, b := range respond(cmd) {
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	return l.Addr().String()
}

func dialConn(t *testing.T, addr string) *Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn := NewConn(c)
	conn.Timeout = 5 * time.Second
	t.Cleanup(func() { conn.Close() })
	return conn
}

// response builds a TPM response with a body of n bytes of fill.
func response(n int, fill byte) []byte {
	rsp := []byte{0x80, 0x01, 0, 0, 0, byte(headerSize + n), 0, 0, 0, 0}
	return append(rsp, bytes.Repeat([]byte{fill}, n)...)
}

func TestConnReadsWholeResponses(t *testing.T) {
	want1, want2 := response(40, 0xaa), response(7, 0xbb)
	i := 0
	conn := dialConn(t, fakeTPM(t, func([]byte) []byte {
		i++
		if i == 1 {
			return want1
		}
		return want2
	}))

	// One large Read gets the whole response, as go-tpm's RunCommandRaw needs.
	if _, err := conn.Write(getRandom8); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], want1) {
		t.Fatalf("Read = %x, want %x", buf[:n], want1)
	}

	// Small Reads return the response piece by piece.
	if _, err := conn.Write(getRandom8); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < len(want2) {
		small := make([]byte, 4)
		n, err := conn.Read(small)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, small[:n]...)
	}
	if !bytes.Equal(got, want2) {
		t.Fatalf("small Reads = %x, want %x", got, want2)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConnErrors(t *testing.T) {
	tests := []struct {
		name    string
		respond func([]byte) []byte
		timeout time.Duration
		wantErr string
	}{
		{
			name:    "size below header",
			respond: func([]byte) []byte { return []byte{0x80, 0x01, 0, 0, 0, 4, 0, 0, 0, 0} },
			wantErr: "TPM response header gives an invalid size 4",
		},
		{
			name:    "size too large",
			respond: func([]byte) []byte { return []byte{0x80, 0x01, 0x7f, 0, 0, 0, 0, 0, 0, 0} },
			wantErr: "TPM response header gives an invalid size 2130706432",
		},
		{
			name:    "truncated body",
			respond: func([]byte) []byte { return response(20, 0)[:15] },
			timeout: 200 * time.Millisecond,
			wantErr: "unable to read the TPM response body",
		},
		{
			name:    "no response",
			respond: func([]byte) []byte { return nil },
			timeout: 100 * time.Millisecond,
			wantErr: "is another connection to this swtpm still open?",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialConn(t, fakeTPM(t, tt.respond))
			if tt.timeout != 0 {
				conn.Timeout = tt.timeout
			}
			if _, err := conn.Write(getRandom8); err != nil {
				t.Fatal(err)
			}
			_, err := conn.Read(make([]byte, 4096))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Read error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
