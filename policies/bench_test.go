package policies_test

import (
	"testing"

	"github.com/keybroker/keybroker/policies"
)

// BenchmarkEvaluate decides for a node without an event log as loadgen's
// broker does for each release: a policy selecting it by EK hash,
// requiring two PCRs and releasing a TLS certificate rendered for it.
func BenchmarkEvaluate(b *testing.B) {
	v, err := attest(b, node{pcrs: []int{0, 7}}).WithHistory(nil)
	if err != nil {
		b.Fatal(err)
	}
	s, err := policies.Parse([]byte(fill(b, v, `policy "loadgen" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[0] == pcrs.sha256[0]", "pcrs.sha256[7] == \"PCR7\""]
  release "node-tls" {
    type        = "tls_certificate"
    mode        = "tpm_bound"
    ttl         = "2h"
    common_name = "node-${ek_hash_short}"
    dns_names   = ["${ek_hash_short}.nodes.test"]
  }
}`)), "bench.hcl")
	if err != nil {
		b.Fatal(err)
	}
	if d := s.Evaluate(v); !d.Allowed {
		b.Fatalf("Evaluate denies: %v", d.Failures)
	}
	b.Run("evaluate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if d := s.Evaluate(v); !d.Allowed {
				b.Fatal(d.Failures)
			}
		}
	})
	b.Run("facts", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			policies.Facts(v)
		}
	})
}
