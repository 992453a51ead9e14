package policies_test

import (
	"encoding/json"
	"testing"

	"github.com/keybroker/keybroker/policies"
)

// The fact groups of a node that sent no event log and no record of
// identities, with and without history, as Facts presented them before
// Evaluate shared them between evaluations.
const (
	wantNoEventLog   = `{"authorities":[],"bank":"","boot_apps":[],"boot_loader":"","db":[],"dbx":[],"events":[],"firmware_version":"","grub_commands":[],"kek":[],"kernel_cmdline":"","pk":[],"present":false,"problems":[],"secure_boot":false,"separators":[]}`
	wantNoIdentities = `{"boot_id":"","issued":[],"pcr":0,"present":false}`
	wantNoLabels     = `{"labels":{}}`
	wantNoHistory    = `{}`
	wantFirstSeen    = `{"ak_changed":false,"first_seen":true,"rebooted":false,"resets":0,"restarts":0}`
)

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestFactsOfANodeThatSentNothing holds the facts of a node without an
// event log, identity record, history or labels to what they were, byte for
// byte as JSON, both as Facts returns them and as Evaluate presents them.
func TestFactsOfANodeThatSentNothing(t *testing.T) {
	v := attest(t, node{pcrs: []int{0, 7}})
	withHistory, err := v.WithHistory(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := mustParse(t, `policy "p" {
  select { ek_hashes = ["`+ekHash(t)+`"] }
}`)
	for _, c := range []struct {
		name    string
		facts   map[string]any
		history string
	}{
		{"Facts", policies.Facts(v), wantNoHistory},
		{"Facts with history", policies.Facts(withHistory), wantFirstSeen},
		{"evaluated", policies.EvaluatedFacts(s, v), wantNoHistory},
		{"evaluated with history", policies.EvaluatedFacts(s, withHistory), wantFirstSeen},
	} {
		t.Run(c.name, func(t *testing.T) {
			for group, want := range map[string]string{
				"eventlog": wantNoEventLog, "identities": wantNoIdentities, "node": wantNoLabels, "history": c.history,
			} {
				if got := mustJSON(t, c.facts[group]); got != want {
					t.Errorf("%s facts = %s, want %s", group, got, want)
				}
			}
		})
	}
	// Evaluate presents exactly what Facts returns.
	if got, want := mustJSON(t, policies.EvaluatedFacts(s, withHistory)), mustJSON(t, policies.Facts(withHistory)); got != want {
		t.Errorf("evaluated facts = %s, want Facts' %s", got, want)
	}
	// Facts' maps are the caller's: changing them changes no evaluation.
	f := policies.Facts(v)
	f["eventlog"].(map[string]any)["present"] = true
	f["node"].(map[string]any)["labels"].(map[string]string)["role"] = "web"
	f["identities"].(map[string]any)["present"] = true
	f["history"].(map[string]any)["first_seen"] = true
	for group, want := range map[string]string{
		"eventlog": wantNoEventLog, "identities": wantNoIdentities, "node": wantNoLabels, "history": wantNoHistory,
	} {
		if got := mustJSON(t, policies.EvaluatedFacts(s, v)[group]); got != want {
			t.Errorf("after changing Facts' maps, evaluated %s facts = %s, want %s", group, got, want)
		}
	}
}

// TestEvaluateReadsEmptyFacts evaluates conditions on the empty groups of a
// node that sent nothing, and on the labels of a labelled one, which must
// not leak into the next node's evaluation.
func TestEvaluateReadsEmptyFacts(t *testing.T) {
	v, err := attest(t, node{pcrs: []int{7}}).WithHistory(nil)
	if err != nil {
		t.Fatal(err)
	}
	empty := `["!eventlog.present", "eventlog.pk == []", "size(eventlog.events) == 0", "eventlog.bank == ''",
    "!identities.present", "identities.issued == []", "node.labels == {}", "history.first_seen"]`
	s := mustParse(t, `policy "empty" {
  select { ek_hashes = ["`+ekHash(t)+`"] }
  require = `+empty+`
}`)
	for range 2 {
		if d := s.Evaluate(v); !d.Allowed {
			t.Fatalf("Evaluate denies a node that sent nothing: %v", d.Failures)
		}
	}
	labelled := mustParse(t, `node "`+ekHash(t)+`" {
  labels = { role = "web" }
}
policy "labelled" {
  select { labels = { role = "web" } }
  require = ["node.labels.role == 'web'", "!eventlog.present"]
}`)
	if d := labelled.Evaluate(v); !d.Allowed {
		t.Fatalf("Evaluate denies a labelled node: %v", d.Failures)
	}
	if d := s.Evaluate(v); !d.Allowed {
		t.Fatalf("after a labelled node, Evaluate denies a node without labels: %v", d.Failures)
	}
}
