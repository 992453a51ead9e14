package workload

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/keybroker/keybroker/internal/provenance"
)

// BundleLocations says where the agent looks for the Sigstore bundles of
// a caller's executable (JSON, at most provenance.MaxBundleSize bytes).
// Every bundle found is verified, and the signed selectors any of them
// makes hold are the caller's. The zero value looks nowhere: signed
// selectors never hold.
type BundleLocations struct {
	// BesideExecutable reads <exe>.sigstore.json and <exe>.bundle, <exe>
	// being the executable's path as the caller sees it, read through
	// /proc/<pid>/root (so in the caller's mount namespace).
	BesideExecutable bool
	// Dirs are directories of bundles named by the executable's SHA-256:
	// <dir>/<64 lowercase hex>.sigstore.json or .bundle.
	Dirs []string
}

// bundleSuffixes are the names a bundle file may end in.
var bundleSuffixes = []string{".sigstore.json", ".bundle"}

// WithBundles sets where the server looks for the Sigstore bundles of
// callers' executables, for signed selectors. Default: nowhere.
func WithBundles(l BundleLocations) Option {
	return func(s *Server) {
		s.bundles = BundleLocations{BesideExecutable: l.BesideExecutable, Dirs: slices.Clone(l.Dirs)}
	}
}

// selectors returns the facts c is matched against in snap: c.Selectors(),
// and the signed selectors its executable's bundles make hold when snap's
// entries have signed selectors. missing lists where it looked when it found
// no bundle at all: logged at debug level here (a caller matching unsigned
// entries has none, on every call), and with the refusal if c matches no
// entry.
func (a *attestor) selectors(c Caller, snap *Snapshot) (sel []Selector, missing []string) {
	sel = c.Selectors()
	if c.SHA256 == "" || snap.Trust.Empty() || !snap.hasSigned() {
		return sel, nil
	}
	if err := a.signable(c); err != nil {
		a.log.Warn("no signed selectors for the caller", "pid", c.PID, "path", c.Path, "sha256", c.SHA256, "reason", err)
		return sel, nil
	}
	digest, err := hex.DecodeString(c.SHA256)
	if err != nil {
		return sel, nil
	}
	paths := a.bundlePaths(c)
	found := 0
	for _, p := range paths {
		data, err := readBundle(p.root, p.name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			a.log.Warn("caller's Sigstore bundle unreadable", "pid", c.PID, "path", c.Path, "sha256", c.SHA256, "bundle", p, "error", err)
			continue
		}
		found++
		facts, err := snap.Trust.Verify(digest, data)
		if err != nil {
			a.log.Warn("caller's Sigstore bundle not trusted", "pid", c.PID, "path", c.Path, "sha256", c.SHA256, "bundle", p, "error", err)
			continue
		}
		for _, f := range facts {
			sel = append(sel, Selector{Type: SelectorTypeSigned, Value: f})
		}
	}
	if found == 0 {
		looked := make([]string, len(paths))
		for i, p := range paths {
			looked[i] = p.String()
		}
		a.log.Debug("no Sigstore bundle for the caller's executable", "pid", c.PID, "path", c.Path, "sha256", c.SHA256, "looked_in", looked)
		return sel, looked
	}
	return sel, nil
}

// bundlePath is where a bundle may be: name, resolved inside root when
// root is set.
type bundlePath struct{ root, name string }

func (p bundlePath) String() string { return filepath.Join(p.root, p.name) }

// bundlePaths lists where c's bundles may be.
func (a *attestor) bundlePaths(c Caller) []bundlePath {
	var out []bundlePath
	if a.bundles.BesideExecutable && c.Path != "" {
		root := filepath.Join(a.procDir, strconv.Itoa(int(c.PID)), "root")
		for _, s := range bundleSuffixes {
			out = append(out, bundlePath{root: root, name: c.Path + s})
		}
	}
	for _, d := range a.bundles.Dirs {
		for _, s := range bundleSuffixes {
			out = append(out, bundlePath{name: filepath.Join(d, c.SHA256+s)})
		}
	}
	return out
}

// readBundle reads a regular file of at most provenance.MaxBundleSize
// bytes, opened as openBundleFile says (no symbolic link as the last
// component, no magic links, inside root, never blocking on a FIFO).
func readBundle(root, name string) ([]byte, error) {
	f, err := openBundleFile(root, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if fi.Size() > provenance.MaxBundleSize {
		return nil, fmt.Errorf("larger than %d bytes", provenance.MaxBundleSize)
	}
	return readAllBounded(f, provenance.MaxBundleSize)
}
