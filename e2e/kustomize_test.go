package e2e

// A renderer of the kustomizations in deploy/kubernetes, for the manifest
// tests: resources (files, and directories holding a kustomization) and
// strategic merge patches, nothing else (typed views: kubeviews_test.go).

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// kubeObject is one manifest, as YAML decodes it.
type kubeObject map[string]any

func (o kubeObject) kind() string { s, _ := o["kind"].(string); return s }

func (o kubeObject) meta(field string) string {
	m, _ := o["metadata"].(map[string]any)
	s, _ := m[field].(string)
	return s
}

func (o kubeObject) id() string {
	return o.kind() + " " + path.Join(o.meta("namespace"), o.meta("name"))
}

// into converts the object into a typed view of it. encoding/json matches
// field names regardless of case, so a key spelled like one of the view's
// fields in another case (readOnlyRootFileSystem) fails the test here,
// rather than reading as the field it is not.
func (o kubeObject) into(t *testing.T, v any) {
	t.Helper()
	names := map[string]bool{}
	jsonNames(reflect.TypeOf(v), names, map[reflect.Type]bool{})
	walkKeys(o, func(k string) {
		if names[k] {
			return
		}
		for n := range names {
			if strings.EqualFold(n, k) {
				t.Errorf("%s: field %q is spelled %q", o.id(), n, k)
			}
		}
	})
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatalf("%s: %v", o.id(), err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", o.id(), err)
	}
}

// jsonNames collects the JSON field names of t and the types it holds.
func jsonNames(t reflect.Type, names map[string]bool, seen map[reflect.Type]bool) {
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Map:
		jsonNames(t.Elem(), names, seen)
	case reflect.Struct:
		if seen[t] {
			return
		}
		seen[t] = true
		for f := range t.Fields() {
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" {
				names[name] = true
			}
			jsonNames(f.Type, names, seen)
		}
	}
}

// walkKeys calls f with every map key in v, at any depth.
func walkKeys(v any, f func(string)) {
	switch v := v.(type) {
	case kubeObject:
		walkKeys(map[string]any(v), f)
	case map[string]any:
		for k, e := range v {
			f(k)
			walkKeys(e, f)
		}
	case []any:
		for _, e := range v {
			walkKeys(e, f)
		}
	}
}

// rendered is a kustomization: its objects (bases first, in resources
// order) and its strategic merge patches.
type rendered struct {
	objects []kubeObject
	patches []kubeObject
}

// find returns the object of that kind and name.
func (r rendered) find(t *testing.T, kind, name string) kubeObject {
	t.Helper()
	for _, o := range r.objects {
		if o.kind() == kind && o.meta("name") == name {
			return o
		}
	}
	t.Fatalf("the kustomization has no %s %s", kind, name)
	return nil
}

// resolved returns the object of that kind and name with the
// kustomization's patches of it applied (see strategicMerge).
func (r rendered) resolved(t *testing.T, kind, name string) kubeObject {
	t.Helper()
	o := r.find(t, kind, name)
	for _, p := range r.patches {
		if p.kind() == kind && p.meta("name") == name {
			o = strategicMerge(t, o, p)
		}
	}
	return o
}

// mergeKeys are the list merge keys of the fields the patches touch, as
// k8s.io/api declares them (patchMergeKey); other lists are replaced.
var mergeKeys = map[string]string{"containers": "name", "volumes": "name", "volumeMounts": "mountPath"}

// strategicMerge applies a strategic merge patch as far as the manifests
// need it, for the checks that run without kube-apiserver: maps merge, null
// deletes a key, lists in mergeKeys merge by their key and honour "$patch:
// delete", other lists are replaced. TestKubernetesManifestsDryRun has
// kube-apiserver apply the same patches and compares.
func strategicMerge(t *testing.T, o, patch kubeObject) kubeObject {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal(mustJSON(t, o), &c); err != nil {
		t.Fatal(err)
	}
	return mergeMap(c, map[string]any(patch))
}

func mergeMap(dst, patch map[string]any) map[string]any {
	for k, pv := range patch {
		switch pv := pv.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			d, _ := dst[k].(map[string]any)
			if d == nil {
				d = map[string]any{}
			}
			dst[k] = mergeMap(d, pv)
		case []any:
			key, ok := mergeKeys[k]
			d, _ := dst[k].([]any)
			if !ok {
				dst[k] = pv
				continue
			}
			dst[k] = mergeList(d, pv, key)
		default:
			dst[k] = pv
		}
	}
	return dst
}

func mergeList(dst, patch []any, key string) []any {
	for _, pe := range patch {
		pm, _ := pe.(map[string]any)
		i := slices.IndexFunc(dst, func(e any) bool { m, _ := e.(map[string]any); return m != nil && m[key] == pm[key] })
		if pm["$patch"] == "delete" {
			if i >= 0 {
				dst = slices.Delete(dst, i, i+1)
			}
			continue
		}
		if i < 0 {
			dst = append(dst, mergeMap(map[string]any{}, pm))
			continue
		}
		dst[i] = mergeMap(dst[i].(map[string]any), pm)
	}
	return dst
}

// renderKustomization reads dir/kustomization.yaml and what it names. Only
// apiVersion, kind, resources (files and directories holding a
// kustomization) and patches (files of strategic merge patches) are
// understood; any other field fails the test, so that this stays what
// kustomize would render. Like kustomize, it refuses a file outside the
// kustomization's directory and a base directory that holds a kustomization
// that led to it ("cycle detected": an overlay cannot live inside its base).
func renderKustomization(t *testing.T, dir string) rendered {
	t.Helper()
	return renderFrom(t, dir, nil)
}

func renderFrom(t *testing.T, dir string, visited []string) rendered {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range visited {
		if v == abs || strings.HasPrefix(v, abs+string(filepath.Separator)) {
			t.Fatalf("kustomize would refuse %s: cycle detected: candidate root %s contains visited root %s", dir, abs, v)
		}
	}
	visited = append(visited, abs)
	below := func(f, name string) string {
		p := filepath.Join(dir, name)
		if rel, err := filepath.Rel(dir, p); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			t.Fatalf("%s: file %s is not in or below %s, which kustomize refuses", f, name, dir)
		}
		return p
	}
	var k struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Resources  []string `yaml:"resources"`
		Patches    []struct {
			Path string `yaml:"path"`
		} `yaml:"patches"`
	}
	f := filepath.Join(dir, "kustomization.yaml")
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, f)))
	dec.KnownFields(true)
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("%s: %v (only apiVersion, kind, resources and patches with a path are rendered here)", f, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("%s: apiVersion %q kind %q, want a kustomize.config.k8s.io/v1beta1 Kustomization", f, k.APIVersion, k.Kind)
	}
	var r rendered
	seen := map[string]string{}
	add := func(o kubeObject, from string) {
		if prev, ok := seen[o.id()]; ok {
			t.Fatalf("%s in both %s and %s", o.id(), prev, from)
		}
		seen[o.id()] = from
		r.objects = append(r.objects, o)
	}
	for _, res := range k.Resources {
		p := filepath.Join(dir, res)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: resource %s: %v", f, res, err)
		}
		if fi.IsDir() {
			base := renderFrom(t, p, visited)
			if len(base.patches) > 0 {
				t.Fatalf("%s: base %s has patches; apply them there is not rendered here", f, res)
			}
			for _, o := range base.objects {
				add(o, p)
			}
			continue
		}
		for _, o := range decodeManifests(t, below(f, res)) {
			add(o, p)
		}
	}
	for _, pt := range k.Patches {
		docs := decodeManifests(t, below(f, pt.Path))
		if len(docs) != 1 {
			t.Fatalf("%s: patch %s holds %d documents, want 1", f, pt.Path, len(docs))
		}
		if _, ok := seen[docs[0].id()]; !ok {
			t.Fatalf("%s: patch %s is for %s, which no resource defines", f, pt.Path, docs[0].id())
		}
		r.patches = append(r.patches, docs[0])
	}
	return r
}

// decodeManifests reads the YAML documents of a manifest file.
func decodeManifests(t *testing.T, file string) []kubeObject {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, file)))
	var out []kubeObject
	for {
		// Into a plain map: yaml gives nested mappings the target's type.
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if m == nil {
			continue
		}
		o := kubeObject(m)
		if o.kind() == "" || o.meta("name") == "" {
			t.Fatalf("%s: a document without kind or metadata.name", file)
		}
		out = append(out, o)
	}
}
