package broker

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/broker/metrics"
	"github.com/keybroker/keybroker/policies"
)

// policySettle is how long the watcher waits, after it saw a policy file
// change, for the files to stop changing before it reloads: a file written in
// place (not renamed into place) can be caught half written. If they changed
// again, the next poll reloads.
const policySettle = 100 * time.Millisecond

// ReloadPolicies loads the policies again from the configured paths and, if
// they load and pass Config.CheckPolicies against the configuration the
// broker started with, installs them: Attest calls that have not yet
// evaluated policy use the new set, those that have finish under the set
// they evaluated. If any file fails to load or check, nothing changes, the
// previous policies keep serving, and the error (every problem with file:line:column) is logged and
// returned. keybroker serve calls it on SIGHUP; the policy watcher (see
// Config.PolicyPollInterval) calls the same code when a file changes.
func (r *Running) ReloadPolicies() error {
	return r.policies.reload("request")
}

// policyReloader loads the policy files and installs them into the server,
// for Start, ReloadPolicies and the watcher. Reloads are serialized.
type policyReloader struct {
	paths   []string
	log     *slog.Logger
	install func(*policies.Set) // nil until the server exists
	settle  time.Duration
	stat    func(paths []string) fileStates // statPolicyFiles; tests replace it
	// check refuses a loaded set that cannot run under the broker's
	// configuration (Config.CheckPolicies); nil checks nothing.
	check func(*policies.Set) error
	// metrics counts reloads; nil counts nothing.
	metrics *metrics.Broker

	mu   sync.Mutex
	seen fileStates // the files as they were when last loaded, refused or not
	hash string     // the hash of the set last installed
}

func newPolicyReloader(paths []string, log *slog.Logger, check func(*policies.Set) error) *policyReloader {
	return &policyReloader{paths: paths, log: log, settle: policySettle, stat: statPolicyFiles, check: check}
}

// loadChecked loads the policy files and checks the set against the
// configuration.
func (pr *policyReloader) loadChecked() (*policies.Set, error) {
	set, err := policies.Load(pr.paths...)
	if err != nil {
		return nil, err
	}
	if pr.check != nil {
		if err := pr.check(set); err != nil {
			return nil, err
		}
	}
	return set, nil
}

// load loads the initial set without installing it.
func (pr *policyReloader) load() (*policies.Set, error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	// The files are read for the fingerprint before they are loaded, so a
	// change made during the load is seen by the next poll.
	pr.seen = pr.stat(pr.paths)
	set, err := pr.loadChecked()
	if err != nil {
		return nil, err
	}
	pr.hash = set.Hash()
	return set, nil
}

// reload loads and installs the policies; trigger says why, for the log.
func (pr *policyReloader) reload(trigger string) error {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.reloadLocked(trigger, pr.stat(pr.paths), nil)
}

func (pr *policyReloader) reloadLocked(trigger string, files fileStates, changed []string) error {
	pr.seen = files
	attrs := []any{"trigger", trigger}
	if len(changed) > 0 {
		attrs = append(attrs, "changed", changed)
	}
	set, err := pr.loadChecked()
	if err != nil {
		pr.log.Error("policy reload refused; the previous policies keep serving",
			append(attrs, "policy_hash", pr.hash, "error", err)...)
		pr.metrics.PolicyReload(metrics.ReloadRefused)
		return fmt.Errorf("policy reload refused: %w", err)
	}
	if pr.install != nil {
		pr.install(set)
	}
	prev := pr.hash
	pr.hash = set.Hash()
	if prev == pr.hash {
		pr.metrics.PolicyReload(metrics.ReloadUnchanged)
		pr.log.Info("policies unchanged", append(attrs, "policies", set.Names(), "policy_hash", pr.hash)...)
		return nil
	}
	pr.metrics.PolicyReload(metrics.ReloadInstalled)
	pr.log.Info("policies reloaded",
		append(attrs, "policies", set.Names(), "policy_hash", pr.hash, "previous_policy_hash", prev)...)
	return nil
}

// poll reloads the policies if any policy file changed since they were last
// loaded (whether that load succeeded or not, so a broken file is reported
// once, not on every poll). It reports whether it reloaded.
func (pr *policyReloader) poll(stop <-chan struct{}) bool {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	files := pr.stat(pr.paths)
	if maps.Equal(files, pr.seen) {
		return false
	}
	if pr.settle > 0 {
		select {
		case <-stop:
			return false
		case <-time.After(pr.settle):
		}
		if again := pr.stat(pr.paths); !maps.Equal(files, again) {
			return false // still being written; the next poll sees it
		}
	}
	pr.reloadLocked("file change", files, pr.seen.changed(files))
	return true
}

// watch polls every interval until stop is closed.
func (pr *policyReloader) watch(stop <-chan struct{}, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			pr.poll(stop)
		}
	}
}

// fileState is what the watcher compares of one policy file, or of a policy
// path it could not read (err set).
type fileState struct {
	size  int64
	mtime int64 // UnixNano
	sum   [sha256.Size]byte
	err   string
}

// fileStates maps the files a policy set is loaded from (and policy paths
// that could not be read) to their state.
type fileStates map[string]fileState

// statPolicyFiles reads the state of the files policies.Load would read for
// paths: each listed file, and every *.hcl file in each listed directory.
// Files are small, so each is hashed on every poll: a rewrite within the
// file system's mtime resolution that keeps the size is still seen.
func statPolicyFiles(paths []string) fileStates {
	out := fileStates{}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			out[p] = fileState{err: statErr(err)}
			continue
		}
		if !fi.IsDir() {
			out[p] = statFile(p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			out[p] = fileState{err: statErr(err)}
			continue
		}
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".hcl") {
				f := filepath.Join(p, e.Name())
				out[f] = statFile(f)
			}
		}
	}
	return out
}

func statFile(path string) fileState {
	fi, err := os.Stat(path)
	if err != nil {
		return fileState{err: statErr(err)}
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return fileState{err: statErr(err)}
	}
	return fileState{size: fi.Size(), mtime: fi.ModTime().UnixNano(), sum: sha256.Sum256(src)}
}

// statErr is a stable description of a failure to read a path, so that the
// same failure on two polls compares equal.
func statErr(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "missing"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	return err.Error()
}

// changed lists, sorted, the paths added, removed or changed from s to now.
func (s fileStates) changed(now fileStates) []string {
	var out []string
	for p, st := range now {
		if prev, ok := s[p]; !ok || prev != st {
			out = append(out, p)
		}
	}
	for p := range s {
		if _, ok := now[p]; !ok {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}
