package e2e

// The cross-process suite: `keybroker serve` and `keybroker-agent` as
// separate processes against swtpm. See doc.go for what each test proves.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// sealedPolicy is the policy most tests use: an EK certified by swtpm's CA,
// PCR 0 and 7 as measured, and a TLS credential sealed to them.
func sealedPolicy(p *pcrs) string {
	return policyHCL(policyOpts{
		selector: `ek_cas = ["swtpm"]`,
		require:  pcrRequire(p.value(0), p.value(7)),
		mode:     "pcr_sealed",
	})
}

// onChange returns an --on-change command that records its environment in
// a fresh file, and that file's path.
func onChange(t *testing.T) (cmd, marker string) {
	marker = filepath.Join(t.TempDir(), "changed")
	return fmt.Sprintf(`echo "changed $KEYBROKER_SERIAL $KEYBROKER_OUT" > '%s'`, marker), marker
}

func TestBootstrapOnSWTPM(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: sealedPolicy(p)})
	out := filepath.Join(t.TempDir(), "tls") // the agent creates it
	hook, marker := onChange(t)

	first := wantBootstrapped(t, bootstrap(t, tpm, b, out, "--on-change", hook), "PCR_SEALED")
	wantCredential(t, out, b, ekHash, first.serial)
	if got, want := string(readFile(t, marker)), "changed "+first.serial+" "+out+"\n"; got != want {
		t.Errorf("--on-change wrote %q, want %q", got, want)
	}

	second := wantBootstrapped(t, bootstrap(t, tpm, b, out, "--on-change", hook), "PCR_SEALED")
	if second.serial == first.serial || second.receipt == first.receipt {
		t.Errorf("second bootstrap reused serial %s / receipt %s", first.serial, first.receipt)
	}
	wantCredential(t, out, b, ekHash, second.serial)
	if got, want := string(readFile(t, marker)), "changed "+second.serial+" "+out+"\n"; got != want {
		t.Errorf("--on-change after the second bootstrap wrote %q, want %q", got, want)
	}

	// While the broker runs, its store is locked: receipts come through the
	// admin socket.
	if sock, err := os.Stat(filepath.Join(b.dataDir, "admin.sock")); err != nil {
		t.Errorf("no admin socket: %v", err)
	} else if sock.Mode()&os.ModeSocket == 0 || sock.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %v, want a 0600 socket", sock.Mode())
	}
	live := keybroker(t, "receipts", "list", "--config", b.configFile)
	wantExit(t, live, 0)
	wantContains(t, "receipts list", live.stdout,
		"RECEIPT", "DECISION", first.receipt, second.receipt, ekHash[:16]+"  allowed",
		"node-tls(pcr_sealed serial "+first.serial+")", "node-tls(pcr_sealed serial "+second.serial+")")
	if n := strings.Count(live.stdout, "allowed"); n != 2 || strings.Contains(live.stdout, "denied") {
		t.Errorf("receipts list shows %d allowed receipts (want 2) or a denial:\n%s", n, live.stdout)
	}
	rs := receipts(t, b)
	if len(rs) != 2 || rs[0].ID != second.receipt || rs[1].ID != first.receipt {
		t.Fatalf("receipts (newest first) = %+v, want %s then %s", rs, second.receipt, first.receipt)
	}
	for i, want := range []bootstrapped{second, first} {
		r := rs[i]
		if !r.Allowed || r.Check != "" || len(r.Failures) != 0 || r.EKHash != ekHash ||
			!slices.Equal(r.Policies, []string{"e2e"}) || r.PolicyHash == "" || len(r.AKName) == 0 || len(r.QuoteDigest) != 32 {
			t.Errorf("receipt %s = %+v, want allowed for EK %s by policy e2e", r.ID, r, ekHash)
		}
		if len(r.Released) != 1 {
			t.Errorf("receipt %s released %+v, want one item", r.ID, r.Released)
			continue
		}
		rel := r.Released[0]
		if rel.Name != "node-tls" || rel.Type != "tls_certificate" || rel.Mode != "pcr_sealed" ||
			rel.Serial != want.serial || rel.PCRBank != "sha256" || !slices.Equal(rel.PCRs, []uint32{0, 7}) {
			t.Errorf("receipt %s released %+v, want node-tls sealed to sha256 [0 7] with serial %s", r.ID, rel, want.serial)
		}
	}

	// Once stopped, receipts come from the store file, the same.
	if code := b.stop(t); code != 0 {
		t.Errorf("keybroker serve exited with %d after SIGTERM, want 0", code)
	}
	stopped := keybroker(t, "receipts", "list", "--config", b.configFile)
	wantExit(t, stopped, 0)
	if stopped.stdout != live.stdout {
		t.Errorf("receipts from the stopped broker's store differ from the running broker's:\n%s\nvs\n%s", stopped.stdout, live.stdout)
	}
}

func TestRefusedAfterPCRChange(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	attested7 := p.value(7)
	ekHash := ekHashOf(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: sealedPolicy(p)})
	out := filepath.Join(t.TempDir(), "tls")
	hook, marker := onChange(t)

	ok := wantBootstrapped(t, bootstrap(t, tpm, b, out, "--on-change", hook), "PCR_SEALED")
	before := snapshot(t, out)
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}

	p.measure(t, 7, "e2e unknown bootloader")
	r := bootstrap(t, tpm, b, out, "--on-change", hook)
	wantExit(t, r, 1)
	wantContains(t, "agent stderr", r.stderr,
		"bootstrap failed at attest: broker refused (PermissionDenied): policy: no policy allows this node (receipt ")
	// The node learns nothing about the policy.
	for _, leak := range []string{"pcrs.", attested7, p.value(7), `"e2e"`} {
		if strings.Contains(r.stderr+r.stdout, leak) {
			t.Errorf("agent output reveals %q:\n%s%s", leak, r.stdout, r.stderr)
		}
	}
	if !strings.Contains(r.stdout, "quote") || strings.Contains(r.stdout, "write") || strings.Contains(r.stdout, "open") {
		t.Errorf("agent stdout should end at the quote step:\n%s", r.stdout)
	}
	if after := snapshot(t, out); !mapsEqual(before, after) {
		t.Error("a refused bootstrap changed the credential files")
	}
	wantCredential(t, out, b, ekHash, ok.serial)
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("--on-change ran after a refused bootstrap (stat: %v)", err)
	}
	m := refusedRE.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no receipt ID in the refusal:\n%s", r.stderr)
	}
	denied := m[1]

	failure := `policy "e2e": require[2] pcrs.sha256[7] == '` + attested7 + `' is false`
	table := keybroker(t, "receipts", "list", "--config", b.configFile)
	wantExit(t, table, 0)
	wantContains(t, "receipts list", table.stdout, denied, ekHash[:16]+"  denied: policy", "- "+failure, ok.receipt)
	if strings.Contains(table.stdout, "require[1]") {
		t.Errorf("receipts list reports PCR 0, which did not change, as failed:\n%s", table.stdout)
	}
	rec := receiptByID(t, receipts(t, b), denied)
	if rec.Allowed || rec.Check != "policy" || len(rec.Released) != 0 || rec.EKHash != ekHash ||
		!slices.Equal(rec.Failures, []string{failure}) {
		t.Errorf("denied receipt = %+v, want check policy, nothing released, failures [%s]", rec, failure)
	}
	wantContains(t, "broker log", b.log.String(), "attestation refused", "receipt="+denied)
}

func TestUntrustedEK(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	bootMeasured(t, tpm)

	// A root and intermediate that have nothing to do with swtpm's CA.
	root, inter := selfMadeCA(t)
	caDir := t.TempDir()
	rootFile, interFile := filepath.Join(caDir, "other-root.pem"), filepath.Join(caDir, "other-intermediate.pem")
	writeFile(t, rootFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})))
	writeFile(t, interFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw})))
	b := startBroker(t, brokerOpts{
		ekCAs:  []ekCA{{name: "other", roots: []string{rootFile}, intermediates: []string{interFile}}},
		policy: policyHCL(policyOpts{selector: `ek_cas = ["other"]`, require: []string{"ek.certified"}, mode: "tpm_bound"}),
	})
	out := filepath.Join(t.TempDir(), "tls")

	r := bootstrap(t, tpm, b, out)
	wantExit(t, r, 1)
	wantContains(t, "agent stderr", r.stderr,
		"bootstrap failed at challenge: broker refused (PermissionDenied): ek_trust: ek_certificate does not chain to a trusted EK CA")
	if r.stdout != "" {
		t.Errorf("agent reported progress although the challenge was refused:\n%s", r.stdout)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(out)
		t.Errorf("--out exists after a refused bootstrap (stat %v), holding %v", err, entries)
	}
	// Refused before any challenge was issued: no challenge, no receipt.
	if rs := receipts(t, b); len(rs) != 0 {
		t.Errorf("receipts after a refused challenge: %+v", rs)
	}
	wantContains(t, "broker log", b.log.String(), "challenge refused", "check=ek_trust")
	if strings.Contains(b.log.String(), "challenge issued") {
		t.Error("the broker issued a challenge to an untrusted EK")
	}
}

func TestPolicyReloadOnSIGHUP(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	other := sha256.Sum256([]byte("e2e another boot"))
	wrong7 := hex.EncodeToString(other[:])
	policyWith := func(pcr7 string) string {
		return policyHCL(policyOpts{selector: `ek_cas = ["swtpm"]`, require: pcrRequire(p.value(0), pcr7), mode: "pcr_sealed"})
	}
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policyWith(wrong7)})
	out := filepath.Join(t.TempDir(), "tls")

	// 1. The policy expects another PCR 7: refused.
	r := bootstrap(t, tpm, b, out)
	wantExit(t, r, 1)
	wantContains(t, "agent stderr", r.stderr, "bootstrap failed at attest", "policy: no policy allows this node")
	m := refusedRE.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no receipt ID in the refusal:\n%s", r.stderr)
	}
	denied := m[1]

	// 2. The right value, reloaded on SIGHUP: allowed.
	writeFile(t, b.policyFile, policyWith(p.value(7)))
	b.signal(t, syscall.SIGHUP)
	b.waitLog(t, "policies reloaded", 1)
	allowed := wantBootstrapped(t, bootstrap(t, tpm, b, out), "PCR_SEALED")
	wantCredential(t, out, b, ekHash, allowed.serial)

	// 3. A broken policy on SIGHUP is refused; the previous one keeps serving.
	writeFile(t, b.policyFile, "policy \"e2e\" {\n  select {\n    ek_cas = [\"swtpm\"]\n  }\n  require = [\n")
	b.signal(t, syscall.SIGHUP)
	b.waitLog(t, "policy reload refused", 1)
	log := b.log.String()
	wantContains(t, "broker log", log, "the previous policies keep serving", b.policyFile+":")
	if n := strings.Count(log, "policies reloaded"); n != 1 {
		t.Errorf("broker logged %d reloads, want 1", n)
	}
	kept := wantBootstrapped(t, bootstrap(t, tpm, b, out), "PCR_SEALED")
	wantCredential(t, out, b, ekHash, kept.serial)

	wantReloadReceipts(t, b, denied, allowed.receipt, kept.receipt, "SIGHUP")
}

func TestAgentErrors(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	bootMeasured(t, tpm)
	tpmArg := "tcp://" + tpm.Addr

	// ek-hash prints the hash the broker trusts and records.
	r := agent(t, "ek-hash", "--tpm", tpmArg)
	wantExit(t, r, 0)
	ekHash := strings.TrimSuffix(r.stdout, "\n")
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(ekHash) {
		t.Fatalf("ek-hash printed %q, want 64 lowercase hex characters and a newline", r.stdout)
	}
	if want := ekHashOf(t, tpm); ekHash != want {
		t.Fatalf("ek-hash printed %s, the EK's hash is %s", ekHash, want)
	}
	// That hash alone is enough for the broker: ek_allow, no EK CA.
	b := startBroker(t, brokerOpts{
		ekAllow: []string{ekHash},
		policy: policyHCL(policyOpts{
			selector: fmt.Sprintf("ek_hashes = [%q]", ekHash),
			require:  []string{"ek.hash == '" + ekHash + "'", "ek.ca == ''"},
			mode:     "tpm_bound",
		}),
	})
	out := filepath.Join(t.TempDir(), "tls")
	ok := wantBootstrapped(t, bootstrap(t, tpm, b, out), "TPM_BOUND")
	wantCredential(t, out, b, ekHash, ok.serial)
	if rec := receiptByID(t, receipts(t, b), ok.receipt); rec.EKHash != ekHash || !rec.Allowed {
		t.Errorf("receipt %+v, want allowed for the EK hash ek-hash printed (%s)", rec, ekHash)
	}
	table := keybroker(t, "receipts", "list", "--config", b.configFile, "--ek", ekHash)
	wantExit(t, table, 0)
	wantContains(t, "receipts list --ek", table.stdout, ekHash[:16]+"  allowed", "node-tls(tpm_bound serial "+ok.serial+")")

	// Failures, none of which may write anything.
	closed := closedPort(t)
	silent := silentListener(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	writeFile(t, notPEM, "not a certificate\n")
	root, _ := selfMadeCA(t)
	otherCA := filepath.Join(dir, "other-ca.pem")
	writeFile(t, otherCA, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})))
	failOut := filepath.Join(dir, "tls")

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string      // in stderr
		minTook  time.Duration // the run took at least this long
		maxTook  time.Duration // and at most this long; zero: no bound
	}{
		{
			name:     "unreachable broker",
			args:     []string{"bootstrap", "--tpm", tpmArg, "--broker", closed, "--ca", b.caFile, "--out", failOut, "--timeout", "5s"},
			wantCode: 1,
			wantErr:  []string{"bootstrap failed at challenge: broker refused (Unavailable)", "connection refused"},
			maxTook:  10 * time.Second,
		},
		{
			name:     "silent broker",
			args:     []string{"bootstrap", "--tpm", tpmArg, "--broker", silent, "--ca", b.caFile, "--out", failOut, "--timeout", "2s"},
			wantCode: 1,
			wantErr:  []string{"bootstrap failed at challenge: broker refused (DeadlineExceeded)"},
			minTook:  2 * time.Second,
			maxTook:  10 * time.Second,
		},
		{
			name:     "broker certificate not from the pinned CA",
			args:     []string{"bootstrap", "--tpm", tpmArg, "--broker", b.addr, "--ca", otherCA, "--out", failOut, "--timeout", "5s"},
			wantCode: 1,
			wantErr:  []string{"bootstrap failed at challenge: broker refused (Unavailable)", "certificate signed by unknown authority"},
		},
		{
			name:     "broker certificate for another name",
			args:     []string{"bootstrap", "--tpm", tpmArg, "--broker", b.addr, "--ca", b.caFile, "--server-name", "broker.example.com", "--out", failOut, "--timeout", "5s"},
			wantCode: 1,
			wantErr:  []string{"bootstrap failed at challenge: broker refused (Unavailable)", "not broker.example.com"},
		},
		{
			name:     "CA file without PEM",
			args:     []string{"bootstrap", "--tpm", tpmArg, "--broker", b.addr, "--ca", notPEM, "--out", failOut},
			wantCode: 2,
			wantErr:  []string{"keybroker-agent bootstrap: --ca: the broker CA bundle " + notPEM + " holds no PEM certificate"},
		},
		{
			name:     "missing CA file",
			args:     []string{"bootstrap", "--tpm", tpmArg, "--broker", b.addr, "--ca", filepath.Join(dir, "missing.pem"), "--out", failOut},
			wantCode: 2,
			wantErr:  []string{"keybroker-agent bootstrap: --ca: unable to read the broker CA bundle: "},
		},
		{
			name:     "unreachable TPM",
			args:     []string{"bootstrap", "--tpm", "tcp://" + closed, "--broker", b.addr, "--ca", b.caFile, "--out", failOut},
			wantCode: 1,
			wantErr:  []string{"bootstrap failed at tpm: unable to connect to TPM at " + closed},
		},
		{
			name:     "unknown AK type",
			args:     []string{"bootstrap", "--tpm", tpmArg, "--broker", b.addr, "--ca", b.caFile, "--out", failOut, "--ak", "dsa"},
			wantCode: 2,
			wantErr:  []string{`keybroker-agent bootstrap: --ak: unknown AK type "dsa": want rsa or ecc`},
		},
		{
			name:     "missing flags",
			args:     []string{"bootstrap", "--tpm", tpmArg},
			wantCode: 2,
			wantErr: []string{"keybroker-agent bootstrap: missing required flag --broker\n", "keybroker-agent bootstrap: missing required flag --ca\n",
				"keybroker-agent bootstrap: missing required flag --out\n", "Run 'keybroker-agent bootstrap --help' for usage."},
		},
		{
			name:     "unknown flag",
			args:     []string{"bootstrap", "--frobnicate"},
			wantCode: 2,
			wantErr:  []string{"keybroker-agent bootstrap: unknown flag: --frobnicate", "Run 'keybroker-agent bootstrap --help' for usage."},
		},
		{
			name:     "no command",
			wantCode: 2,
			wantErr:  []string{"keybroker-agent: missing command", "Usage:", "bootstrap   Attest once and write the released credentials"},
		},
		{
			name:     "unknown command",
			args:     []string{"enroll"},
			wantCode: 2,
			wantErr:  []string{`unknown command "enroll"`, "Usage:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := agent(t, tt.args...)
			wantExit(t, r, tt.wantCode)
			wantContains(t, "agent stderr", r.stderr, tt.wantErr...)
			if r.took < tt.minTook || (tt.maxTook != 0 && r.took > tt.maxTook) {
				t.Errorf("took %v, want between %v and %v", r.took, tt.minTook, tt.maxTook)
			}
			if _, err := os.Stat(failOut); !os.IsNotExist(err) {
				t.Errorf("a failed run created --out (stat: %v)", err)
			}
		})
	}

	// The failed runs left the TPM usable (nothing leaked into its few
	// object slots) and the broker serving. A failing --on-change makes the
	// agent exit 1 after the new credential is in place.
	r = bootstrap(t, tpm, b, out, "--on-change", "exit 3")
	wantExit(t, r, 1)
	wantContains(t, "agent stderr", r.stderr, "bootstrap: credentials written, but --on-change failed: exit status 3")
	m := serialRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no serial in agent stdout:\n%s", r.stdout)
	}
	if m[1] == ok.serial {
		t.Errorf("the last bootstrap reused serial %s", ok.serial)
	}
	wantCredential(t, out, b, ekHash, m[1])
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentListener returns a loopback address that accepts connections and
// never answers, like a broker that hangs.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String()
}

func mapsEqual(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || string(v) != string(w) {
			return false
		}
	}
	return true
}
