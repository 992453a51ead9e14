package workload

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/keybroker/keybroker/internal/provenance"
)

// DefaultProcDir is where the agent reads callers' executables.
const DefaultProcDir = "/proc"

// maxHashCache bounds the executable hash cache; when full it starts over.
const maxHashCache = 1024

// attestor turns a connection's peer credentials into a Caller.
type attestor struct {
	procDir string
	bundles BundleLocations
	log     *slog.Logger

	mu     sync.Mutex
	hashes map[fileKey]string
}

func newAttestor(procDir string, bundles BundleLocations, log *slog.Logger) *attestor {
	return &attestor{procDir: procDir, bundles: bundles, log: log, hashes: map[fileKey]string{}}
}

// errCallerGone means the process that connected is no longer the one
// holding its PID.
var errCallerGone = errors.New("the calling process exited")

// attest describes the caller: uid and gid from the kernel, the executable
// from /proc/<pid>/exe read now (so a process that exec'd another program
// since it connected is described as that program). It fails if the PID now
// belongs to another process than the one that connected. An executable
// the agent cannot read leaves Path and SHA256 empty (and is logged), so
// only entries selecting on uid and gid alone can match.
func (a *attestor) attest(p PeerInfo) (Caller, error) {
	c := Caller{PID: p.PID, UID: p.UID, GID: p.GID}
	exe := filepath.Join(a.procDir, strconv.Itoa(int(p.PID)), "exe")
	path, sum, exeErr := a.executable(exe)
	// Checked after reading the executable: if the PID was reused in the
	// meantime, what was read may be another program's.
	if st, err := processStartTime(a.procDir, p.PID); err != nil || st != p.StartTime {
		return Caller{}, errCallerGone
	}
	if exeErr != nil {
		a.log.Warn("caller attested without its executable", "pid", p.PID, "uid", p.UID, "error", exeErr)
		return c, nil
	}
	c.Path, c.SHA256 = path, sum
	return c, nil
}

// executable returns the path and SHA-256 of the program /proc/<pid>/exe
// points at. The hash is cached by device, inode, size, mtime and ctime.
func (a *attestor) executable(exe string) (string, string, error) {
	path, err := os.Readlink(exe)
	if err != nil {
		return "", "", fmt.Errorf("unable to read the caller's executable: %w", err)
	}
	f, err := os.Open(exe)
	if err != nil {
		return "", "", fmt.Errorf("unable to open the caller's executable: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", "", fmt.Errorf("unable to stat the caller's executable: %w", err)
	}
	key, cacheable := keyOf(fi)
	if cacheable {
		a.mu.Lock()
		sum, ok := a.hashes[key]
		a.mu.Unlock()
		if ok {
			return path, sum, nil
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", "", fmt.Errorf("unable to hash the caller's executable: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if cacheable {
		a.mu.Lock()
		if len(a.hashes) >= maxHashCache {
			clear(a.hashes)
		}
		a.hashes[key] = sum
		a.mu.Unlock()
	}
	return path, sum, nil
}

// processStartTime reads field 22 (starttime) of /proc/<pid>/stat.
func processStartTime(procDir string, pid int32) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(int(pid)), "stat"))
	if err != nil {
		return 0, fmt.Errorf("unable to read process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold anything,
	// so count fields after its closing parenthesis: state is field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: malformed stat", pid)
	}
	fields := bytes.Fields(b[i+1:])
	const startTime = 22 - 3
	if len(fields) <= startTime {
		return 0, fmt.Errorf("process %d: malformed stat", pid)
	}
	v, err := strconv.ParseUint(string(fields[startTime]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("process %d: malformed stat: %w", pid, err)
	}
	return v, nil
}

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
	digest, err := hex.DecodeString(c.SHA256)
	if err != nil {
		return sel, nil
	}
	paths := a.bundlePaths(c)
	found := 0
	for _, p := range paths {
		data, err := readBundle(p)
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
		a.log.Debug("no Sigstore bundle for the caller's executable", "pid", c.PID, "path", c.Path, "sha256", c.SHA256, "looked_in", paths)
		return sel, paths
	}
	return sel, nil
}

// bundlePaths lists where c's bundles may be.
func (a *attestor) bundlePaths(c Caller) []string {
	var out []string
	if a.bundles.BesideExecutable && c.Path != "" {
		exe := filepath.Join(a.procDir, strconv.Itoa(int(c.PID)), "root", c.Path)
		for _, s := range bundleSuffixes {
			out = append(out, exe+s)
		}
	}
	for _, d := range a.bundles.Dirs {
		for _, s := range bundleSuffixes {
			out = append(out, filepath.Join(d, c.SHA256+s))
		}
	}
	return out
}

// readBundle reads a regular file of at most provenance.MaxBundleSize
// bytes.
func readBundle(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, provenance.MaxBundleSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > provenance.MaxBundleSize {
		return nil, fmt.Errorf("larger than %d bytes", provenance.MaxBundleSize)
	}
	return data, nil
}
