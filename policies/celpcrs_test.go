package policies_test

import (
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

// pcrExprs read the pcrs facts every way CEL can: lookups, presence,
// membership with keys of every type, size, comprehensions, equality with
// literals on either side, conversion; and failing ones. A node quoting
// sha256 PCRs 0 and 7 satisfies exactly the first group.
var pcrExprs = struct{ hold, fail []string }{
	hold: []string{
		`pcrs.sha256[7] == "PCR7"`,
		`pcrs["sha256"][7] == "PCR7"`,
		`dyn(pcrs.sha256)[7u] == "PCR7"`,
		`dyn(pcrs.sha256)[7.0] == "PCR7"`,
		`has(pcrs.sha256)`,
		`!has(pcrs.sha384)`,
		`7 in pcrs.sha256 && 0 in pcrs.sha256 && !(5 in pcrs.sha256)`,
		`7u in dyn(pcrs.sha256) && 7.0 in dyn(pcrs.sha256) && !(7.5 in dyn(pcrs.sha256)) && !("7" in dyn(pcrs.sha256))`,
		`"sha256" in pcrs && !("sha1" in pcrs)`,
		`size(pcrs) == 1 && size(pcrs.sha256) == 2`,
		`pcrs.sha256.all(i, size(pcrs.sha256[i]) == 64)`,
		`pcrs.exists(b, b == "sha256")`,
		`pcrs.sha256.filter(i, i > 3) == [7]`,
		`pcrs.sha256 == {7: "PCR7", 0: pcrs.sha256[0]}`,
		`{7: "PCR7", 0: pcrs.sha256[0]} == pcrs.sha256`,
		`pcrs == {"sha256": pcrs.sha256}`,
		`pcrs.sha256 != {7: "PCR7"}`,
		`type(pcrs.sha256) == map && type(pcrs) == map`,
		`dyn(pcrs.sha256)[7] == "PCR7"`,
		`pcrs.sha256.map(i, i).size() == 2`,
	},
	fail: []string{
		`pcrs.sha256[5] == "PCR7"`,
		`pcrs.sha384[7] == "PCR7"`,
		`pcrs.sha256[-1] == ""`,
		`dyn(pcrs.sha256)[7.5] == ""`,
		`dyn(pcrs)[7] == ""`,
		`dyn(pcrs.sha256)["7"] == ""`,
	},
}

// TestEvaluatePCRExprs holds CEL's reading of the pcrs facts to what it
// was when CEL read them from Go maps by reflection: the same outcome and
// the same failure text for every expression.
func TestEvaluatePCRExprs(t *testing.T) {
	v := attest(t, node{pcrs: []int{0, 7}})
	for _, e := range pcrExprs.hold {
		s, err := exprPolicy(t, v, e)
		if err != nil {
			t.Errorf("%s: %v", e, err)
			continue
		}
		if d := s.Evaluate(v); !d.Allowed {
			t.Errorf("%s: denied: %v", e, d.Failures)
		}
	}
	var got []string
	for _, e := range pcrExprs.fail {
		s, err := exprPolicy(t, v, e)
		if err != nil {
			t.Errorf("%s: %v", e, err)
			continue
		}
		d := s.Evaluate(v)
		if d.Allowed {
			t.Errorf("%s: allowed", e)
		}
		got = append(got, d.Failures...)
	}
	// What CEL answered reading the facts from Go maps by reflection.
	want := []string{
		`policy "p": require[0] pcrs.sha256[5] == "PCR7": no such key: 5`,
		`policy "p": require[0] pcrs.sha384[7] == "PCR7": no such key: sha384`,
		`policy "p": require[0] pcrs.sha256[-1] == "": no such key: -1`,
		`policy "p": require[0] dyn(pcrs.sha256)[7.5] == "": no such key: 7.5`,
		`policy "p": require[0] dyn(pcrs)[7] == "": no such key: 7`,
		`policy "p": require[0] dyn(pcrs.sha256)["7"] == "": no such key: 7`,
	}
	if g, w := strings.Join(got, "\n"), fill(t, v, strings.Join(want, "\n")); g != w {
		t.Errorf("failures:\n%s\nwant:\n%s", g, w)
	}
}

// exprPolicy is a policy selecting v's node that requires the CEL
// expression e and nothing else.
func exprPolicy(t *testing.T, v *verify.Verified, e string) (*policies.Set, error) {
	t.Helper()
	return policies.Parse([]byte(fill(t, v, `policy "p" {
  select { ek_hashes = ["EKHASH"] }
  require = [`+quoteHCL(e)+`]
}`)), "test.hcl")
}

// quoteHCL quotes a CEL expression as an HCL string.
func quoteHCL(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
