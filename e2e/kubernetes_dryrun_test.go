package e2e

// The manifests of deploy/kubernetes against a real kube-apiserver: server-
// side dry runs with strict field validation (see kubernetes_deploy_test.go
// for the checks that need no cluster).

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// kubeReply is kube-apiserver's answer: status, warnings, body.
type kubeReply struct {
	code     int
	warnings []string
	body     []byte
}

// send sends body (JSON, or a patch of contentType) as the admin and
// returns the answer with its Warning headers.
func (k *kubeCluster) send(t *testing.T, method, p, contentType string, body []byte) kubeReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, k.url+p, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	resp, err := k.admin.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, p, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s: %v", method, p, err)
	}
	return kubeReply{code: resp.StatusCode, warnings: resp.Header.Values("Warning"), body: out}
}

// kubeResources are the API paths of the kinds the manifests use.
var kubeResources = map[string]struct {
	resource   string
	namespaced bool
}{
	"Namespace":             {"namespaces", false},
	"ServiceAccount":        {"serviceaccounts", true},
	"ConfigMap":             {"configmaps", true},
	"Service":               {"services", true},
	"PersistentVolumeClaim": {"persistentvolumeclaims", true},
	"Deployment":            {"deployments", true},
	"DaemonSet":             {"daemonsets", true},
	"PodDisruptionBudget":   {"poddisruptionbudgets", true},
	"NetworkPolicy":         {"networkpolicies", true},
	"ClusterRole":           {"clusterroles", false},
	"ClusterRoleBinding":    {"clusterrolebindings", false},
}

// collectionPath is where objects like o are created.
func collectionPath(t *testing.T, o kubeObject) string {
	t.Helper()
	r, ok := kubeResources[o.kind()]
	if !ok {
		t.Fatalf("%s: kind unknown to this test; add it to kubeResources", o.id())
	}
	api, _ := o["apiVersion"].(string)
	p := "/apis/" + api
	if api == "v1" {
		p = "/api/v1"
	}
	if r.namespaced {
		if o.meta("namespace") == "" {
			t.Fatalf("%s has no namespace", o.id())
		}
		p += "/namespaces/" + o.meta("namespace")
	}
	return p + "/" + r.resource
}

const dryRunStrict = "?dryRun=All&fieldValidation=Strict"

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withField returns a deep copy of o with value set at the path of keys.
func withField(t *testing.T, o kubeObject, value any, keys ...string) kubeObject {
	t.Helper()
	var c kubeObject
	if err := json.Unmarshal(mustJSON(t, o), &c); err != nil {
		t.Fatal(err)
	}
	var m map[string]any = c
	for _, k := range keys[:len(keys)-1] {
		switch next := m[k].(type) {
		case map[string]any:
			m = next
		case []any:
			m = next[0].(map[string]any) // the first element of a list
		default:
			t.Fatalf("%s: no %s on the way to %q", o.id(), k, keys)
		}
	}
	m[keys[len(keys)-1]] = value
	return c
}

// podSecurityWarnings returns the warnings of Pod Security admission.
func podSecurityWarnings(r kubeReply) []string {
	var out []string
	for _, w := range r.warnings {
		if strings.Contains(w, "PodSecurity") {
			out = append(out, w)
		}
	}
	return out
}

// TestKubernetesManifestsDryRun sends every object of the base to a real
// kube-apiserver with dryRun=All and fieldValidation=Strict (the
// namespaces are created for real), checks that copies with an unknown or
// misspelled field are refused, that Pod Security admission finds nothing
// in the broker's pods under "restricted" and only the documented host
// access in the agent's, and has kube-apiserver apply each variant's
// patches to the base.
func TestKubernetesManifestsDryRun(t *testing.T) {
	k := startKube(t)
	base := renderKustomization(t, deployDir)

	for _, o := range base.objects {
		if o.kind() != "Namespace" {
			continue
		}
		if r := k.send(t, http.MethodPost, collectionPath(t, o), "application/json", mustJSON(t, o)); r.code != http.StatusCreated {
			t.Fatalf("create %s: %d %s", o.id(), r.code, r.body)
		}
	}
	for _, o := range base.objects {
		if o.kind() == "Namespace" {
			continue
		}
		r := k.send(t, http.MethodPost, collectionPath(t, o)+dryRunStrict, "application/json", mustJSON(t, o))
		if r.code != http.StatusCreated {
			t.Errorf("dry run of %s: %d %s", o.id(), r.code, r.body)
			continue
		}
		ps := podSecurityWarnings(r)
		switch {
		case o.kind() == "DaemonSet":
			wantAgentPodSecurity(t, ps)
		case len(ps) > 0:
			t.Errorf("%s: Pod Security warnings %q", o.id(), ps)
		}
		// The same object with a field the API does not have is refused.
		bad := withField(t, o, true, "unknownField")
		if r := k.send(t, http.MethodPost, collectionPath(t, o)+dryRunStrict, "application/json", mustJSON(t, bad)); r.code != http.StatusBadRequest && r.code != http.StatusUnprocessableEntity {
			t.Errorf("dry run of %s with an unknown field: %d %s, want 400 or 422", o.id(), r.code, r.body)
		}
	}

	dep := base.find(t, "Deployment", "keybroker")
	// A misspelling deep in the pod template is refused, naming it.
	typo := withField(t, dep, true, "spec", "template", "spec", "containers", "securityContext", "readOnlyRootFileSystem")
	if r := k.send(t, http.MethodPost, collectionPath(t, dep)+dryRunStrict, "application/json", mustJSON(t, typo)); r.code != http.StatusBadRequest ||
		!strings.Contains(string(r.body), "readOnlyRootFileSystem") {
		t.Errorf("dry run with readOnlyRootFileSystem: %d %s, want 400 naming the field", r.code, r.body)
	}
	// Pod Security admission does look at the broker's pods: one that may
	// escalate is reported.
	escalating := withField(t, dep, true, "spec", "template", "spec", "containers", "securityContext", "allowPrivilegeEscalation")
	if r := k.send(t, http.MethodPost, collectionPath(t, dep)+dryRunStrict, "application/json", mustJSON(t, escalating)); r.code != http.StatusCreated ||
		!slices.ContainsFunc(podSecurityWarnings(r), func(w string) bool { return strings.Contains(w, "allowPrivilegeEscalation") }) {
		t.Errorf("dry run with allowPrivilegeEscalation: %d, warnings %q, want a Pod Security warning", r.code, r.warnings)
	}
	// A wrong value is refused too: a host path type that does not exist.
	ds := base.find(t, "DaemonSet", "keybroker-agent")
	badType := withField(t, ds, "CharDev", "spec", "template", "spec", "volumes", "hostPath", "type")
	if r := k.send(t, http.MethodPost, collectionPath(t, ds)+dryRunStrict, "application/json", mustJSON(t, badType)); r.code != http.StatusUnprocessableEntity {
		t.Errorf("dry run with hostPath type CharDev: %d %s, want 422", r.code, r.body)
	}

	created := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(variantDirs)) {
		t.Run(name, func(t *testing.T) { dryRunVariant(t, k, base, variantDirs[name], created) })
	}
}

// wantAgentPodSecurity checks that "restricted" objects to the agent's pod
// only for what README.md documents: its host paths, the host PID
// namespace, running as root.
func wantAgentPodSecurity(t *testing.T, warnings []string) {
	t.Helper()
	if len(warnings) == 0 {
		t.Error("agent DaemonSet: no Pod Security warning; the agent namespace warns at restricted")
	}
	all := strings.Join(warnings, "\n")
	for _, want := range []string{"host namespaces (hostPID=true)", "use restricted volume type", "hostPath", "runAsNonRoot != true", "runAsUser=0"} {
		if !strings.Contains(all, want) {
			t.Errorf("agent DaemonSet: Pod Security warnings %q lack %q", warnings, want)
		}
	}
	for _, never := range []string{"privileged", "allowPrivilegeEscalation", "unrestricted capabilities", "seccompProfile", "hostNetwork", "hostIPC", "hostPort"} {
		if strings.Contains(all, never) {
			t.Errorf("agent DaemonSet: Pod Security warns about %s: %q", never, warnings)
		}
	}
}

// dryRunVariant has kube-apiserver apply a variant's strategic merge
// patches, as a dry run, to the base objects (created for real once), and
// checks that the result is what the offline checks saw (strategicMerge):
// replicas, strategy, volumes, mounts, ConfigMap data. The variant's own
// objects are dry-run like the base's.
func dryRunVariant(t *testing.T, k *kubeCluster, base rendered, dir string, created map[string]bool) {
	v := renderKustomization(t, dir)
	for _, pt := range v.patches {
		o := base.find(t, pt.kind(), pt.meta("name"))
		if created[o.id()] {
			continue
		}
		if r := k.send(t, http.MethodPost, collectionPath(t, o), "application/json", mustJSON(t, o)); r.code != http.StatusCreated {
			t.Fatalf("create %s: %d %s", o.id(), r.code, r.body)
		}
		created[o.id()] = true
	}
	const smp = "application/strategic-merge-patch+json"
	for _, pt := range v.patches {
		p := collectionPath(t, pt) + "/" + pt.meta("name") + dryRunStrict
		r := k.send(t, http.MethodPatch, p, smp, mustJSON(t, pt))
		if r.code != http.StatusOK {
			t.Errorf("dry-run patch of %s: %d %s", pt.id(), r.code, r.body)
			continue
		}
		if ps := podSecurityWarnings(r); len(ps) > 0 {
			t.Errorf("patched %s: Pod Security warnings %q", pt.id(), ps)
		}
		var server kubeObject
		if err := json.Unmarshal(r.body, &server); err != nil {
			t.Fatal(err)
		}
		wantSameResult(t, pt.id(), server, v.resolved(t, pt.kind(), pt.meta("name")))
		bad := withField(t, pt, true, "unknownField")
		if r := k.send(t, http.MethodPatch, p, smp, mustJSON(t, bad)); r.code != http.StatusBadRequest && r.code != http.StatusUnprocessableEntity {
			t.Errorf("dry-run patch of %s with an unknown field: %d %s, want 400 or 422", pt.id(), r.code, r.body)
		}
	}
	for _, o := range v.objects {
		if slices.ContainsFunc(base.objects, func(b kubeObject) bool { return b.id() == o.id() }) {
			continue
		}
		r := k.send(t, http.MethodPost, collectionPath(t, o)+dryRunStrict, "application/json", mustJSON(t, o))
		if r.code != http.StatusCreated {
			t.Errorf("dry run of %s: %d %s", o.id(), r.code, r.body)
		}
		bad := withField(t, o, true, "unknownField")
		if r := k.send(t, http.MethodPost, collectionPath(t, o)+dryRunStrict, "application/json", mustJSON(t, bad)); r.code != http.StatusBadRequest && r.code != http.StatusUnprocessableEntity {
			t.Errorf("dry run of %s with an unknown field: %d %s, want 400 or 422", o.id(), r.code, r.body)
		}
	}
}

// patchSummary is what the checks read of a patched object, without the
// defaults kube-apiserver fills in.
type patchSummary struct {
	Replicas *int
	Strategy string
	Volumes  []string // name: source, sorted
	Mounts   []string // container volume path, sorted
	Data     map[string]string
}

func summarize(t *testing.T, o kubeObject) patchSummary {
	t.Helper()
	if o.kind() == "ConfigMap" {
		return patchSummary{Data: configMapData(t, o)}
	}
	var w workload
	o.into(t, &w)
	s := patchSummary{Replicas: w.Spec.Replicas, Strategy: w.Spec.Strategy.Type}
	for _, v := range w.Spec.Template.Spec.Volumes {
		var src string
		switch {
		case v.HostPath != nil:
			src = "hostPath " + v.HostPath.Path
		case v.Secret != nil:
			src = "secret " + v.Secret.SecretName
		case v.ConfigMap != nil:
			src = "configMap " + v.ConfigMap.Name
		case v.PersistentVolumeClaim != nil:
			src = "claim " + v.PersistentVolumeClaim.ClaimName
		case v.Projected != nil:
			src = "projected"
		case v.EmptyDir != nil:
			src = "emptyDir"
		}
		s.Volumes = append(s.Volumes, v.Name+": "+src)
	}
	for _, c := range w.Spec.Template.Spec.Containers {
		for _, m := range c.VolumeMounts {
			s.Mounts = append(s.Mounts, c.Name+" "+m.Name+" "+m.MountPath)
		}
	}
	// Where a merge puts new list entries differs and does not matter.
	slices.Sort(s.Volumes)
	slices.Sort(s.Mounts)
	return s
}

// wantSameResult compares kube-apiserver's patched object with
// strategicMerge's.
func wantSameResult(t *testing.T, id string, server, offline kubeObject) {
	t.Helper()
	got, want := summarize(t, server), summarize(t, offline)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("patched %s: kube-apiserver made\n%+v\nthe offline merge made\n%+v", id, got, want)
	}
}
