package policies_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

// fuzzSeeds are inputs near the edges of the grammar: templates, heredocs,
// CEL that compiles to non-bool types, numbers out of range, odd bytes.
var fuzzSeeds = []string{
	"",
	"\x00",
	"\xff\xfe",
	"# only a comment\n",
	`policy "" {}`,
	`policy "a" { select {} }`,
	`policy "a" { select { ek_cas = ["x"] } } policy "a" { select { ek_cas = ["y"] } }`,
	`policy "a" { select { ek_cas = "x" } }`,
	`policy "a" { select { ek_hashes = [1, null, true, ["x"]] } }`,
	`policy "a" { select { ek_cas = ["x"] } require = ["1", "'s'", "ek", "pcrs.sha256[7] == 1", "has(", "` + "\u2028" + `"] }`,
	`policy "a" { select { ek_cas = ["x"] } require = ["[1,2,3].all(x, x > 0)", "pcrs.sha256.exists(k, k > 23)", "tpm.clock / 0 == 1"] }`,
	`policy "a" { select { ek_cas = ["x"] } require = ["${ek_hash}"] }`,
	`policy "a" { select { ek_cas = ["x"] } require = [<<-EOT
    ek.certified &&
    ek.model.matches("^[a-z]+$")
  EOT
  ] }`,
	`policy "a" {
  select { ek_cas = ["x"] }
  release "r" {
    type = "tls_certificate"
    mode = "pcr_sealed"
    pcr_bank = "sha1"
    pcrs = [-1, 24, 1.5, 1e400, 7, 7, "7"]
    ttl = "-5s"
    common_name = "${ek_hash_short}${unknown}"
    dns_names = ["${upper(ek_hash)}", "%{ if ek_ca == "" }x%{ endif }", ""]
    ip_addresses = ["::1", "256.0.0.1", "${ek_ca}"]
  }
}`,
	`policy "a" { select { ek_cas = ["x"] } release "r" { type = "tls_certificate" ip_addresses = ["${ek_ca}"] } }`,
	`policy "a" { select { ek_cas = ["x"] } release "r" { type = "tls_certificate" common_name = "${[for x in [1]: x]}" } }`,
	`policy "a" { select { ek_cas = ["x"] } release "r" { type = "tls_certificate" common_name = ek_hash } }`,
	`policy "a" { select { ek_cas = ["x"] } release "r" { type = "tls_certificate" common_name = "x" ttl = "9000000000000000000h" } }`,
	`policy "a" { select { ek_cas = ["x"] } release "r" { type = "x509_svid" spiffe_id = "spiffe://${ek_ca}/${ek_hash}" ttl = "168h" common_name = "x" } }`,
	`policy "a" { select { ek_cas = ["x"] } release "r" { type = "x509_svid" spiffe_id = "spiffe://td/%{ if ek_ca == "" }x%{ endif }" } }`,
	`policy "a" {
  select { ek_cas = ["x"] }
  workload "w" { spiffe_id = "spiffe://td/w" selectors = ["unix:uid:0", "unix:", ":", "unix:path:/a/../b", "unix:sha256:` + strings.Repeat("a", 64) + `", "x:y"] ttl = "1s" }
  workload "w" { spiffe_id = "spiffe://TD/w" selectors = [] }
  workload "" { spiffe_id = 1 selectors = "unix:uid:0" }
}`,
	strings.Repeat("policy \"a\" { ", 200),
	`policy "a" { select { ek_cas = ["x"] } require = ["` + strings.Repeat("(", 300) + "true" + strings.Repeat(")", 300) + `"] }`,
}

// FuzzParse checks that Parse never panics, that a refusal is an error with
// no Set, and that an accepted Set is well formed and can be evaluated
// against a missing node without panicking or allowing it.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "policies", "*.hcl"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed policies in testdata: %v", err)
	}
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		s, err := policies.Parse(src, "fuzz.hcl")
		if err != nil {
			if s != nil {
				t.Fatalf("Parse returned a Set and the error %v", err)
			}
			if err.Error() == "" {
				t.Fatal("Parse failed with an empty error")
			}
			return
		}
		if s == nil {
			t.Fatal("Parse returned neither a Set nor an error")
		}
		names := s.Names()
		if len(names) == 0 || !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
			t.Fatalf("Names() = %q, want sorted, unique and not empty", names)
		}
		if len(s.Hash()) != 64 {
			t.Fatalf("Hash() = %q", s.Hash())
		}
		for _, v := range []*verify.Verified{nil, {}} {
			d := s.Evaluate(v)
			if d.Allowed || len(d.Releases) != 0 || len(d.Policies) != 0 {
				t.Fatalf("Evaluate(%v) allowed: %+v", v, d)
			}
			if d.PolicyHash != s.Hash() {
				t.Fatalf("Evaluate(%v).PolicyHash = %q, want %q", v, d.PolicyHash, s.Hash())
			}
		}
		again, err := policies.Parse(src, "other.hcl")
		if err != nil || again.Hash() != s.Hash() {
			t.Fatalf("parsing the same source again = %v, hash %q; want the hash %q", err, again.Hash(), s.Hash())
		}
	})
}
