package e2e

// The deployment manifests of deploy/kubernetes. They are rendered as
// kustomize renders them (the kustomizations use only resources and
// strategic merge patches, and the renderer refuses anything else), checked
// for what their README promises (the broker's broker.hcl loads with the
// broker's own loader and agrees with the ports, mounts and names around
// it; the agent touches /dev/tpmrm0 and nothing else under /dev, …), and
// every object is sent to a real kube-apiserver as a server-side dry run
// with strict field validation. The variants' patches are applied by
// kube-apiserver itself to the base created in the cluster.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/policies"
)

// deployDir is the base kustomization, relative to this package.
const deployDir = "../deploy/kubernetes"

// boltVariant is the one-broker-on-bbolt overlay.
var boltVariant = filepath.Join(deployDir, "variants", "bolt")

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

func (r rendered) patch(t *testing.T, kind, name string) kubeObject {
	t.Helper()
	for _, o := range r.patches {
		if o.kind() == kind && o.meta("name") == name {
			return o
		}
	}
	t.Fatalf("the kustomization has no patch of %s %s", kind, name)
	return nil
}

// renderKustomization reads dir/kustomization.yaml and what it names. Only
// apiVersion, kind, resources (files and directories holding a
// kustomization) and patches (files of strategic merge patches) are
// understood; any other field fails the test, so that this stays what
// kustomize would render.
func renderKustomization(t *testing.T, dir string) rendered {
	t.Helper()
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
			base := renderKustomization(t, p)
			if len(base.patches) > 0 {
				t.Fatalf("%s: base %s has patches; apply them there is not rendered here", f, res)
			}
			for _, o := range base.objects {
				add(o, p)
			}
			continue
		}
		for _, o := range decodeManifests(t, p) {
			add(o, p)
		}
	}
	for _, pt := range k.Patches {
		docs := decodeManifests(t, filepath.Join(dir, pt.Path))
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

// Typed views of the fields the checks read (k8s.io/api is not a
// dependency of this module).
type (
	podTemplate struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec podSpec `json:"spec"`
	}
	podSpec struct {
		ServiceAccountName           string `json:"serviceAccountName"`
		AutomountServiceAccountToken *bool  `json:"automountServiceAccountToken"`
		HostNetwork                  bool   `json:"hostNetwork"`
		HostPID                      bool   `json:"hostPID"`
		HostIPC                      bool   `json:"hostIPC"`
		SecurityContext              struct {
			RunAsNonRoot *bool `json:"runAsNonRoot"`
			RunAsUser    *int  `json:"runAsUser"`
			FSGroup      *int  `json:"fsGroup"`
		} `json:"securityContext"`
		Containers     []container `json:"containers"`
		InitContainers []container `json:"initContainers"`
		Volumes        []volume    `json:"volumes"`
	}
	container struct {
		Name    string   `json:"name"`
		Command []string `json:"command"`
		Args    []string `json:"args"`
		Ports   []struct {
			Name          string `json:"name"`
			ContainerPort int    `json:"containerPort"`
		} `json:"ports"`
		SecurityContext struct {
			Privileged               *bool `json:"privileged"`
			AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
			RunAsNonRoot             *bool `json:"runAsNonRoot"`
			Capabilities             struct {
				Add  []string `json:"add"`
				Drop []string `json:"drop"`
			} `json:"capabilities"`
		} `json:"securityContext"`
		Resources struct {
			Requests map[string]string `json:"requests"`
			Limits   map[string]string `json:"limits"`
		} `json:"resources"`
		ReadinessProbe *probe        `json:"readinessProbe"`
		LivenessProbe  *probe        `json:"livenessProbe"`
		VolumeMounts   []volumeMount `json:"volumeMounts"`
	}
	probe struct {
		TCPSocket *struct {
			Port any `json:"port"`
		} `json:"tcpSocket"`
	}
	volumeMount struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
		SubPath   string `json:"subPath"`
		ReadOnly  bool   `json:"readOnly"`
	}
	volume struct {
		Name     string `json:"name"`
		HostPath *struct {
			Path string `json:"path"`
			Type string `json:"type"`
		} `json:"hostPath"`
		Secret *struct {
			SecretName string `json:"secretName"`
		} `json:"secret"`
		ConfigMap *struct {
			Name string `json:"name"`
		} `json:"configMap"`
		EmptyDir              map[string]any `json:"emptyDir"`
		PersistentVolumeClaim *struct {
			ClaimName string `json:"claimName"`
		} `json:"persistentVolumeClaim"`
	}
	workload struct {
		Spec struct {
			Replicas *int `json:"replicas"`
			Strategy struct {
				Type string `json:"type"`
			} `json:"strategy"`
			Template podTemplate `json:"template"`
		} `json:"spec"`
	}
	service struct {
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec struct {
			Selector map[string]string `json:"selector"`
			Ports    []struct {
				Name       string `json:"name"`
				Port       int    `json:"port"`
				TargetPort any    `json:"targetPort"`
			} `json:"ports"`
		} `json:"spec"`
	}
)

func (c container) port(t *testing.T, name string) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %s", c.Name, name)
	return 0
}

// mount returns the mount of the named volume.
func (c container) mount(t *testing.T, vol string) volumeMount {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.Name == vol {
			return m
		}
	}
	t.Fatalf("container %s does not mount volume %s", c.Name, vol)
	return volumeMount{}
}

// flag returns the value of --name in args (as --name=VALUE or --name VALUE).
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
	}
	t.Fatalf("args %q have no --%s", args, name)
	return ""
}

func (s podSpec) volume(t *testing.T, name string) volume {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("pod has no volume %s", name)
	return volume{}
}

// volumeOf returns the name of the volume whose source names the given
// Secret or ConfigMap.
func (s podSpec) volumeOf(t *testing.T, kind, name string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if (kind == "Secret" && v.Secret != nil && v.Secret.SecretName == name) ||
			(kind == "ConfigMap" && v.ConfigMap != nil && v.ConfigMap.Name == name) {
			return v.Name
		}
	}
	t.Fatalf("pod mounts no %s %s", kind, name)
	return ""
}

func isTrue(b *bool) bool { return b != nil && *b }

// wantHardened checks what every keybroker container promises: no
// privilege, no capability, no escalation, a read-only root file system,
// resources requested and memory bounded.
func wantHardened(t *testing.T, c container) {
	t.Helper()
	sc := c.SecurityContext
	if isTrue(sc.Privileged) {
		t.Errorf("container %s is privileged", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
	}
	if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("container %s: capabilities drop %q add %q, want drop [ALL] and nothing added", c.Name, sc.Capabilities.Drop, sc.Capabilities.Add)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("container %s: resources %+v, want cpu and memory requested and a memory limit", c.Name, c.Resources)
	}
}

// brokerTree lays out what the broker pod mounts under /etc/keybroker in a
// temporary directory (broker.hcl and the policies from the ConfigMaps, an
// EK root, etcd client files) and returns the path of broker.hcl there.
func brokerTree(t *testing.T, r rendered, brokerHCL string) string {
	t.Helper()
	etc := filepath.Join(t.TempDir(), "etc", "keybroker")
	for _, d := range []string{"policies", "ek-roots", "etcd"} {
		if err := os.MkdirAll(filepath.Join(etc, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(etc, "broker.hcl"), brokerHCL)
	for name, content := range configMapData(t, r.find(t, "ConfigMap", "keybroker-policies")) {
		writeFile(t, filepath.Join(etc, "policies", name), content)
	}
	root, err := issue.LoadOrCreateCA(filepath.Join(t.TempDir(), "ek-root"), issue.CAOpts{CommonName: "e2e EK vendor root"})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(etc, "ek-roots", "vendor.pem"), string(root.BundlePEM()))
	etcdCA, err := issue.LoadOrCreateCA(filepath.Join(t.TempDir(), "etcd-ca"), issue.CAOpts{CommonName: "e2e etcd"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := etcdCA.IssueTLS(issue.TLSTemplate{CommonName: "keybroker", Client: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(etc, "etcd", "ca.pem"), string(etcdCA.BundlePEM()))
	writeFile(t, filepath.Join(etc, "etcd", "client.pem"), string(client.CertificatePEM))
	writeFile(t, filepath.Join(etc, "etcd", "client-key.pem"), string(client.KeyPEM))
	return filepath.Join(etc, "broker.hcl")
}

func configMapData(t *testing.T, o kubeObject) map[string]string {
	t.Helper()
	var cm struct {
		Data map[string]string `json:"data"`
	}
	o.into(t, &cm)
	if len(cm.Data) == 0 {
		t.Fatalf("%s has no data", o.id())
	}
	return cm.Data
}

// loadBrokerConfig loads broker.hcl as the pod sees it, with its policies
// checked against it as the broker does at start.
func loadBrokerConfig(t *testing.T, r rendered, brokerHCL string) (*broker.Config, string) {
	t.Helper()
	file := brokerTree(t, r, brokerHCL)
	cfg, err := broker.LoadConfig(file)
	if err != nil {
		t.Fatalf("the manifests' broker.hcl does not load: %v", err)
	}
	set, err := policies.Load(cfg.PolicyPaths...)
	if err != nil {
		t.Fatalf("the manifests' policies do not load: %v", err)
	}
	if err := cfg.CheckPolicies(set); err != nil {
		t.Fatalf("the manifests' policies do not check against broker.hcl: %v", err)
	}
	return cfg, filepath.Dir(file)
}

// inPod maps a path of the temporary tree back to the pod's /etc/keybroker.
func inPod(t *testing.T, etc, p string) string {
	t.Helper()
	rel, err := filepath.Rel(etc, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("%s is outside /etc/keybroker", p)
	}
	return path.Join("/etc/keybroker", filepath.ToSlash(rel))
}

func listenPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// kubeBrokerService returns the broker's Service and the port agents dial.
func kubeBrokerService(t *testing.T, r rendered) (service, int) {
	t.Helper()
	var svc service
	r.find(t, "Service", "keybroker").into(t, &svc)
	for _, p := range svc.Spec.Ports {
		if p.Name == "grpc" {
			return svc, p.Port
		}
	}
	t.Fatal("Service keybroker has no grpc port")
	return svc, 0
}

// TestKubernetesManifestsBroker checks the broker's Deployment against the
// broker.hcl it runs, in the base (etcd, several replicas) and in the bolt
// variant (one replica, a PersistentVolumeClaim).
func TestKubernetesManifestsBroker(t *testing.T) {
	base := renderKustomization(t, deployDir)
	var dep workload
	base.find(t, "Deployment", "keybroker").into(t, &dep)
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("broker pod has %d containers and %d init containers, want 1 and 0", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	wantHardened(t, c)
	if !isTrue(pod.SecurityContext.RunAsNonRoot) || pod.SecurityContext.RunAsUser == nil || *pod.SecurityContext.RunAsUser == 0 {
		t.Errorf("broker pod: runAsNonRoot %v runAsUser %v, want a non-root user", pod.SecurityContext.RunAsNonRoot, pod.SecurityContext.RunAsUser)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("broker pod shares a host namespace (network %v, pid %v, ipc %v)", pod.HostNetwork, pod.HostPID, pod.HostIPC)
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			t.Errorf("broker pod mounts host path %s", v.HostPath.Path)
		}
	}
	wantNoAPIAccess(t, base, pod, "keybroker")

	cfg, etc := loadBrokerConfig(t, base, configMapData(t, base.find(t, "ConfigMap", "keybroker-config"))["broker.hcl"])
	if cfg.Store.Kind != broker.StoreEtcd || dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("base: store %s with %v replicas, want etcd with at least 2", cfg.Store.Kind, dep.Spec.Replicas)
	}
	// broker.hcl is where --config says, from the ConfigMap.
	if got, want := c.mount(t, pod.volumeOf(t, "ConfigMap", "keybroker-config")), (volumeMount{MountPath: flagValue(t, c.Args, "config"), SubPath: "broker.hcl"}); got.MountPath != want.MountPath || got.SubPath != want.SubPath {
		t.Errorf("broker.hcl mounted at %s (subPath %s), want --config %s", got.MountPath, got.SubPath, want.MountPath)
	}
	if m := c.mount(t, pod.volumeOf(t, "ConfigMap", "keybroker-policies")); len(cfg.PolicyPaths) != 1 || inPod(t, etc, cfg.PolicyPaths[0]) != m.MountPath {
		t.Errorf("policies %q, want the ConfigMap's mount %s", cfg.PolicyPaths, m.MountPath)
	}
	if m := c.mount(t, pod.volumeOf(t, "ConfigMap", "keybroker-ek-roots")); len(cfg.Verify.Trust.CAs) != 1 {
		t.Errorf("ek_ca blocks %d, want the one reading %s", len(cfg.Verify.Trust.CAs), m.MountPath)
	}
	etcdMount := c.mount(t, pod.volumeOf(t, "Secret", "keybroker-etcd-client")).MountPath
	for _, f := range []string{cfg.Store.CACert, cfg.Store.Cert, cfg.Store.Key} {
		if p := inPod(t, etc, f); path.Dir(p) != etcdMount {
			t.Errorf("etcd file %s is not in the Secret's mount %s", p, etcdMount)
		}
	}
	wantBrokerPod(t, base, cfg, c, pod)

	// The bolt variant: its own broker.hcl, one replica that stops before
	// the next opens store.db, data_dir on the claim it defines.
	bolt := renderKustomization(t, boltVariant)
	boltCfg, _ := loadBrokerConfig(t, bolt, configMapData(t, bolt.patch(t, "ConfigMap", "keybroker-config"))["broker.hcl"])
	if boltCfg.Store.Kind != broker.StoreBolt {
		t.Errorf("bolt variant: store %s", boltCfg.Store.Kind)
	}
	var patched workload
	bolt.patch(t, "Deployment", "keybroker").into(t, &patched)
	if patched.Spec.Replicas == nil || *patched.Spec.Replicas != 1 || patched.Spec.Strategy.Type != "Recreate" {
		t.Errorf("bolt variant: replicas %v strategy %q, want 1 and Recreate", patched.Spec.Replicas, patched.Spec.Strategy.Type)
	}
	claim := bolt.find(t, "PersistentVolumeClaim", "keybroker-data")
	if v := patched.Spec.Template.Spec.volume(t, "data"); v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != claim.meta("name") {
		t.Errorf("bolt variant: volume data %+v, want the claim %s", v, claim.meta("name"))
	}
	if boltCfg.DataDir != c.mount(t, "data").MountPath || boltCfg.Listen != cfg.Listen || boltCfg.MetricsListen != cfg.MetricsListen {
		t.Errorf("bolt variant: data_dir %s listen %s metrics %s, want the base Deployment's %s, %s, %s",
			boltCfg.DataDir, boltCfg.Listen, boltCfg.MetricsListen, c.mount(t, "data").MountPath, cfg.Listen, cfg.MetricsListen)
	}
}

// wantBrokerPod checks what broker.hcl and the pod around it must agree
// on: data_dir and the Secrets mounted into it, the ports, the Services,
// the probes, the name agents verify.
func wantBrokerPod(t *testing.T, r rendered, cfg *broker.Config, c container, pod podSpec) {
	t.Helper()
	if m := c.mount(t, "data"); m.MountPath != cfg.DataDir {
		t.Errorf("data volume at %s, data_dir is %s", m.MountPath, cfg.DataDir)
	}
	if m := c.mount(t, pod.volumeOf(t, "Secret", "keybroker-ca")); m.MountPath != path.Join(cfg.DataDir, broker.CADir) || !m.ReadOnly {
		t.Errorf("CA Secret at %s (read-only %v), want read-only at data_dir/%s", m.MountPath, m.ReadOnly, broker.CADir)
	}
	if cfg.TrustDomain.IsZero() {
		t.Error("broker.hcl has no spiffe block; the agents' run needs one")
	} else if m := c.mount(t, pod.volumeOf(t, "Secret", "keybroker-spiffe")); m.MountPath != path.Join(cfg.DataDir, broker.SPIFFEDir) || !m.ReadOnly {
		t.Errorf("SPIFFE Secret at %s (read-only %v), want read-only at data_dir/%s", m.MountPath, m.ReadOnly, broker.SPIFFEDir)
	}
	grpcPort := c.port(t, "grpc")
	if grpcPort != listenPort(t, cfg.Listen) {
		t.Errorf("container port grpc %d, broker listens on %s", grpcPort, cfg.Listen)
	}
	if cfg.MetricsListen == "" || c.port(t, "metrics") != listenPort(t, cfg.MetricsListen) {
		t.Errorf("container port metrics, broker metrics_listen %q", cfg.MetricsListen)
	}
	for _, p := range []*probe{c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.TCPSocket == nil || p.TCPSocket.Port != "grpc" {
			t.Errorf("probe %+v, want tcpSocket on port grpc", p)
		}
	}
	svc, _ := kubeBrokerService(t, r)
	var metrics service
	r.find(t, "Service", "keybroker-metrics").into(t, &metrics)
	for _, s := range []service{svc, metrics} {
		for k, v := range s.Spec.Selector {
			if got := podLabels(t, r, "Deployment", "keybroker")[k]; got != v {
				t.Errorf("Service %s selects %s=%s, the broker pods have %q", s.Metadata.Name, k, v, got)
			}
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort != p.Name {
				t.Errorf("Service %s port %s targets %v, want the container port named %s", s.Metadata.Name, p.Name, p.TargetPort, p.Name)
			}
			c.port(t, p.Name)
		}
	}
	if name := svc.Metadata.Name + "." + svc.Metadata.Namespace + ".svc"; !slices.Contains(cfg.ServerNames, name) {
		t.Errorf("server_names %q do not name the Service %s", cfg.ServerNames, name)
	}
}

func podLabels(t *testing.T, r rendered, kind, name string) map[string]string {
	t.Helper()
	var w workload
	r.find(t, kind, name).into(t, &w)
	return w.Spec.Template.Metadata.Labels
}

// wantNoAPIAccess checks that the pod's service account gets no token and
// that nothing in the manifests grants it a role.
func wantNoAPIAccess(t *testing.T, r rendered, pod podSpec, namespace string) {
	t.Helper()
	var sa struct {
		Automount *bool `json:"automountServiceAccountToken"`
	}
	r.find(t, "ServiceAccount", pod.ServiceAccountName).into(t, &sa)
	if sa.Automount == nil || *sa.Automount || pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("service account %s/%s: token automounted (account %v, pod %v)", namespace, pod.ServiceAccountName, sa.Automount, pod.AutomountServiceAccountToken)
	}
	for _, o := range r.objects {
		if strings.HasSuffix(o.kind(), "RoleBinding") {
			t.Errorf("%s: the broker and the agent call no Kubernetes API", o.id())
		}
	}
}

// TestKubernetesManifestsAgent checks the agent's DaemonSet: what it may
// touch on the node, that its flags exist and point at what it mounts, and
// that it dials the broker's Service by a name the broker's certificate
// carries.
func TestKubernetesManifestsAgent(t *testing.T) {
	base := renderKustomization(t, deployDir)
	var ds workload
	base.find(t, "DaemonSet", "keybroker-agent").into(t, &ds)
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("agent pod has %d containers and %d init containers, want 1 and 0", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	wantHardened(t, c)
	if pod.HostNetwork || pod.HostIPC {
		t.Errorf("agent pod: hostNetwork %v hostIPC %v, want neither", pod.HostNetwork, pod.HostIPC)
	}
	// The host's PID namespace, for SO_PEERCRED pids of other pods' callers.
	if !pod.HostPID {
		t.Error("agent pod: hostPID is off; callers in other pods would have no pid and be refused")
	}
	wantNoAPIAccess(t, base, pod, "keybroker-agent")

	// Host paths: exactly these, the device and the event log at the paths
	// its flags name, the event log read-only.
	args := c.Args
	want := map[string]struct{ typ, mountFlag string }{
		"/dev/tpmrm0": {"CharDevice", "tpm"},
		"/sys/kernel/security/tpm0/binary_bios_measurements": {"File", "event-log"},
		"/run/keybroker": {"DirectoryOrCreate", "workload-socket"},
	}
	var got []string
	for _, v := range pod.Volumes {
		if v.HostPath == nil {
			continue
		}
		got = append(got, v.HostPath.Path)
		if strings.HasPrefix(v.HostPath.Path, "/dev") && v.HostPath.Path != "/dev/tpmrm0" {
			t.Errorf("agent mounts %s from /dev; only /dev/tpmrm0", v.HostPath.Path)
		}
		w, ok := want[v.HostPath.Path]
		if !ok {
			t.Errorf("agent mounts host path %s", v.HostPath.Path)
			continue
		}
		if v.HostPath.Type != w.typ {
			t.Errorf("host path %s has type %q, want %q", v.HostPath.Path, v.HostPath.Type, w.typ)
		}
		m := c.mount(t, v.Name)
		target := flagValue(t, args, w.mountFlag)
		if w.mountFlag == "workload-socket" {
			target = path.Dir(target)
		}
		if m.MountPath != target {
			t.Errorf("host path %s mounted at %s, --%s names %s", v.HostPath.Path, m.MountPath, w.mountFlag, target)
		}
		if w.mountFlag == "event-log" && !m.ReadOnly {
			t.Errorf("the event log is mounted writable")
		}
	}
	if len(got) != len(want) {
		t.Errorf("agent host paths %q, want exactly %d", got, len(want))
	}
	// The device through the device plugin's resource (the device cgroup),
	// not privileged.
	if c.Resources.Limits["squat.ai/tpmrm0"] != "1" {
		t.Errorf("agent limits %v, want squat.ai/tpmrm0: 1", c.Resources.Limits)
	}

	// --ca in the broker CA ConfigMap's mount; --broker the Service, by a
	// name broker.hcl puts in the certificate.
	caMount := c.mount(t, pod.volumeOf(t, "ConfigMap", "keybroker-broker-ca"))
	if ca := flagValue(t, args, "ca"); path.Dir(ca) != caMount.MountPath || !caMount.ReadOnly {
		t.Errorf("--ca %s, want a file of the read-only ConfigMap mount %s", ca, caMount.MountPath)
	}
	svc, port := kubeBrokerService(t, base)
	host, p, err := net.SplitHostPort(flagValue(t, args, "broker"))
	if err != nil || host != svc.Metadata.Name+"."+svc.Metadata.Namespace+".svc" || p != strconv.Itoa(port) {
		t.Errorf("--broker %s:%s, want the Service %s.%s.svc:%d", host, p, svc.Metadata.Name, svc.Metadata.Namespace, port)
	}
	cfg, _ := loadBrokerConfig(t, base, configMapData(t, base.find(t, "ConfigMap", "keybroker-config"))["broker.hcl"])
	if !slices.Contains(cfg.ServerNames, host) {
		t.Errorf("--broker host %s is not in the broker's server_names %q", host, cfg.ServerNames)
	}

	// Every flag passed is one of the commands' flags.
	t.Run("flags", func(t *testing.T) {
		skipUnlessE2E(t)
		brokerBin, agentBin := binaries(t)
		wantFlags(t, agentBin, c.Command, args)
		var dep workload
		base.find(t, "Deployment", "keybroker").into(t, &dep)
		bc := dep.Spec.Template.Spec.Containers[0]
		wantFlags(t, brokerBin, bc.Command, bc.Args)
	})
}

// wantFlags checks that each --flag of args is in the --help of command
// (the image's binary path and its subcommand) run with bin.
func wantFlags(t *testing.T, bin string, command, args []string) {
	t.Helper()
	if len(command) != 2 {
		t.Fatalf("command %q, want the binary and its subcommand", command)
	}
	help := run(t, bin, command[1], "--help")
	wantExit(t, help, 0)
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(a, "=")
		if !strings.Contains(help.stdout, name+" ") {
			t.Errorf("%s %s has no flag %s", filepath.Base(bin), command[1], name)
		}
	}
}

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
// access in the agent's, and has kube-apiserver apply the bolt variant's
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

	t.Run("bolt variant", func(t *testing.T) { dryRunBoltVariant(t, k, base) })
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

// dryRunBoltVariant creates the objects the bolt variant patches for real
// and has kube-apiserver apply its strategic merge patches as a dry run.
func dryRunBoltVariant(t *testing.T, k *kubeCluster, base rendered) {
	bolt := renderKustomization(t, boltVariant)
	for _, pt := range bolt.patches {
		o := base.find(t, pt.kind(), pt.meta("name"))
		if r := k.send(t, http.MethodPost, collectionPath(t, o), "application/json", mustJSON(t, o)); r.code != http.StatusCreated {
			t.Fatalf("create %s: %d %s", o.id(), r.code, r.body)
		}
	}
	const smp = "application/strategic-merge-patch+json"
	var patched workload
	for _, pt := range bolt.patches {
		p := collectionPath(t, pt) + "/" + pt.meta("name") + dryRunStrict
		r := k.send(t, http.MethodPatch, p, smp, mustJSON(t, pt))
		if r.code != http.StatusOK {
			t.Errorf("dry-run patch of %s: %d %s", pt.id(), r.code, r.body)
			continue
		}
		if pt.kind() == "Deployment" {
			if err := json.Unmarshal(r.body, &patched); err != nil {
				t.Fatal(err)
			}
			if ps := podSecurityWarnings(r); len(ps) > 0 {
				t.Errorf("patched Deployment: Pod Security warnings %q", ps)
			}
		}
		bad := withField(t, pt, true, "unknownField")
		if r := k.send(t, http.MethodPatch, p, smp, mustJSON(t, bad)); r.code != http.StatusBadRequest && r.code != http.StatusUnprocessableEntity {
			t.Errorf("dry-run patch of %s with an unknown field: %d %s, want 400 or 422", pt.id(), r.code, r.body)
		}
	}
	pod := patched.Spec.Template.Spec
	if patched.Spec.Replicas == nil || *patched.Spec.Replicas != 1 || patched.Spec.Strategy.Type != "Recreate" {
		t.Errorf("patched Deployment: replicas %v strategy %q, want 1 and Recreate", patched.Spec.Replicas, patched.Spec.Strategy.Type)
	}
	if v := pod.volume(t, "data"); v.PersistentVolumeClaim == nil || v.EmptyDir != nil {
		t.Errorf("patched Deployment: volume data %+v, want only the claim", v)
	}
	for _, v := range pod.Volumes {
		if v.Name == "etcd-client" {
			t.Error("patched Deployment still has the etcd-client volume")
		}
	}
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.Name == "etcd-client" {
			t.Error("patched Deployment still mounts etcd-client")
		}
	}
	for _, o := range bolt.objects {
		if o.kind() != "PersistentVolumeClaim" {
			continue
		}
		if r := k.send(t, http.MethodPost, collectionPath(t, o)+dryRunStrict, "application/json", mustJSON(t, o)); r.code != http.StatusCreated {
			t.Errorf("dry run of %s: %d %s", o.id(), r.code, r.body)
		}
	}
}
