package workload

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestSelectorValidate(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		name    string
		sel     Selector
		wantErr string
	}{
		{name: "uid", sel: Selector{Type: "unix", Value: "uid:1000"}},
		{name: "gid", sel: Selector{Type: "unix", Value: "gid:0"}},
		{name: "path", sel: Selector{Type: "unix", Value: "path:/usr/bin/web"}},
		{name: "sha256", sel: Selector{Type: "unix", Value: "sha256:" + sum}},
		{name: "other type", sel: Selector{Type: "k8s", Value: "ns:default"}, wantErr: `unknown type "k8s"`},
		{name: "no value", sel: Selector{Type: "unix", Value: "uid"}, wantErr: "a unix selector is uid:<n>"},
		{name: "empty value", sel: Selector{Type: "unix", Value: "uid:"}, wantErr: "a unix selector is uid:<n>"},
		{name: "uid not a number", sel: Selector{Type: "unix", Value: "uid:root"}, wantErr: "uid must be a decimal number"},
		{name: "uid leading zero", sel: Selector{Type: "unix", Value: "uid:007"}, wantErr: "uid must be a decimal number"},
		{name: "uid too large", sel: Selector{Type: "unix", Value: "uid:4294967296"}, wantErr: "uid must be a decimal number"},
		{name: "relative path", sel: Selector{Type: "unix", Value: "path:bin/web"}, wantErr: "path must be absolute and clean"},
		{name: "unclean path", sel: Selector{Type: "unix", Value: "path:/usr/../bin/web"}, wantErr: "path must be absolute and clean"},
		{name: "short sha256", sel: Selector{Type: "unix", Value: "sha256:abcd"}, wantErr: "sha256 must be 64 lowercase hex digits"},
		{name: "uppercase sha256", sel: Selector{Type: "unix", Value: "sha256:" + strings.ToUpper(sum)}, wantErr: "sha256 must be 64 lowercase hex digits"},
		{name: "unknown key", sel: Selector{Type: "unix", Value: "user:root"}, wantErr: `unknown unix selector "user"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.sel.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate(%s) = %v", tc.sel, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate(%s) = %v; want error containing %q", tc.sel, err, tc.wantErr)
			}
		})
	}
}

func TestEntryValidate(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	many := make([]Selector, MaxSelectors+1)
	for i := range many {
		many[i] = Selector{Type: "unix", Value: "uid:1"}
	}
	tests := []struct {
		name    string
		entry   Entry
		wantErr string
	}{
		{name: "valid", entry: Entry{Name: "web", ID: id, Selectors: []Selector{{Type: "unix", Value: "uid:1"}}}},
		{name: "no ID", entry: Entry{Name: "web", Selectors: []Selector{{Type: "unix", Value: "uid:1"}}}, wantErr: `entry "web": no SPIFFE ID`},
		{name: "no selectors", entry: Entry{Name: "web", ID: id}, wantErr: `entry "web": no selectors`},
		{name: "too many selectors", entry: Entry{Name: "web", ID: id, Selectors: many}, wantErr: "17 selectors, at most 16"},
		{name: "every bad selector", entry: Entry{Name: "web", ID: id, Selectors: []Selector{{Type: "unix", Value: "uid:x"}, {Type: "unix", Value: "gid:y"}}},
			wantErr: "uid must be a decimal number below 2^32\nentry \"web\": selector \"unix:gid:y\": gid must be"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.entry.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v; want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestEntryMatches(t *testing.T) {
	caller := Caller{PID: 42, UID: 1000, GID: 100, Path: "/usr/bin/web", SHA256: "ab"}.Selectors()
	tests := []struct {
		name      string
		selectors []Selector
		want      bool
	}{
		{"one matching", []Selector{{Type: "unix", Value: "uid:1000"}}, true},
		{"all matching", []Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "gid:100"}, {Type: "unix", Value: "path:/usr/bin/web"}, {Type: "unix", Value: "sha256:ab"}}, true},
		{"one of two", []Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "gid:0"}}, false},
		{"other uid", []Selector{{Type: "unix", Value: "uid:0"}}, false},
		{"other type, same value", []Selector{{Type: "k8s", Value: "uid:1000"}}, false},
		{"none", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := (Entry{Selectors: tc.selectors}).Matches(caller); got != tc.want {
				t.Errorf("Matches = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCallerSelectors(t *testing.T) {
	got := Caller{UID: 1, GID: 2}.Selectors()
	want := []Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:2"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("a caller whose executable is unknown has selectors %v, want %v", got, want)
	}
	got = Caller{UID: 1, GID: 2, Path: "/bin/x", SHA256: "ff"}.Selectors()
	if len(got) != 4 || got[2].String() != "unix:path:/bin/x" || got[3].String() != "unix:sha256:ff" {
		t.Errorf("selectors %v", got)
	}
}
