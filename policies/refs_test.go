package policies_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/keybroker/keybroker/policies"
)

// TestRefs lists what a Set names outside itself, each at the position
// where it is written.
func TestRefs(t *testing.T) {
	ek := strings.Repeat("ab", 32)
	src := `node "` + ek + `" {
  labels = { role = "web" }
}
policy "web" {
  select {
    ek_hashes = ["` + ek + `"]
    ek_cas    = ["swtpm", "vendor"]
    labels    = { role = "web" }
  }
  release "svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/web"
  }
  release "node-svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
  }
  release "db" {
    type = "vault_kv"
    path = "secret/data/db"
  }
  workload "app" {
    spiffe_id = "spiffe://example.org/app"
    selectors = ["unix:uid:1000"]
  }
}
`
	set, err := policies.Parse([]byte(src), "p.hcl")
	if err != nil {
		t.Fatal(err)
	}
	r := set.Refs()
	pos := func(rng hcl.Range) string { return fmt.Sprintf("%d:%d", rng.Start.Line, rng.Start.Column) }
	var got []string
	add := func(kind string, refs []policies.Ref) {
		for _, ref := range refs {
			s := fmt.Sprintf("%s %s %q %q %s", kind, pos(ref.Range), ref.Policy, ref.Name, ref.Type)
			if !ref.SPIFFEID.IsZero() {
				s += fmt.Sprintf(" %s at %s", ref.SPIFFEID, pos(ref.SPIFFEIDRange))
			}
			if ref.Labels != nil {
				s += fmt.Sprintf(" %v", ref.Labels)
			}
			got = append(got, s)
		}
	}
	add("ek_hash", r.EKHashes)
	add("ek_ca", r.EKCAs)
	add("labels", r.LabelSelectors)
	add("release", r.Releases)
	add("workload", r.Workloads)
	add("node", r.Nodes)
	want := []string{
		`ek_hash 6:18 "web" "` + ek + `" `,
		`ek_ca 7:18 "web" "swtpm" `,
		`ek_ca 7:27 "web" "vendor" `,
		`labels 8:17 "web" "" ` + ` map[role:web]`,
		`release 11:17 "web" "svid" x509_svid spiffe://example.org/web at 12:17`,
		`release 15:17 "web" "node-svid" x509_svid`,
		`release 19:12 "web" "db" vault_kv`,
		`workload 22:12 "web" "app"  spiffe://example.org/app at 23:17`,
		`node 1:6 "" "` + ek + `"  map[role:web]`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Refs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
