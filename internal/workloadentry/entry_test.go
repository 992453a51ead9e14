package workloadentry

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The broker parses selectors from policies with ParseSelector and the
// agent checks those it receives with Validate: both must accept and
// refuse the same selectors.
func TestParseSelectorAgreesWithValidate(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	for _, s := range []string{
		"unix:uid:1000", "unix:gid:0", "unix:path:/usr/bin/web", "unix:sha256:" + sum,
		"unix:uid:007", "unix:uid:4294967296", "unix:uid:", "unix:uid", "unix:path:bin/web",
		"unix:path:/usr/../bin", "unix:sha256:" + strings.ToUpper(sum), "unix:pid:1", "k8s:ns:default",
	} {
		parsed, perr := ParseSelector(s)
		typ, val, _ := strings.Cut(s, ":")
		verr := Selector{Type: typ, Value: val}.Validate()
		if (perr == nil) != (verr == nil) {
			t.Errorf("%s: ParseSelector error %v, Validate error %v", s, perr, verr)
		}
		if perr == nil && parsed.String() != s {
			t.Errorf("ParseSelector(%s) = %s", s, parsed)
		}
	}
	if _, err := ParseSelector("k8s:ns:default"); err == nil || !strings.Contains(err.Error(), `unknown selector type "k8s"; use "unix"`) {
		t.Errorf("ParseSelector(k8s:ns:default) = %v", err)
	}
}

func TestCloneSharesNothing(t *testing.T) {
	in := []Entry{{Name: "web", ID: spiffeid.RequireFromString("spiffe://example.org/web"), Selectors: []Selector{{Type: "unix", Value: "uid:1"}}}}
	out := Clone(in)
	out[0].Selectors[0].Value = "uid:2"
	out[0].Name = "other"
	if in[0].Selectors[0].Value != "uid:1" || in[0].Name != "web" {
		t.Fatalf("Clone shares with its input: %+v", in)
	}
	if Clone(nil) != nil {
		t.Fatal("Clone(nil) is not nil")
	}
}
