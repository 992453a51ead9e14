package e2e

// The deployment manifests of deploy/kubernetes. They are rendered as
// kustomize renders them (the kustomizations use only resources and
// strategic merge patches, and the renderer refuses anything else), checked
// for what their README promises (the broker's broker.hcl loads with the
// broker's own loader and agrees with the ports, mounts and names around
// it; the agent touches /dev/tpmrm0 and nothing else under /dev, …), and
// every object is sent to a real kube-apiserver as a server-side dry run
// with strict field validation (kubernetes_dryrun_test.go). The variants'
// patches are applied by kube-apiserver itself to the base created in the
// cluster. The renderer is kustomize_test.go.

import (
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/policies"
)

// deployDir is the base kustomization, relative to this package.
const deployDir = "../deploy/kubernetes"

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

// brokerTree lays out, in a temporary directory standing for the pod's
// root, every volume the broker container mounts under /etc/keybroker, at
// its mount path: the ConfigMaps of the kustomization (patched), and for
// what the operator creates (README "Before you apply") or Kubernetes
// provides, files under the keys the README names. It returns the root and
// the path of --config in it.
func brokerTree(t *testing.T, r rendered, pod podSpec, c container) (root, config string) {
	t.Helper()
	dirs := t.TempDir()
	newCA := func(name string) *issue.CA {
		ca, err := issue.LoadOrCreateCA(filepath.Join(dirs, name), issue.CAOpts{CommonName: "e2e " + name})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	etcdCA, kubeletCA := newCA("etcd"), newCA("kubelet-clients")
	client, err := etcdCA.IssueTLS(issue.TLSTemplate{CommonName: "keybroker", Client: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kubeletKey := readFile(t, filepath.Join(dirs, "kubelet-clients", issue.CAKeyFile))
	outside := map[string]map[string]string{
		"ConfigMap keybroker-ek-roots": {"vendor.pem": string(newCA("ek-root").BundlePEM())},
		"Secret keybroker-etcd-client": {"ca.pem": string(etcdCA.BundlePEM()), "client.pem": string(client.CertificatePEM), "client-key.pem": string(client.KeyPEM)},
		"Secret keybroker-kubelet-ca":  {"ca.pem": string(kubeletCA.BundlePEM()), "ca-key.pem": string(kubeletKey)},
		"ConfigMap kube-root-ca.crt":   {"ca.crt": string(newCA("cluster").BundlePEM())},
	}
	data := func(kind, name string) map[string]string {
		if files, ok := outside[kind+" "+name]; ok {
			return files
		}
		if kind == "ConfigMap" {
			return configMapData(t, r.resolved(t, kind, name))
		}
		t.Fatalf("%s %s: nothing known to put there", kind, name)
		return nil
	}
	root = t.TempDir()
	for _, m := range c.VolumeMounts {
		if !strings.HasPrefix(m.MountPath, "/etc/keybroker/") {
			continue
		}
		v := pod.volume(t, m.Name)
		files := map[string]string{}
		switch {
		case v.ConfigMap != nil:
			files = data("ConfigMap", v.ConfigMap.Name)
		case v.Secret != nil:
			files = data("Secret", v.Secret.SecretName)
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				switch {
				case src.ServiceAccountToken != nil:
					files[src.ServiceAccountToken.Path] = "e2e-service-account-token"
				case src.ConfigMap != nil:
					for _, it := range src.ConfigMap.Items {
						files[it.Path] = data("ConfigMap", src.ConfigMap.Name)[it.Key]
					}
				}
			}
		default:
			t.Fatalf("volume %s mounted at %s: nothing known to put there", m.Name, m.MountPath)
		}
		dst := filepath.Join(root, filepath.FromSlash(m.MountPath))
		if m.SubPath != "" {
			writeTreeFile(t, dst, files[m.SubPath])
			continue
		}
		for name, content := range files {
			writeTreeFile(t, filepath.Join(dst, name), content)
		}
	}
	return root, filepath.Join(root, filepath.FromSlash(flagValue(t, c.Args, "config")))
}

func writeTreeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, content)
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

// loadBrokerConfig loads the broker.hcl of r's broker Deployment as its
// container sees it (see brokerTree), with its policies checked against it
// as the broker does at start. Paths in the configuration are under root.
func loadBrokerConfig(t *testing.T, r rendered) (cfg *broker.Config, root string) {
	t.Helper()
	pod, c := brokerPod(t, r)
	root, file := brokerTree(t, r, pod, c)
	cfg, err := broker.LoadConfig(file)
	if err != nil {
		t.Fatalf("the manifests' broker.hcl does not load where the pod mounts it: %v", err)
	}
	set, err := policies.Load(cfg.PolicyPaths...)
	if err != nil {
		t.Fatalf("the manifests' policies do not load: %v", err)
	}
	if err := cfg.CheckPolicies(set); err != nil {
		t.Fatalf("the manifests' policies do not check against broker.hcl: %v", err)
	}
	return cfg, root
}

// inPod maps a path of the temporary tree back to the pod's.
func inPod(t *testing.T, root, p string) string {
	t.Helper()
	rel, err := filepath.Rel(root, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("%s is outside the pod's tree %s", p, root)
	}
	return "/" + filepath.ToSlash(rel)
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

// brokerPod returns the broker Deployment's pod (patched) and its one
// container.
func brokerPod(t *testing.T, r rendered) (podSpec, container) {
	t.Helper()
	var dep workload
	r.resolved(t, "Deployment", "keybroker").into(t, &dep)
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("broker pod has %d containers and %d init containers, want 1 and 0", len(pod.Containers), len(pod.InitContainers))
	}
	return pod, pod.Containers[0]
}

// TestKubernetesManifestsBroker checks the base's broker Deployment (etcd,
// several replicas) against the broker.hcl it runs (the variants:
// kubernetes_variants_test.go).
func TestKubernetesManifestsBroker(t *testing.T) {
	base := renderKustomization(t, deployDir)
	var dep workload
	base.find(t, "Deployment", "keybroker").into(t, &dep)
	pod, c := brokerPod(t, base)
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

	cfg, root := loadBrokerConfig(t, base)
	if cfg.Store.Kind != broker.StoreEtcd || dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("base: store %s with %v replicas, want etcd with at least 2", cfg.Store.Kind, dep.Spec.Replicas)
	}
	// broker.hcl is where --config says, from the ConfigMap (loading it
	// from the tree of mounts proves that; this says so when it is not).
	if m, want := c.mount(t, pod.volumeOf(t, "ConfigMap", "keybroker-config")), flagValue(t, c.Args, "config"); m.MountPath != want || m.SubPath != "broker.hcl" {
		t.Errorf("broker.hcl mounted at %s (subPath %s), want --config %s", m.MountPath, m.SubPath, want)
	}
	if m := c.mount(t, pod.volumeOf(t, "ConfigMap", "keybroker-policies")); len(cfg.PolicyPaths) != 1 || inPod(t, root, cfg.PolicyPaths[0]) != m.MountPath {
		t.Errorf("policies %q, want the ConfigMap's mount %s", cfg.PolicyPaths, m.MountPath)
	}
	if len(cfg.Verify.Trust.CAs) != 1 {
		t.Errorf("ek_ca blocks %d, want the one reading the ConfigMap keybroker-ek-roots", len(cfg.Verify.Trust.CAs))
	}
	etcdMount := c.mount(t, pod.volumeOf(t, "Secret", "keybroker-etcd-client")).MountPath
	for _, f := range []string{cfg.Store.CACert, cfg.Store.Cert, cfg.Store.Key} {
		if p := inPod(t, root, f); path.Dir(p) != etcdMount {
			t.Errorf("etcd file %s is not in the Secret's mount %s", p, etcdMount)
		}
	}
	wantBrokerPod(t, base, cfg, c, pod)
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
	if ca := flagValue(t, args, "ca"); ca != path.Join(caMount.MountPath, "ca.pem") || !caMount.ReadOnly {
		t.Errorf("--ca %s, want ca.pem of the read-only ConfigMap mount %s", ca, caMount.MountPath)
	}
	svc, port := kubeBrokerService(t, base)
	host, p, err := net.SplitHostPort(flagValue(t, args, "broker"))
	if err != nil || host != svc.Metadata.Name+"."+svc.Metadata.Namespace+".svc" || p != strconv.Itoa(port) {
		t.Errorf("--broker %s:%s, want the Service %s.%s.svc:%d", host, p, svc.Metadata.Name, svc.Metadata.Namespace, port)
	}
	_, bc := brokerPod(t, base)
	cfg, _ := loadBrokerConfig(t, base)
	if !slices.Contains(cfg.ServerNames, host) {
		t.Errorf("--broker host %s is not in the broker's server_names %q", host, cfg.ServerNames)
	}

	// Every flag passed is one of the commands' flags.
	t.Run("flags", func(t *testing.T) {
		skipUnlessE2E(t)
		brokerBin, agentBin := binaries(t)
		wantFlags(t, agentBin, c.Command, args)
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
