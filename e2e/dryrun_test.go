package e2e

// Trying a policy before rollout: `keybroker policy eval` on the evidence the
// broker stored from a real attestation, and `keybroker evidence show`.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// evalReport is one line of `keybroker policy eval --json`.
type evalReport struct {
	EKHash        string   `json:"ek_hash"`
	Source        string   `json:"source"`
	LastReceiptID string   `json:"last_receipt_id"`
	Allowed       bool     `json:"allowed"`
	Policies      []string `json:"policies"`
	PolicyHash    string   `json:"policy_hash"`
	Releases      []struct {
		Name       string   `json:"name"`
		Type       string   `json:"type"`
		Mode       string   `json:"mode"`
		PCRBank    string   `json:"pcr_bank"`
		PCRs       []uint32 `json:"pcrs"`
		TTL        string   `json:"ttl"`
		CommonName string   `json:"common_name"`
		DNSNames   []string `json:"dns_names"`
	} `json:"releases"`
	Failures []string `json:"failures"`
	Error    string   `json:"error"`
}

// policyEval runs `keybroker policy eval --json` and returns its one report.
func policyEval(t *testing.T, b *brokerProc, policy string, extra ...string) evalReport {
	t.Helper()
	r := keybroker(t, append([]string{"policy", "eval", "--config", b.configFile, "--policy", policy, "--json"}, extra...)...)
	wantExit(t, r, 0)
	var reports []evalReport
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	for dec.More() {
		var rep evalReport
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("policy eval --json: %v\n%s", err, r.stdout)
		}
		reports = append(reports, rep)
	}
	if len(reports) != 1 {
		t.Fatalf("policy eval reported %d nodes, want 1:\n%s", len(reports), r.stdout)
	}
	return reports[0]
}

// The dry run: after a node bootstrapped on swtpm, `keybroker policy eval`
// verifies the broker's stored evidence of it again and shows a stricter
// candidate policy denying it (naming the failed condition), the serving
// policy allowing it (with what it would release), and a history condition
// changing its answer once the TPM rebooted; an exported evidence file gives
// the same answers, and so does the store once the broker is stopped.
func TestPolicyDryRun(t *testing.T) {
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	short := ekHash[:16]
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: sealedPolicy(p)})
	first := wantBootstrapped(t, bootstrap(t, tpm, b, filepath.Join(t.TempDir(), "tls")), "PCR_SEALED")

	// Candidates: the serving policy also requiring a new shim in PCR 8,
	// and the serving policy refusing nodes that rebooted since they last
	// attested.
	shim := sha256.Sum256([]byte("e2e shim v2"))
	stricter := filepath.Join(b.dir, "stricter.hcl")
	writeFile(t, stricter, policyHCL(policyOpts{
		selector: `ek_cas = ["swtpm"]`,
		require:  append(pcrRequire(p.value(0), p.value(7)), "pcrs.sha256[8] == '"+hex.EncodeToString(shim[:])+"'"),
		mode:     "pcr_sealed",
	}))
	steady := filepath.Join(b.dir, "steady.hcl")
	writeFile(t, steady, policyHCL(policyOpts{
		selector: `ek_cas = ["swtpm"]`,
		require:  append(pcrRequire(p.value(0), p.value(7)), "!history.rebooted"),
		mode:     "pcr_sealed",
	}))

	// Text report: denied by the stricter policy, allowed by the serving one.
	r := keybroker(t, "policy", "eval", "--config", b.configFile, "--policy", stricter)
	wantExit(t, r, 0)
	wantContains(t, "policy eval of stricter.hcl", r.stdout,
		"node "+ekHash+" (attested ", "receipt "+first.receipt+")",
		"\n  denied\n",
		`policy "e2e": require[3] pcrs.sha256[8] == '`+hex.EncodeToString(shim[:])+`' is false`,
		"0 allowed, 1 denied, 0 not evaluated")
	r = keybroker(t, "policy", "eval", "--config", b.configFile, "--policy", b.policyFile)
	wantExit(t, r, 0)
	wantContains(t, "policy eval of the serving policy", r.stdout,
		"\n  allowed by e2e\n", "would release:",
		"node-tls  tls_certificate  pcr_sealed sha256[0 7]  ttl 1h0m0s  cn node-"+short+" dns "+short+".nodes.e2e.keybroker",
		"1 allowed, 0 denied, 0 not evaluated")

	// The same through --json, for the node and for its exported evidence.
	evidence := filepath.Join(t.TempDir(), "evidence.json")
	r = keybroker(t, "evidence", "show", "--config", b.configFile, "--node", ekHash)
	wantExit(t, r, 0)
	if !json.Valid([]byte(r.stdout)) || !strings.Contains(r.stdout, `"quotes"`) || !strings.Contains(r.stdout, `"ek_certificate"`) {
		t.Fatalf("evidence show did not print evidence JSON:\n%s", r.stdout)
	}
	writeFile(t, evidence, r.stdout)
	exported := r.stdout
	live := map[string]evalReport{}
	for _, policy := range []string{stricter, b.policyFile, steady} {
		byNode := policyEval(t, b, policy, "--node", ekHash)
		byFile := policyEval(t, b, policy, "--evidence", evidence)
		if byNode.LastReceiptID != first.receipt || byFile.Source != evidence {
			t.Errorf("%s: --node report names receipt %q (want %s), --evidence report names %q",
				filepath.Base(policy), byNode.LastReceiptID, first.receipt, byFile.Source)
		}
		byFile.Source, byFile.LastReceiptID = "", byNode.LastReceiptID
		if !reflect.DeepEqual(byNode, byFile) {
			t.Errorf("%s: --node gives %+v\n--evidence gives %+v", filepath.Base(policy), byNode, byFile)
		}
		live[policy] = byNode
	}
	if rep := live[stricter]; rep.Allowed || rep.EKHash != ekHash || len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0], "pcrs.sha256[8]") || rep.Error != "" {
		t.Errorf("stricter.hcl report = %+v, want denied on pcrs.sha256[8] alone", rep)
	}
	if rep := live[b.policyFile]; !rep.Allowed || len(rep.Releases) != 1 || rep.Releases[0].Mode != "pcr_sealed" ||
		rep.Releases[0].PCRBank != "sha256" || rep.Releases[0].TTL != "1h0m0s" || rep.Releases[0].CommonName != "node-"+short {
		t.Errorf("serving policy report = %+v, want allowed with node-tls sealed to sha256 PCRs, 1h, node-%s", rep, short)
	}
	if rep := live[steady]; !rep.Allowed {
		t.Errorf("steady.hcl before any reboot = %+v, want allowed", rep)
	}

	// The TPM reboots (same measurements); the node attests again, and the
	// broker's record now says it rebooted: steady.hcl would deny it.
	tpm.Reset(t)
	if again := bootMeasured(t, tpm); again.value(0) != p.value(0) || again.value(7) != p.value(7) {
		t.Fatal("the reboot measured other PCR values")
	}
	second := wantBootstrapped(t, bootstrap(t, tpm, b, filepath.Join(t.TempDir(), "tls")), "PCR_SEALED")
	rebooted := policyEval(t, b, steady)
	if rebooted.Allowed || rebooted.LastReceiptID != second.receipt ||
		len(rebooted.Failures) != 1 || rebooted.Failures[0] != `policy "e2e": require[3] !history.rebooted is false` {
		t.Errorf("steady.hcl after a reboot = %+v, want denied on !history.rebooted for receipt %s", rebooted, second.receipt)
	}
	if rep := policyEval(t, b, b.policyFile); !rep.Allowed {
		t.Errorf("serving policy after a reboot = %+v, want allowed", rep)
	}

	// Stopped, the broker's store gives the same reports, and the evidence
	// exported earlier still evaluates alone.
	r = keybroker(t, "evidence", "show", "--config", b.configFile, "--node", ekHash)
	wantExit(t, r, 0)
	liveEvidence := r.stdout
	if code := b.stop(t); code != 0 {
		t.Errorf("keybroker serve exited with %d after SIGTERM, want 0", code)
	}
	if rep := policyEval(t, b, steady); !reflect.DeepEqual(rep, rebooted) {
		t.Errorf("steady.hcl from the stopped broker's store = %+v\nwhile running: %+v", rep, rebooted)
	}
	r = keybroker(t, "evidence", "show", "--config", b.configFile, "--node", ekHash)
	wantExit(t, r, 0)
	if r.stdout != liveEvidence || r.stdout == exported {
		t.Errorf("evidence from the stopped broker differs from the running broker's, or was not updated by the second attestation")
	}
	if rep := policyEval(t, b, stricter, "--evidence", evidence); rep.Allowed || rep.EKHash != ekHash {
		t.Errorf("stricter.hcl on the exported evidence with the broker stopped = %+v, want denied", rep)
	}
}
