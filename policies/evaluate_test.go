package policies_test

import (
	"encoding/hex"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

// zeros is a SHA-256 PCR value the simulator's PCR 7 does not hold.
var zeros = strings.Repeat("0", 64)

// fill replaces EKHASH and PCR7 in a policy source with the simulator's EK
// hash and the SHA-256 value of PCR 7 in v.
func fill(t testing.TB, v *verify.Verified, src string) string {
	t.Helper()
	pcr7 := hex.EncodeToString(v.PCRs(tpm2.TPMAlgSHA256)[7])
	return strings.NewReplacer("EKHASH", ekHash(t), "PCR7", pcr7).Replace(src)
}

func mustParse(t *testing.T, src string) *policies.Set {
	t.Helper()
	s, err := policies.Parse([]byte(src), "test.hcl")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s
}

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name         string
		node         node
		src          string
		wantPolicies []string // nil: denied
		wantReleases []string
		wantFailures []string
	}{
		{
			name: "allowed with matching PCR",
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[7] == \"PCR7\"", "!ek.certified", "ek.ca == \"\""]
  release "node-tls" {
    type        = "tls_certificate"
    common_name = "node"
  }
}`,
			wantPolicies: []string{"web"},
			wantReleases: []string{"node-tls"},
		},
		{
			name: "empty require list allows a selected node",
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = []
}`,
			wantPolicies: []string{"web"},
		},
		{
			name: "wrong PCR value names the expression",
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[7] == \"` + zeros + `\""]
  release "node-tls" {
    type        = "tls_certificate"
    common_name = "node"
  }
}`,
			wantFailures: []string{`policy "web": require[0] pcrs.sha256[7] == "` + zeros + `" is false`},
		},
		{
			name: "no policy selects the node",
			src: `policy "web" {
  select {
    ek_hashes = ["` + zeros + `"]
    ek_cas    = ["` + testCA + `"]
  }
  require = ["true"]
}`,
			wantFailures: []string{"no policy selects this node"},
		},
		{
			name: "every failing require is listed",
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = [
    "pcrs.sha256[7] == \"PCR7\"",
    "pcrs.sha256[0] == \"` + zeros + `1\"",
    "ek.certified",
    "tpm.reset_count < 0",
    "ek.hash",
  ]
}`,
			wantFailures: []string{
				`policy "web": require[1] pcrs.sha256[0] == "` + zeros + `1" is false`,
				`policy "web": require[2] ek.certified is false`,
				`policy "web": require[3] tpm.reset_count < 0 is false`,
				`policy "web": require[4] ek.hash is not a bool but string`,
			},
		},
		{
			name: "missing bank is a failure, not a panic",
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha384[7] == \"` + zeros + `\"", "has(pcrs.sha384) || pcrs.sha256[7] == \"PCR7\""]
}`,
			wantFailures: []string{`policy "web": require[0] pcrs.sha384[7] == "` + zeros + `": no such key: sha384`},
		},
		{
			name: "PCR that was not quoted in a require",
			node: node{pcrs: []int{0, 1, 2, 3}},
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[7] == \"` + zeros + `\"", "!(7 in pcrs.sha256)"]
}`,
			wantFailures: []string{`policy "web": require[0] pcrs.sha256[7] == "` + zeros + `": no such key: 7`},
		},
		{
			name: "sealed release with a PCR that was not quoted",
			node: node{pcrs: []int{0, 1, 2, 3}},
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  release "node-tls" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = [9, 0, 7]
    common_name = "node"
  }
  release "node-tls-384" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcr_bank    = "sha384"
    pcrs        = [0]
    common_name = "node"
  }
}`,
			wantFailures: []string{
				`policy "web": release "node-tls": PCR 7 of bank sha256 was not quoted`,
				`policy "web": release "node-tls": PCR 9 of bank sha256 was not quoted`,
				`policy "web": release "node-tls-384": bank sha384 was not quoted`,
			},
		},
		{
			name: "selected by EK CA",
			node: node{viaCA: true},
			src: `policy "ca" {
  select { ek_cas = ["other", "` + testCA + `"] }
  require = ["ek.certified", "ek.ca == \"` + testCA + `\"", "ek.manufacturer == \"\""]
  release "node-tls" {
    type        = "tls_certificate"
    common_name = "node"
  }
}
policy "by-hash" {
  select { ek_hashes = ["` + zeros + `"] }
}`,
			wantPolicies: []string{"ca"},
			wantReleases: []string{"node-tls"},
		},
		{
			name: "union across two policies, failures of a third listed",
			src: `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[7] == \"PCR7\""]
  release "web-tls" {
    type        = "tls_certificate"
    common_name = "web"
  }
}
policy "db" {
  select { ek_hashes = ["EKHASH"] }
  require = ["tpm.clock > 0"]
  release "db-tls" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = [7]
    common_name = "db"
  }
  release "admin-tls" {
    type        = "tls_certificate"
    common_name = "admin"
  }
}
policy "ops" {
  select { ek_hashes = ["EKHASH"] }
  require = ["ek.certified"]
  release "ops-tls" {
    type        = "tls_certificate"
    common_name = "ops"
  }
}
policy "other" {
  select { ek_hashes = ["` + zeros + `"] }
  require = ["false"]
}`,
			wantPolicies: []string{"db", "web"},
			wantReleases: []string{"admin-tls", "db-tls", "web-tls"},
			wantFailures: []string{`policy "ops": require[0] ek.certified is false`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := attest(t, tt.node)
			s := mustParse(t, fill(t, v, tt.src))
			d := s.Evaluate(v)
			if d.Allowed != (tt.wantPolicies != nil) {
				t.Errorf("Allowed = %v, want %v; failures: %q", d.Allowed, tt.wantPolicies != nil, d.Failures)
			}
			if !slices.Equal(d.Policies, tt.wantPolicies) {
				t.Errorf("Policies = %q, want %q", d.Policies, tt.wantPolicies)
			}
			var releases []string
			for _, r := range d.Releases {
				releases = append(releases, r.Name)
			}
			if !slices.Equal(releases, tt.wantReleases) {
				t.Errorf("Releases = %q, want %q", releases, tt.wantReleases)
			}
			if !slices.Equal(d.Failures, tt.wantFailures) {
				t.Errorf("Failures =\n%s\nwant\n%s", strings.Join(d.Failures, "\n"), strings.Join(tt.wantFailures, "\n"))
			}
			if d.PolicyHash != s.Hash() || len(d.PolicyHash) != 64 {
				t.Errorf("PolicyHash = %q, want %q", d.PolicyHash, s.Hash())
			}
		})
	}
}

func TestEvaluateRendersReleases(t *testing.T) {
	v := attest(t, node{viaCA: true})
	s := mustParse(t, fill(t, v, `policy "web" {
  select { ek_cas = ["`+testCA+`"] }
  release "node-tls" {
    type         = "tls_certificate"
    mode         = "pcr_sealed"
    pcrs         = [7, 0]
    ttl          = "1h30m"
    common_name  = "node-${ek_hash_short}"
    dns_names    = ["${ek_hash_short}.nodes.example.com", "${ek_ca}.example.com", "h-${ek_hash}"]
    ip_addresses = ["10.0.0.1", "::1"]
  }
  release "plain" {
    type      = "tls_certificate"
    dns_names = ["plain.example.com"]
  }
}`))
	d := s.Evaluate(v)
	if !d.Allowed {
		t.Fatalf("denied: %q", d.Failures)
	}
	h := v.EKHash()
	want := []policies.Release{
		{
			Name:        "node-tls",
			Type:        policies.TypeTLSCertificate,
			Mode:        policies.ModePCRSealed,
			PCRBank:     tpm2.TPMAlgSHA256,
			PCRs:        []uint32{0, 7},
			TTL:         90 * time.Minute,
			CommonName:  "node-" + h[:16],
			DNSNames:    []string{h[:16] + ".nodes.example.com", testCA + ".example.com", "h-" + h},
			IPAddresses: []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("::1")},
		},
		{
			Name:     "plain",
			Type:     policies.TypeTLSCertificate,
			Mode:     policies.ModeTPMBound,
			TTL:      policies.DefaultTTL,
			DNSNames: []string{"plain.example.com"},
		},
	}
	if len(d.Releases) != len(want) {
		t.Fatalf("got %d releases, want %d", len(d.Releases), len(want))
	}
	for i, got := range d.Releases {
		w := want[i]
		if got.Name != w.Name || got.Type != w.Type || got.Mode != w.Mode || got.PCRBank != w.PCRBank ||
			!slices.Equal(got.PCRs, w.PCRs) || got.TTL != w.TTL || got.CommonName != w.CommonName ||
			!slices.Equal(got.DNSNames, w.DNSNames) ||
			!slices.EqualFunc(got.IPAddresses, w.IPAddresses, net.IP.Equal) {
			t.Errorf("release %d =\n%+v\nwant\n%+v", i, got, w)
		}
	}

	// Releases are copies: changing one does not change the next decision.
	d.Releases[0].PCRs[0] = 23
	if again := s.Evaluate(v); again.Releases[0].PCRs[0] != 0 {
		t.Errorf("a Decision shares PCRs with the Set")
	}
}

func TestEvaluateWithoutVerifiedNode(t *testing.T) {
	s := mustParse(t, `policy "web" {
  select { ek_cas = ["`+testCA+`"] }
}`)
	for _, tt := range []struct {
		name string
		v    *verify.Verified
	}{
		{"nil", nil},
		{"zero value", new(verify.Verified)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := s.Evaluate(tt.v)
			if d.Allowed || !slices.Equal(d.Failures, []string{"no verified node"}) {
				t.Errorf("Evaluate = %+v, want denied with \"no verified node\"", d)
			}
		})
	}
	var none *policies.Set
	if d := none.Evaluate(attest(t, node{})); d.Allowed || len(d.Failures) != 1 {
		t.Errorf("nil Set: Evaluate = %+v, want denied", d)
	}
}

// TestEvaluateConcurrent runs one Set from many goroutines; run it with
// -race.
func TestEvaluateConcurrent(t *testing.T) {
	v := attest(t, node{})
	s := mustParse(t, fill(t, v, `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[7] == \"PCR7\"", "pcrs.sha256.size() == 24"]
  release "node-tls" {
    type        = "tls_certificate"
    common_name = "node-${ek_hash_short}"
    dns_names   = ["${ek_hash}.example.com"]
  }
}
policy "db" {
  select { ek_hashes = ["EKHASH"] }
  require = ["ek.certified"]
}`))
	want := s.Evaluate(v)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 50 {
				d := s.Evaluate(v)
				if d.Allowed != want.Allowed || !slices.Equal(d.Failures, want.Failures) ||
					d.Releases[0].CommonName != want.Releases[0].CommonName {
					t.Errorf("concurrent Evaluate = %+v, want %+v", d, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestFacts(t *testing.T) {
	v, err := attest(t, node{viaCA: true, pcrs: []int{0, 7}}).WithHistory(nil)
	if err != nil {
		t.Fatal(err)
	}
	f := policies.Facts(v)
	ek := f["ek"].(map[string]any)
	if ek["hash"] != v.EKHash() || ek["ca"] != testCA || ek["certified"] != true {
		t.Errorf("ek facts = %v", ek)
	}
	pcrs := f["pcrs"].(map[string]map[int64]string)
	if len(pcrs) != 1 || len(pcrs["sha256"]) != 2 || pcrs["sha256"][7] != hex.EncodeToString(v.PCRs(tpm2.TPMAlgSHA256)[7]) {
		t.Errorf("pcrs facts = %v", pcrs)
	}
	tpm := f["tpm"].(map[string]int64)
	if tpm["clock"] != int64(v.Clock().Clock) || tpm["reset_count"] != int64(v.Clock().ResetCount) {
		t.Errorf("tpm facts = %v", tpm)
	}
	el := f["eventlog"].(map[string]any)
	if el["present"] != false || el["kernel_cmdline"] != "" {
		t.Errorf("eventlog facts without a log = %v", el)
	}
	if id := f["identities"].(map[string]any); id["present"] != false || len(id["issued"].([]map[string]any)) != 0 {
		t.Errorf("identities facts without a record = %v", id)
	}
	history := f["history"].(map[string]any)
	if history["first_seen"] != true || history["rebooted"] != false || history["resets"] != int64(0) || history["restarts"] != int64(0) {
		t.Errorf("history facts of a first attestation = %v", history)
	}
	// Every fact FactNames documents for ek, tpm, history and eventlog is
	// present.
	for _, name := range policies.FactNames() {
		group, key, _ := strings.Cut(name, ".")
		switch group {
		case "ek":
			if _, ok := ek[key]; !ok {
				t.Errorf("fact %s is missing", name)
			}
		case "tpm":
			if _, ok := tpm[key]; !ok {
				t.Errorf("fact %s is missing", name)
			}
		case "eventlog":
			if _, ok := el[key]; !ok {
				t.Errorf("fact %s is missing", name)
			}
		case "history":
			if _, ok := history[key]; !ok {
				t.Errorf("fact %s is missing", name)
			}
		case "node":
			if _, ok := f["node"].(map[string]any)[key]; !ok {
				t.Errorf("fact %s is missing", name)
			}
		case "identities":
			if _, ok := f["identities"].(map[string]any)[key]; !ok {
				t.Errorf("fact %s is missing", name)
			}
		case "pcrs":
		default:
			t.Errorf("fact %s is in no group", name)
		}
	}
	if policies.Facts(nil) != nil {
		t.Errorf("Facts(nil) is not nil")
	}
	// Without WithHistory the history group is empty.
	if h := policies.Facts(attest(t, node{pcrs: []int{7}}))["history"].(map[string]any); len(h) != 0 {
		t.Errorf("history facts without WithHistory = %v, want none", h)
	}
	// Every documented fact has a type and a description, in FactNames order.
	docs := policies.FactDocs()
	names := policies.FactNames()
	if len(docs) != len(names) {
		t.Fatalf("FactDocs has %d entries, FactNames %d", len(docs), len(names))
	}
	for i, d := range docs {
		if d.Name != names[i] || d.Type == "" || d.Doc == "" {
			t.Errorf("FactDocs()[%d] = %+v, want %s with a type and a description", i, d, names[i])
		}
	}
}

// TestEvaluateHistory checks that history conditions see WithHistory's
// comparison, and fail when there is none.
func TestEvaluateHistory(t *testing.T) {
	v := attest(t, node{pcrs: []int{7}})
	set := mustParse(t, fill(t, v, `policy "steady" {
  select { ek_hashes = ["EKHASH"] }
  require = ["!history.rebooted", "history.resets == 0"]
  release "r" {
    type        = "tls_certificate"
    common_name = "node"
  }
}`))
	if d := set.Evaluate(v); d.Allowed || len(d.Failures) != 2 || !strings.Contains(d.Failures[0], "no such key") {
		t.Errorf("without history: allowed %v, failures %q; want both conditions failing on the missing key", d.Allowed, d.Failures)
	}
	first, err := v.WithHistory(nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := set.Evaluate(first); !d.Allowed {
		t.Errorf("first attestation denied: %q", d.Failures)
	}
	c := v.Clock()
	rebooted, err := v.WithHistory(&verify.ClockInfo{Clock: c.Clock + 1, ResetCount: c.ResetCount - 1})
	if err != nil {
		t.Fatal(err)
	}
	d := set.Evaluate(rebooted)
	want := []string{
		`policy "steady": require[0] !history.rebooted is false`,
		`policy "steady": require[1] history.resets == 0 is false`,
	}
	if d.Allowed || !slices.Equal(d.Failures, want) {
		t.Errorf("after a reboot: allowed %v, failures %q; want %q", d.Allowed, d.Failures, want)
	}
}

func TestEvaluateSPIFFE(t *testing.T) {
	v := attest(t, node{viaCA: true})
	s := mustParse(t, fill(t, v, `policy "web" {
  select { ek_cas = ["`+testCA+`"] }
  release "node-svid" {
    type      = "x509_svid"
    mode      = "pcr_sealed"
    pcrs      = [7]
    ttl       = "12h"
    spiffe_id = "spiffe://example.org/node/${ek_ca}/${ek_hash_short}"
  }
  workload "web" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000", "unix:path:/usr/bin/web"]
    ttl       = "30m"
  }
}
policy "db" {
  select { ek_cas = ["`+testCA+`"] }
  workload "db" {
    spiffe_id = "spiffe://example.org/db"
    selectors = ["unix:gid:70"]
  }
}
policy "refused" {
  select { ek_cas = ["`+testCA+`"] }
  require   = ["false"]
  workload "admin" {
    spiffe_id = "spiffe://example.org/admin"
    selectors = ["unix:uid:0"]
  }
}`))
	d := s.Evaluate(v)
	if !d.Allowed || !slices.Equal(d.Policies, []string{"db", "web"}) {
		t.Fatalf("Evaluate = allowed %v by %q, failures %q; want allowed by db and web", d.Allowed, d.Policies, d.Failures)
	}
	if len(d.Releases) != 1 {
		t.Fatalf("got %d releases, want 1", len(d.Releases))
	}
	rel := d.Releases[0]
	wantID := "spiffe://example.org/node/" + testCA + "/" + v.EKHash()[:16]
	if rel.Type != policies.TypeX509SVID || rel.SPIFFEID.String() != wantID || rel.TTL != 12*time.Hour ||
		rel.Mode != policies.ModePCRSealed || !slices.Equal(rel.PCRs, []uint32{7}) || rel.CommonName != "" {
		t.Errorf("release = %+v; want an x509_svid for %s, 12h, sealed to PCR 7", rel, wantID)
	}
	want := []policies.WorkloadEntry{
		{Name: "db", ID: spiffeid.RequireFromString("spiffe://example.org/db"),
			Selectors: []policies.Selector{{Type: "unix", Value: "gid:70"}}, TTL: policies.DefaultWorkloadTTL},
		{Name: "web", ID: spiffeid.RequireFromString("spiffe://example.org/web"),
			Selectors: []policies.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "path:/usr/bin/web"}}, TTL: 30 * time.Minute},
	}
	if !slices.EqualFunc(d.WorkloadEntries, want, func(a, b policies.WorkloadEntry) bool {
		return a.Name == b.Name && a.ID == b.ID && slices.Equal(a.Selectors, b.Selectors) && a.TTL == b.TTL
	}) {
		t.Errorf("WorkloadEntries =\n%+v\nwant\n%+v", d.WorkloadEntries, want)
	}

	// Entries are copies: changing one does not change the next decision.
	d.WorkloadEntries[1].Selectors[0].Value = "uid:0"
	if again := s.Evaluate(v); again.WorkloadEntries[1].Selectors[0].Value != "uid:1000" {
		t.Errorf("a Decision shares selectors with the Set")
	}

	// A denied node gets no entries.
	denied := mustParse(t, fill(t, v, `policy "web" {
  select { ek_cas = ["`+testCA+`"] }
  require = ["false"]
  workload "web" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000"]
  }
}`)).Evaluate(v)
	if denied.Allowed || len(denied.WorkloadEntries) != 0 {
		t.Errorf("denied decision = %+v; want no workload entries", denied)
	}
}

func TestEvaluateSPIFFEIDRenderFailure(t *testing.T) {
	// Trusted by hash, the node has no EK CA: the template renders to an
	// ID with an empty path segment, which is a failure, not a release.
	v := attest(t, node{})
	d := mustParse(t, fill(t, v, `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  release "node-svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/node/${ek_ca}/x"
  }
}`)).Evaluate(v)
	want := `policy "web": release "node-svid": spiffe_id: "spiffe://example.org/node//x" is not a SPIFFE ID: path cannot contain empty segments`
	if d.Allowed || !slices.Equal(d.Failures, []string{want}) {
		t.Errorf("Evaluate = allowed %v, failures %q; want denied with %q", d.Allowed, d.Failures, want)
	}
}

// TestEvaluateAppraised checks that an allowed decision names the fact
// groups the allowing policies' require expressions read, and only theirs:
// a denying policy's facts were not what allowed the node.
func TestEvaluateAppraised(t *testing.T) {
	v := attest(t, node{pcrs: []int{7}})
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{
			name: "pcrs and ek",
			src: `policy "a" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[7] == \"PCR7\" && !ek.certified", "size(pcrs) > 0"]
}`,
			want: []string{"ek", "pcrs"},
		},
		{
			name: "no require",
			src: `policy "a" {
  select { ek_hashes = ["EKHASH"] }
}`,
			want: nil,
		},
		{
			name: "union of allowing policies, not the denying one",
			src: `policy "a" {
  select { ek_hashes = ["EKHASH"] }
  require = ["tpm.clock >= 0"]
}
policy "b" {
  select { ek_hashes = ["EKHASH"] }
  require = ["!eventlog.present || eventlog.secure_boot", "pcrs.sha256[7] == \"PCR7\""]
}
policy "denies" {
  select { ek_hashes = ["EKHASH"] }
  require = ["node.labels.role == \"x\""]
}`,
			want: []string{"eventlog", "pcrs", "tpm"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := mustParse(t, fill(t, v, tt.src)).Evaluate(v)
			if !d.Allowed {
				t.Fatalf("denied: %q", d.Failures)
			}
			if !slices.Equal(d.Appraised, tt.want) {
				t.Errorf("Appraised = %q; want %q", d.Appraised, tt.want)
			}
		})
	}
}
