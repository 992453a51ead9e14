package broker

// Internal tests of the policy watcher: one poll at a time, so that what a
// change triggers is deterministic.

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

// watchedEK is the EK hash the test policies select.
var watchedEK = strings.Repeat("ab", 32)

// watchedPolicy is a valid document with one policy named name.
func watchedPolicy(name string) string {
	return fmt.Sprintf(`policy %q {
  select { ek_hashes = [%q] }
  release %q {
    type        = "tls_certificate"
    common_name = "node"
  }
}
`, name, watchedEK, name+"-tls")
}

// brokenPolicy fails to load with an error on line 3.
const brokenPolicy = "policy \"web\" {\n  select { ek_cas = [\"swtpm\"] }\n  requires = [\"true\"]\n}\n"

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// take returns what was logged since the last take.
func (b *lockedBuffer) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	b.buf.Reset()
	return s
}

func writePolicy(t *testing.T, path, src string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hashOf is the hash a Set loaded from paths would have.
func hashOf(t *testing.T, paths ...string) string {
	t.Helper()
	s, err := policies.Load(paths...)
	if err != nil {
		t.Fatal(err)
	}
	return s.Hash()
}

func TestPolicyWatcherPoll(t *testing.T) {
	dir := t.TempDir()
	polDir := filepath.Join(dir, "policies")
	if err := os.Mkdir(polDir, 0o700); err != nil {
		t.Fatal(err)
	}
	web, db, extra := filepath.Join(polDir, "web.hcl"), filepath.Join(dir, "db.hcl"), filepath.Join(polDir, "extra.hcl")
	writePolicy(t, web, watchedPolicy("web"))
	writePolicy(t, db, watchedPolicy("db"))
	paths := []string{polDir, db}

	var logs lockedBuffer
	pr := newPolicyReloader(paths, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	pr.settle = 0
	var installed []*policies.Set
	pr.install = func(s *policies.Set) { installed = append(installed, s) }
	first, err := pr.load()
	if err != nil {
		t.Fatal(err)
	}
	serving := first.Hash()

	// Each step changes the files (or not) and polls once, in order.
	steps := []struct {
		name       string
		change     func(t *testing.T)
		wantReload bool     // poll reported a reload attempt
		wantLog    []string // in what the poll logged; none if empty
		wantSet    bool     // a new set was installed
		wantNames  []string // of the serving set
	}{
		{
			name:      "unchanged",
			change:    func(*testing.T) {},
			wantNames: []string{"db", "web"},
		},
		{
			name:       "file in a directory changed",
			change:     func(t *testing.T) { writePolicy(t, web, watchedPolicy("web2")) },
			wantReload: true,
			wantLog:    []string{`msg="policies reloaded"`, "trigger=\"file change\"", "changed=[" + web + "]", "policies=\"[db web2]\""},
			wantSet:    true,
			wantNames:  []string{"db", "web2"},
		},
		{
			name:      "unchanged after a reload",
			change:    func(*testing.T) {},
			wantNames: []string{"db", "web2"},
		},
		{
			name:       "listed file broken",
			change:     func(t *testing.T) { writePolicy(t, db, brokenPolicy) },
			wantReload: true,
			wantLog: []string{`level=ERROR`, `msg="policy reload refused; the previous policies keep serving"`,
				"changed=[" + db + "]", db + ":3:"},
			wantNames: []string{"db", "web2"},
		},
		{
			name:      "still broken: refused once, not on every poll",
			change:    func(*testing.T) {},
			wantNames: []string{"db", "web2"},
		},
		{
			name:       "file added to the directory while another is broken",
			change:     func(t *testing.T) { writePolicy(t, extra, watchedPolicy("extra")) },
			wantReload: true,
			wantLog:    []string{`msg="policy reload refused; the previous policies keep serving"`, "changed=[" + extra + "]"},
			wantNames:  []string{"db", "web2"},
		},
		{
			name:       "fixed",
			change:     func(t *testing.T) { writePolicy(t, db, watchedPolicy("db")) },
			wantReload: true,
			wantLog:    []string{`msg="policies reloaded"`, `policies="[db extra web2]"`},
			wantSet:    true,
			wantNames:  []string{"db", "extra", "web2"},
		},
		{
			name:      "non-policy file added to the directory",
			change:    func(t *testing.T) { writePolicy(t, filepath.Join(polDir, "notes.txt"), "not a policy") },
			wantNames: []string{"db", "extra", "web2"},
		},
		{
			name:       "file removed from the directory",
			change:     func(t *testing.T) { os.Remove(extra) },
			wantReload: true,
			wantLog:    []string{`msg="policies reloaded"`, "changed=[" + extra + "]", `policies="[db web2]"`},
			wantSet:    true,
			wantNames:  []string{"db", "web2"},
		},
		{
			name: "touched, same content",
			change: func(t *testing.T) {
				later := time.Now().Add(time.Hour)
				if err := os.Chtimes(web, later, later); err != nil {
					t.Fatal(err)
				}
			},
			wantReload: true,
			wantLog:    []string{`msg="policies unchanged"`},
			wantSet:    true,
			wantNames:  []string{"db", "web2"},
		},
		{
			name:       "listed file removed",
			change:     func(t *testing.T) { os.Remove(db) },
			wantReload: true,
			wantLog:    []string{`msg="policy reload refused; the previous policies keep serving"`, "changed=[" + db + "]", "no such file"},
			wantNames:  []string{"db", "web2"},
		},
	}
	for _, st := range steps {
		// Not t.Run subtests: each step depends on the ones before.
		logs.take()
		before := len(installed)
		st.change(t)
		if got := pr.poll(nil); got != st.wantReload {
			t.Fatalf("%s: poll reloaded = %v, want %v", st.name, got, st.wantReload)
		}
		logged := logs.take()
		if len(st.wantLog) == 0 && logged != "" {
			t.Errorf("%s: logged %q, want nothing", st.name, logged)
		}
		for _, w := range st.wantLog {
			if !strings.Contains(logged, w) {
				t.Errorf("%s: log %q does not contain %q", st.name, logged, w)
			}
		}
		if got := len(installed) - before; got != map[bool]int{false: 0, true: 1}[st.wantSet] {
			t.Fatalf("%s: %d sets installed, want set installed = %v", st.name, got, st.wantSet)
		}
		if st.wantSet {
			serving = installed[len(installed)-1].Hash()
		}
		if pr.hash != serving {
			t.Errorf("%s: reloader's hash %s, serving %s", st.name, pr.hash, serving)
		}
		var names []string
		if len(installed) == 0 {
			names = first.Names()
		} else {
			names = installed[len(installed)-1].Names()
		}
		if strings.Join(names, " ") != strings.Join(st.wantNames, " ") {
			t.Errorf("%s: serving policies %v, want %v", st.name, names, st.wantNames)
		}
	}
}

// TestPolicyWatcherSettles checks that a file still changing during the
// settle delay is not loaded half written: that poll skips it, the next one
// reloads.
func TestPolicyWatcherSettles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.hcl")
	writePolicy(t, path, watchedPolicy("web"))
	pr := newPolicyReloader([]string{path}, slog.New(slog.DiscardHandler), nil)
	pr.settle = time.Millisecond
	installs := 0
	pr.install = func(*policies.Set) { installs++ }
	if _, err := pr.load(); err != nil {
		t.Fatal(err)
	}
	writes := 0
	real := pr.stat
	pr.stat = func(paths []string) fileStates {
		// Each look finds another version, as while a writer is busy.
		writes++
		writePolicy(t, path, watchedPolicy(fmt.Sprintf("web%d", writes)))
		return real(paths)
	}
	if pr.poll(nil) {
		t.Fatal("poll reloaded a file that changed during the settle delay")
	}
	pr.stat = real
	if !pr.poll(nil) || installs != 1 {
		t.Fatalf("the poll after the writer finished did not reload (%d installs)", installs)
	}
	if want := hashOf(t, path); pr.hash != want {
		t.Errorf("serving %s, want the last version %s", pr.hash, want)
	}
}

// TestStartWatchesPolicies runs the watcher in a started broker: a rewritten
// policy file is served within a few polls without a signal, a broken one is
// refused (the previous set keeps serving, ReloadPolicies returns the
// file:line error), and with polling disabled only ReloadPolicies reloads.
func TestStartWatchesPolicies(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
	}{
		{name: "polling", interval: 20 * time.Millisecond},
		{name: "polling disabled", interval: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "p.hcl")
			writePolicy(t, path, watchedPolicy("web"))
			var logs lockedBuffer
			r, err := Start(&Config{
				Listen:             "127.0.0.1:0",
				DataDir:            filepath.Join(dir, "data"),
				ServerNames:        []string{"127.0.0.1"},
				ChallengeTTL:       DefaultChallengeTTL,
				PolicyPaths:        []string{path},
				PolicyPollInterval: tc.interval,
				Verify:             verify.Opts{Trust: verify.Trust{EKHashes: []string{watchedEK}}},
			}, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Stop()
			serving := func() string { return r.Server.policies.Load().Hash() }
			// waitServing waits up to 5s for the server to serve hash.
			waitServing := func(hash string) bool {
				for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
					if serving() == hash {
						return true
					}
				}
				return false
			}
			initial := serving()

			writePolicy(t, path, watchedPolicy("web2"))
			next := hashOf(t, path)
			if tc.interval == 0 {
				time.Sleep(200 * time.Millisecond)
				if serving() != initial {
					t.Fatal("the policy changed with polling disabled")
				}
				if err := r.ReloadPolicies(); err != nil {
					t.Fatalf("ReloadPolicies: %v", err)
				}
			}
			if !waitServing(next) {
				t.Fatalf("serving %s, want the rewritten policy %s\n%s", serving(), next, logs.String())
			}

			writePolicy(t, path, brokenPolicy)
			if tc.interval > 0 {
				for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "policy reload refused"); time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("the broken policy was not refused within 5s\n%s", logs.String())
					}
				}
			}
			err = r.ReloadPolicies()
			if err == nil || !strings.Contains(err.Error(), path+":3:") {
				t.Fatalf("ReloadPolicies on a broken file = %v, want its file:line error", err)
			}
			if serving() != next {
				t.Errorf("serving %s after a refused reload, want the previous %s", serving(), next)
			}
			if n := strings.Count(logs.String(), "policies reloaded"); n != 1 {
				t.Errorf("logged %d reloads, want 1\n%s", n, logs.String())
			}
			r.Stop()
			select {
			case err := <-r.Done():
				if err != nil {
					t.Errorf("serving ended with %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Stop did not end serving")
			}
		})
	}
}
