package version

import (
	"runtime/debug"
	"testing"
)

func TestFormat(t *testing.T) {
	vcs := &debug.BuildInfo{
		Main: debug.Module{Path: "github.com/keybroker/keybroker", Version: "v0.3.1"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc123"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name     string
		ver, rev string
		info     *debug.BuildInfo
		want     string
	}{
		{name: "stamped", ver: "v1.2.3", rev: "deadbeef", info: vcs, want: "v1.2.3 (deadbeef)"},
		{name: "stamped version, revision from vcs", ver: "v1.2.3", info: vcs, want: "v1.2.3 (abc123-dirty)"},
		{name: "build info only", ver: "devel", info: vcs, want: "v0.3.1 (abc123-dirty)"},
		{name: "devel main module", ver: "devel", info: &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, want: "devel (unknown revision)"},
		{name: "no build info", ver: "devel", want: "devel (unknown revision)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := format(tt.ver, tt.rev, tt.info); got != tt.want {
				t.Errorf("format() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStringStamped(t *testing.T) {
	oldV, oldR := Version, Revision
	t.Cleanup(func() { Version, Revision = oldV, oldR })
	Version, Revision = "v9.8.7", "0123abcd"
	if got, want := String(), "v9.8.7 (0123abcd)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
