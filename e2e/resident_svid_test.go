package e2e

// A tpm_resident node SVID: `keybroker-agent run --tpm-resident` on swtpm
// authenticates to `keybroker serve` with a key that never leaves the TPM.

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// TestResidentNodeSVIDOnSWTPM: with an x509_svid release in tpm_resident
// mode bound to PCRs 0 and 7, the agent's node SVID key is created in
// swtpm under a PolicyPCR of the attested values; the agent writes the
// SVID and its TSS2 key file (no private key) and serves go-spiffe
// workload X.509- and JWT-SVIDs it got from the broker over mutual TLS,
// the TPM (opened per signature) signing each handshake. After PCR 7
// changes the TPM refuses to sign: no new JWT-SVID.
func TestResidentNodeSVIDOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	policy := spiffePolicy(t, p)
	for old, repl := range map[string]string{
		`mode      = "pcr_sealed"`:                      `mode      = "tpm_resident"`,
		`ttl       = "` + e2eNodeSVIDTTL.String() + `"`: `ttl       = "1h"`,
	} {
		if !strings.Contains(policy, old) {
			t.Fatalf("the SPIFFE policy has no %s", old)
		}
		policy = strings.Replace(policy, old, repl, 1)
	}
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policy,
		extra: "\nspiffe {\n  trust_domain = \"" + e2eTrustDomain + "\"\n}\n"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	out := filepath.Join(t.TempDir(), "out")
	socket := filepath.Join(t.TempDir(), "run", "agent.sock")
	a := startAgentRunWith(t, tpm, b, socket, "workload API serving", "--tpm-resident", "node-svid=sha256:0,7", "--out", out)
	if !strings.Contains(a.stdout.String(), "opened inside the TPM (TPM_RESIDENT)") {
		t.Fatalf("the agent did not open a TPM_RESIDENT node SVID:\n%s", a.stdout.String())
	}

	// The files: the SVID, and the TPM's blob of its key, nothing more.
	keyFile := filepath.Join(out, "svid_key.pem")
	key := readFile(t, keyFile)
	block, rest := pem.Decode(key)
	if block == nil || block.Type != "TSS2 PRIVATE KEY" || len(rest) != 0 {
		t.Fatalf("svid_key.pem is not one TSS2 key file:\n%s", key)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid_key.pem: %v, want mode 0600", err)
	}
	if block, _ := pem.Decode(readFile(t, filepath.Join(out, "svid.pem"))); block == nil || block.Type != "CERTIFICATE" {
		t.Fatal("svid.pem holds no certificate")
	}

	addr := workloadapi.WithAddr("unix://" + socket)
	svid, err := workloadapi.FetchX509SVID(ctx, addr)
	if err != nil || svid.ID != e2eWorkloadID {
		t.Fatalf("FetchX509SVID = %v, %v; want %s", svid, err, e2eWorkloadID)
	}
	if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "e2e"}, addr); err != nil {
		t.Fatalf("FetchJWTSVID (a handshake signed in the TPM): %v", err)
	}

	p.measure(t, 7, "e2e: an unknown bootloader")
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "e2e-after"}, addr)
	wantCode(t, err, codes.Unavailable, "unable to fetch a JWT-SVID")
	a.waitLog(t, "a policy check failed", 5*time.Second)
}
