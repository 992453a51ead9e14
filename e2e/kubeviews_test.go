package e2e

// Typed views of Kubernetes objects for the manifest tests: the fields the
// checks read, and lookups that fail the test when a field is missing.

import (
	"strings"
	"testing"
)

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
		Projected *struct {
			Sources []struct {
				ServiceAccountToken *struct {
					Path string `json:"path"`
				} `json:"serviceAccountToken"`
				ConfigMap *struct {
					Name  string `json:"name"`
					Items []struct {
						Key  string `json:"key"`
						Path string `json:"path"`
					} `json:"items"`
				} `json:"configMap"`
			} `json:"sources"`
		} `json:"projected"`
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
