package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/keybroker/keybroker/idlog"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// identityPolicy releases a node SVID and three workload entries selecting
// this test process, one ("api") by uid alone, and allows a node only
// while every identity its record shows went to an entry that pinned the
// executable's digest.
func identityPolicy(t *testing.T, p *pcrs, nodeTTL time.Duration) string {
	t.Helper()
	_, sum := selfExecutable(t)
	var b strings.Builder
	b.WriteString("policy \"mesh\" {\n  select {\n    ek_cas = [\"swtpm\"]\n  }\n  require = [\n")
	for _, r := range append(pcrRequire(p.value(0), p.value(7)),
		"identities.issued.all(i, i.selectors.exists(s, s.startsWith('unix:sha256:')))") {
		fmt.Fprintf(&b, "    %q,\n", r)
	}
	fmt.Fprintf(&b, `  ]
  release "node-svid" {
    type      = "x509_svid"
    mode      = "tpm_bound"
    ttl       = %q
    spiffe_id = "spiffe://%[2]s/node/${ek_hash_short}"
  }
  workload "web" {
    spiffe_id = "spiffe://%[2]s/web"
    selectors = ["unix:uid:%[3]d", "unix:sha256:%[4]s"]
  }
  workload "db" {
    spiffe_id = "spiffe://%[2]s/db"
    selectors = ["unix:uid:%[3]d", "unix:sha256:%[4]s"]
  }
  workload "api" {
    spiffe_id = "spiffe://%[2]s/api"
    selectors = ["unix:uid:%[3]d"]
  }
}
`, nodeTTL.String(), e2eTrustDomain, os.Getuid(), sum)
	return b.String()
}

// TestIdentityRecordOnSWTPM: keybroker-agent run --identity-log-dir records
// the SVIDs a go-spiffe client fetches (three X.509-SVIDs and a JWT-SVID,
// each once however often fetched) in PCR 15; the next attestation carries
// the record, the broker replays it against the quoted PCR, `keybroker
// audit show` lists it, and the policy over identities.issued denies the
// node for the entry without an executable digest. A PCR 15 extended out of
// band then refuses the attestation as identity_log.
func TestIdentityRecordOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ek := agent(t, "ek-hash", "--tpm", "tcp://"+tpm.Addr)
	wantExit(t, ek, 0)
	ekHash := strings.TrimSpace(ek.stdout)
	const nodeTTL = 20 * time.Second // re-attests at half: time to fetch first
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: identityPolicy(t, p, nodeTTL),
		extra: fmt.Sprintf("\nspiffe {\n  trust_domain = %q\n}\n", e2eTrustDomain)})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	logDir := filepath.Join(t.TempDir(), "state")
	socket := filepath.Join(t.TempDir(), "run", "agent.sock")
	a := startAgentRunWith(t, tpm, b, socket, "workload API serving", "--identity-log-dir", logDir)
	addr := workloadapi.WithAddr("unix://" + socket)
	webID := spiffeid.RequireFromString("spiffe://" + e2eTrustDomain + "/web")
	client, err := workloadapi.New(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var serials []string
	for range 2 { // the second fetch re-sends the same SVIDs: not recorded again
		svids, err := client.FetchX509SVIDs(ctx)
		if err != nil || len(svids) != 3 {
			t.Fatalf("FetchX509SVIDs = %d SVIDs, %v; want web, db and api", len(svids), err)
		}
		for _, s := range svids {
			serials = append(serials, fmt.Sprintf("%x", s.Certificates[0].SerialNumber))
		}
		if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "e2e", Subject: webID}); err != nil {
			t.Fatalf("FetchJWTSVID: %v", err)
		}
	}
	raw := readFile(t, filepath.Join(logDir, idlog.FileName))
	l, err := idlog.Parse(raw)
	if err != nil {
		t.Fatalf("the agent's identity log: %v\n%s", err, raw)
	}
	if len(l.Issued) != 4 || l.PCR != 15 {
		t.Fatalf("the agent's identity log holds %d handouts for PCR %d, want 4 (3 X.509, 1 JWT, each once) for 15:\n%s", len(l.Issued), l.PCR, raw)
	}
	if !slices.Equal(serials[:3], serials[3:]) {
		t.Fatalf("the SVIDs rotated between the fetches (%v): the test needs a longer node TTL", serials)
	}

	// The re-attestation carries the record: verified, stored, and the
	// policy denies the node for "api".
	a.waitLog(t, "re-attestation failed", nodeTTL)
	if !strings.Contains(a.stderr.String(), "policy: no policy allows this node") {
		t.Fatalf("the re-attestation was not refused by the policy:\n%s", a.stderr.String())
	}
	show := keybroker(t, "audit", "show", "--config", b.configFile, "--node", ekHash, "--json")
	wantExit(t, show, 0)
	var rec struct {
		PCR    int            `json:"pcr"`
		Issued []idlog.Issued `json:"issued"`
	}
	if err := json.Unmarshal([]byte(show.stdout), &rec); err != nil {
		t.Fatalf("audit show --json: %v\n%s", err, show.stdout)
	}
	var ids []string
	for _, i := range rec.Issued {
		ids = append(ids, i.Type+" "+strings.TrimPrefix(i.SPIFFEID, "spiffe://"+e2eTrustDomain))
		if i.UID != uint32(os.Getuid()) || len(i.ExeSHA256) != 64 {
			t.Errorf("handout %+v: want this process's uid and executable digest", i)
		}
	}
	if len(ids) == 4 {
		slices.Sort(ids[:3]) // in the order of the broker's entries
	}
	if want := []string{"x509 /api", "x509 /db", "x509 /web", "jwt /web"}; rec.PCR != 15 || !slices.Equal(ids, want) {
		t.Fatalf("audit show lists %v (PCR %d), want %v (PCR 15)", ids, rec.PCR, want)
	}
	table := keybroker(t, "audit", "show", "--config", b.configFile, "--node", ekHash[:12])
	wantExit(t, table, 0)
	if !strings.Contains(table.stdout, "4 identities issued") || !strings.Contains(table.stdout, serials[2]) {
		t.Errorf("audit show table:\n%s", table.stdout)
	}

	// PCR 15 extended by someone else: the record no longer replays, and
	// the next attempt is refused for it, before any policy.
	rw := tpm.Dial(t)
	digest := sha256.Sum256([]byte("not the agent"))
	err = legacy.PCRExtend(rw, tpmutil.Handle(15), legacy.AlgSHA256, digest[:], "")
	rw.Close()
	if err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, "identity_log: identity log does not replay to the quoted sha256 PCR 15", 15*time.Second)
}
