package e2e

// The variants of deploy/kubernetes: each is the base with strategic merge
// patches (applied here by strategicMerge, and by kube-apiserver in
// TestKubernetesManifestsDryRun, which compares the two).

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker"
)

// variantDirs are the overlays of the base.
var variantDirs = map[string]string{
	"bolt":    filepath.Join(deployDir, "variants", "bolt"),
	"kubelet": filepath.Join(deployDir, "variants", "kubelet"),
}

// TestKubernetesManifestsVariants checks each variant's broker as the base's
// is checked (its broker.hcl loads where the patched pod mounts it and
// agrees with it), and what the variant is for.
func TestKubernetesManifestsVariants(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		// One replica that stops before the next opens store.db, data_dir
		// on the claim the variant defines, no etcd files.
		r := renderKustomization(t, variantDirs["bolt"])
		cfg := wantVariantBroker(t, r)
		if cfg.Store.Kind != broker.StoreBolt {
			t.Errorf("store %s, want bolt", cfg.Store.Kind)
		}
		var dep workload
		r.resolved(t, "Deployment", "keybroker").into(t, &dep)
		if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != "Recreate" {
			t.Errorf("replicas %v strategy %q, want 1 and Recreate", dep.Spec.Replicas, dep.Spec.Strategy.Type)
		}
		pod := dep.Spec.Template.Spec
		claim := r.find(t, "PersistentVolumeClaim", "keybroker-data")
		if v := pod.volume(t, "data"); v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != claim.meta("name") || v.EmptyDir != nil {
			t.Errorf("volume data %+v, want only the claim %s", v, claim.meta("name"))
		}
		if slices.ContainsFunc(pod.Volumes, func(v volume) bool { return v.Secret != nil && v.Secret.SecretName == "keybroker-etcd-client" }) {
			t.Error("the etcd client Secret is still a volume")
		}
		wantNoAPIAccess(t, r, pod, "keybroker")
	})

	t.Run("kubelet", func(t *testing.T) {
		// The kubernetes block with quarantine: its token from a projected
		// volume (still no automounted token), RBAC for exactly get and
		// update on nodes, bound to the broker's service account alone.
		r := renderKustomization(t, variantDirs["kubelet"])
		cfg := wantVariantBroker(t, r)
		if cfg.Kubernetes == nil || cfg.Kubernetes.API == nil {
			t.Fatalf("kubernetes %+v, want the block with the broker's own API client (token_file)", cfg.Kubernetes)
		}
		pod, _ := brokerPod(t, r)
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Error("the broker pod automounts its service account token")
		}
		wantQuarantineRBAC(t, r, pod.ServiceAccountName)
	})
}

// wantVariantBroker loads a variant's broker.hcl where its patched pod
// mounts it and checks the pod against it as the base's is checked.
func wantVariantBroker(t *testing.T, r rendered) *broker.Config {
	t.Helper()
	pod, c := brokerPod(t, r)
	wantHardened(t, c)
	cfg, _ := loadBrokerConfig(t, r)
	wantBrokerPod(t, r, cfg, c, pod)
	return cfg
}

// wantQuarantineRBAC checks that the only RBAC objects are one ClusterRole
// allowing get and update on nodes and one binding of it to the broker's
// service account.
func wantQuarantineRBAC(t *testing.T, r rendered, serviceAccount string) {
	t.Helper()
	var role struct {
		Rules []struct {
			APIGroups     []string `json:"apiGroups"`
			Resources     []string `json:"resources"`
			Verbs         []string `json:"verbs"`
			ResourceNames []string `json:"resourceNames"`
		} `json:"rules"`
	}
	roleObj := r.find(t, "ClusterRole", "keybroker-quarantine")
	roleObj.into(t, &role)
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, []string{""}) || !slices.Equal(role.Rules[0].Resources, []string{"nodes"}) ||
		!slices.Equal(role.Rules[0].Verbs, []string{"get", "update"}) || len(role.Rules[0].ResourceNames) > 0 {
		t.Errorf("ClusterRole keybroker-quarantine rules %+v, want get and update on nodes only", role.Rules)
	}
	var binding struct {
		RoleRef struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"roleRef"`
		Subjects []struct {
			Kind      string `json:"kind"`
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"subjects"`
	}
	r.find(t, "ClusterRoleBinding", "keybroker-quarantine").into(t, &binding)
	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != roleObj.meta("name") || len(binding.Subjects) != 1 ||
		binding.Subjects[0].Kind != "ServiceAccount" || binding.Subjects[0].Name != serviceAccount || binding.Subjects[0].Namespace != "keybroker" {
		t.Errorf("ClusterRoleBinding keybroker-quarantine %+v, want the ClusterRole for service account keybroker/%s alone", binding, serviceAccount)
	}
	var rbac []string
	for _, o := range r.objects {
		if strings.HasSuffix(o.kind(), "Role") || strings.HasSuffix(o.kind(), "RoleBinding") {
			rbac = append(rbac, o.id())
		}
	}
	if len(rbac) != 2 {
		t.Errorf("RBAC objects %q, want the ClusterRole and its binding only", rbac)
	}
}
