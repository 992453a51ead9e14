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
		"signed:key:release", "signed:key:", "signed:key:a/b", "signed:key:-x", "signed:cert:x",
		"signed:identity:https://issuer.test/auth/alice@example.com", "signed:identity:https://issuer.test",
		"signed:identity:issuer/alice", "signed:identity:https://issuer.test/a\nb",
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
	if _, err := ParseSelector("k8s:ns:default"); err == nil || !strings.Contains(err.Error(), `unknown selector type "k8s"; use "signed" or "unix"`) {
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

func TestSignedSelectors(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{name: "key", in: "signed:key:release-2026"},
		{name: "identity email", in: "signed:identity:https://oauth2.sigstore.dev/auth/alice@example.com"},
		{name: "identity uri", in: "signed:identity:https://token.actions.githubusercontent.com/https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main"},
		{name: "key with slash", in: "signed:key:a/b", wantErr: `name "a/b" must be`},
		{name: "empty key", in: "signed:key:", wantErr: "a signed selector is key:<signer name> or identity:<issuer>/<subject>"},
		{name: "issuer only", in: "signed:identity:https://issuer.test", wantErr: "identity must be <issuer URL>/<subject>"},
		{name: "no URL", in: "signed:identity:issuer/alice", wantErr: "identity must be <issuer URL>/<subject>"},
		{name: "control character", in: "signed:identity:https://issuer.test/a\nb", wantErr: "without control characters"},
		{name: "unknown", in: "signed:cert:x", wantErr: `unknown signed selector "cert"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSelector(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseSelector(%q): %v", tt.in, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseSelector(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}
