package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/brokertest"
)

// TestAttestCache: an attestation with Out and CacheDir (keybroker-agent
// run --out --cache) writes the credential cache with the files, 0600, and
// Reopen restores the same files from it; a cache alone is no change.
func TestAttestCache(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{})
	out, cache := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "cache")
	fo := agent.FileOut{OutDir: out}
	att, err := agent.Attest(context.Background(), direct{srv: env.Server}, env.Node, agent.AttestOpts{Out: &fo, CacheDir: cache})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if changed, err := agent.WriteFiles(att, fo); err != nil || !changed {
		t.Fatalf("WriteFiles = %v, %v; want the first files written", changed, err)
	}
	fi, err := os.Stat(filepath.Join(cache, agent.CacheFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v, want mode 0600", err)
	}
	if changed, err := agent.WriteFiles(att, fo); err != nil || changed {
		t.Fatalf("WriteFiles again = %v, %v; want no change", changed, err)
	}
	written := readSet(t, out)
	removeSet(t, out)
	if _, err := agent.Reopen(env.Node, cache, fo); err != nil {
		t.Fatalf("Reopen: %v", err)
	}
	if got := readSet(t, out); got[agent.KeyFile] != written[agent.KeyFile] || got[agent.CertFile] != written[agent.CertFile] {
		t.Fatal("Reopen from the cache written with the files restored other files")
	}
}
