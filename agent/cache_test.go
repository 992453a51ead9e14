package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// bootstrapCached bootstraps env's node with a credential cache and
// returns the output and cache directories.
func bootstrapCached(t *testing.T, env *brokertest.Env) (out, cache string) {
	t.Helper()
	out, cache = filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "cache")
	if _, err := agent.Bootstrap(context.Background(), direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out, CacheDir: cache}); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	return out, cache
}

// removeSet removes the files bootstrap wrote in out.
func removeSet(t *testing.T, out string) {
	t.Helper()
	for _, f := range []string{agent.KeyFile, agent.CertFile, agent.ChainFile} {
		if err := os.Remove(filepath.Join(out, f)); err != nil {
			t.Fatal(err)
		}
	}
}

// assertNothingWritten fails if out holds any file.
func assertNothingWritten(t *testing.T, out string) {
	t.Helper()
	ents, err := os.ReadDir(out)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("a refused reopen wrote %d file(s) in %s", len(ents), out)
	}
}

func TestReopen(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	out, cache := bootstrapCached(t, env)
	first := readSet(t, out)

	fi, err := os.Stat(filepath.Join(cache, agent.CacheFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file mode = %v, want 0600", fi.Mode().Perm())
	}
	raw, err := os.ReadFile(filepath.Join(cache, agent.CacheFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "PRIVATE KEY") || strings.Contains(string(raw), first[agent.KeyFile]) {
		t.Error("the cache file holds the plaintext key")
	}
	var cached pb.AttestResponse
	if err := protojson.Unmarshal(raw, &cached); err != nil {
		t.Fatal(err)
	}
	if cached.GetReceiptId() == "" || len(cached.GetCredentials()) == 0 || cached.GetCredentials()[0].GetNotAfterUnix() == 0 {
		t.Errorf("cache = %v, want the receipt and each credential with its not_after", &cached)
	}

	removeSet(t, out)
	res, err := agent.Reopen(env.Node, cache, agent.FileOut{OutDir: out})
	if err != nil {
		t.Fatalf("Reopen: %v", err)
	}
	if res.ReceiptID != cached.GetReceiptId() || !res.Changed {
		t.Errorf("result = %+v", res)
	}
	again := readSet(t, out)
	for f, want := range first {
		if again[f] != want {
			t.Errorf("reopened %s differs from the one bootstrap wrote", f)
		}
	}
	if _, err := tls.X509KeyPair([]byte(again[agent.CertFile]), []byte(again[agent.KeyFile])); err != nil {
		t.Errorf("reopened key.pem does not match cert.pem: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(out, agent.KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode = %v, want 0600", fi.Mode().Perm())
	}

	// After PCR 7 moved, the pcr_sealed credential no longer opens.
	brokertest.Extend(t, env.RW, 7, "another boot")
	fresh := filepath.Join(t.TempDir(), "tls")
	_, err = agent.Reopen(env.Node, cache, agent.FileOut{OutDir: fresh})
	var se *agent.StepError
	if !errors.As(err, &se) || se.Step != agent.StepOpen || !strings.Contains(err.Error(), "sealed to PCR values this TPM no longer holds") {
		t.Fatalf("Reopen after PCR 7 moved = %v; want a refusal naming the PCRs", err)
	}
	assertNothingWritten(t, fresh)
}

func TestReopenRefusals(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	_, cache := bootstrapCached(t, env)
	path := filepath.Join(cache, agent.CacheFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// edit rewrites the cache's credentials with f.
	edit := func(f func(c *pb.Credential)) []byte {
		var r pb.AttestResponse
		if err := protojson.Unmarshal(good, &r); err != nil {
			t.Fatal(err)
		}
		for _, c := range r.GetCredentials() {
			f(c)
		}
		b, err := protojson.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name    string
		data    []byte
		perm    os.FileMode
		wantErr string
	}{
		{name: "expired", data: edit(func(c *pb.Credential) { c.NotAfterUnix = time.Now().Add(-time.Minute).Unix() }),
			wantErr: "expired at"},
		{name: "tampered JWE", data: edit(func(c *pb.Credential) { c.Jwe = c.Jwe[:len(c.Jwe)-8] + "AAAAAAAA" }),
			wantErr: "the cached credentials do not open in this TPM"},
		{name: "truncated", data: good[:len(good)/2], wantErr: "is malformed"},
		{name: "unknown field", data: []byte(`{"receiptId":"r","credentials":[{"name":"tls"}],"extra":1}`), wantErr: "is malformed"},
		{name: "no credentials", data: []byte(`{"receiptId":"r"}`), wantErr: "want a receipt ID and credentials only"},
		{name: "readable by others", data: good, perm: 0o644, wantErr: "want 0600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			perm := tt.perm
			if perm == 0 {
				perm = 0o600
			}
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, agent.CacheFile), tt.data, perm); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, agent.CacheFile), perm); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "tls")
			_, err := agent.Reopen(env.Node, dir, agent.FileOut{OutDir: out})
			var se *agent.StepError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Reopen = %v; want an error containing %q", err, tt.wantErr)
			}
			assertNothingWritten(t, out)
		})
	}
	// The untouched cache still opens: the refusals above were the edits'.
	if _, err := agent.Reopen(env.Node, cache, agent.FileOut{OutDir: t.TempDir()}); err != nil {
		t.Fatalf("Reopen of the untouched cache: %v", err)
	}
}

// What `keybroker-agent reopen` does after a reboot without the broker:
// open, in this TPM, what a Bootstrap with CacheDir kept sealed, and write
// it as Bootstrap does.
func ExampleReopen() {
	rw, err := agent.OpenTPM("/dev/tpmrm0")
	if err != nil {
		return
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		return
	}
	defer node.Close()
	res, err := agent.Reopen(node, "/var/lib/keybroker/cache", agent.FileOut{OutDir: "/etc/keybroker/tls"})
	if err != nil {
		slog.Error("reopen failed; nothing written", "error", err)
		return
	}
	slog.Info("reopened", "receipt", res.ReceiptID, "not_after", res.NotAfter)
}
