// Package version reports the version and VCS revision of keybroker's
// binaries: stamped at build with -ldflags, or read from the build
// information the Go toolchain embeds.
package version

import (
	"runtime/debug"
	"strings"
)

// Version is the release version, set at build with
// -ldflags "-X github.com/keybroker/keybroker/internal/version.Version=v1.2.3".
var Version = "devel"

// Revision is the VCS revision, set at build with
// -ldflags "-X github.com/keybroker/keybroker/internal/version.Revision=<commit>".
var Revision = ""

// String returns "<version> (<revision>)": the stamped values, or where
// they are not stamped, the main module's version and the vcs.revision and
// vcs.modified settings of the build information.
func String() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = nil
	}
	return format(Version, Revision, info)
}

// format builds String's text from stamped values and build information
// (nil when the binary carries none).
func format(ver, rev string, info *debug.BuildInfo) string {
	modified := false
	if info != nil {
		if ver == "devel" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			ver = info.Main.Version
		}
		if rev == "" {
			for _, s := range info.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
		}
	}
	if rev == "" {
		rev = "unknown revision"
	}
	if modified && !strings.HasSuffix(rev, "-dirty") {
		rev += "-dirty"
	}
	return ver + " (" + rev + ")"
}
