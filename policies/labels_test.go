package policies_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/policies"
)

func TestLabels(t *testing.T) {
	v := attest(t, node{pcrs: []int{0, 7}})
	other := strings.Repeat("ab", 32)
	src := fmt.Sprintf(`
node %q {
  labels = { role = "web", site = "fra1" }
}
node %q {
  labels = { role = "db" }
}
policy "web" {
  select { labels = { role = "web" } }
  require = ["node.labels.site == 'fra1'"]
  release "web-tls" {
    type        = "tls_certificate"
    common_name = "web"
  }
}
policy "db" {
  select { labels = { role = "db" } }
  release "db-tls" {
    type        = "tls_certificate"
    common_name = "db"
  }
}
`, v.EKHash(), other)
	set, err := policies.Parse([]byte(src), "labels.hcl")
	if err != nil {
		t.Fatal(err)
	}
	d := set.Evaluate(v)
	if !d.Allowed || len(d.Policies) != 1 || d.Policies[0] != "web" || len(d.Releases) != 1 || d.Releases[0].Name != "web-tls" {
		t.Fatalf("decision = %+v; want only the web policy by its labels", d)
	}

	// The same node with other labels: only a label condition fails.
	relabelled := strings.Replace(src, `site = "fra1"`, `site = "ams2"`, 1)
	set, err = policies.Parse([]byte(relabelled), "labels.hcl")
	if err != nil {
		t.Fatal(err)
	}
	d = set.Evaluate(v)
	if d.Allowed || !strings.Contains(strings.Join(d.Failures, "\n"), `require[0] node.labels.site == 'fra1' is false`) {
		t.Fatalf("decision = %+v; want a refusal naming the label condition", d)
	}

	// Without labels the node is not selected at all.
	unlabelled := strings.Replace(src, v.EKHash(), strings.Repeat("cd", 32), 1)
	set, err = policies.Parse([]byte(unlabelled), "labels.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if d := set.Evaluate(v); d.Allowed || d.Failures[0] != "no policy selects this node" {
		t.Fatalf("decision = %+v; want no selection", d)
	}
}

func TestLabelErrors(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	tests := []struct {
		name    string
		src     string
		wantErr string
	}{
		{"bad EK hash", `node "xyz" { labels = { a = "b" } }`, `p.hcl:1:6: node "xyz": the label must be an EK hash, 64 lowercase hex characters`},
		{"labels not a map", `node "` + hash + `" { labels = ["a"] }`, `labels must be a map of names to strings`},
		{"label value not a string", `node "` + hash + `" { labels = { a = 1 } }`, `label "a" must be a string`},
		{"labelled twice", `node "` + hash + `" { labels = { a = "b" } }` + "\n" + `node "` + hash + `" { labels = { a = "c" } }`, `is already labelled at p.hcl:1:6`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := policies.Parse([]byte(tc.src), "p.hcl")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Parse = %v; want %q", err, tc.wantErr)
			}
		})
	}
}
