package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/internal/atomicfile"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// The files Bootstrap writes for a kubelet credential.
const (
	// KubeletClientFile, in OutDir, holds the kubelet's client certificate,
	// its chain and its key (as kubelet-client-current.pem does), mode
	// 0600.
	KubeletClientFile = "kubelet-client.pem"
	// KubeconfigFile is the kubeconfig's name in OutDir unless
	// BootstrapOpts.Kubeconfig names another path; mode 0600.
	KubeconfigFile = "kubelet.kubeconfig"
	// BootstrapKubeconfigFile is the bootstrap kubeconfig's name in OutDir
	// (a bootstrap_token release) unless BootstrapOpts.BootstrapKubeconfig
	// names another path; mode 0600.
	BootstrapKubeconfigFile = "bootstrap-kubelet.kubeconfig"
)

// kubelet is an opened KUBELET credential.
type kubelet struct {
	cred  *pb.KubeletCredential
	mode  pb.ReleaseMode
	files []atomicfile.File
}

// certificate is the kubelet's client certificate, PEM; nil without k.
func (k *kubelet) certificate() []byte {
	if k == nil {
		return nil
	}
	return k.cred.GetCertificatePem()
}

// openKubelet opens the KUBELET credential of resp, if any (a decision
// releases at most one node identity that a kubelet can use), and returns
// the files to write: the client certificate and key in outDir, and a
// kubeconfig at kubeconfig (outDir/KubeconfigFile if empty) naming the
// API server, its CA and that file.
func openKubelet(node *Node, resp *pb.AttestResponse, outDir, kubeconfig, bootstrapKubeconfig string) (*kubelet, error) {
	var found *pb.Credential
	for _, c := range resp.GetCredentials() {
		if c.GetType() != pb.CredentialType_KUBELET {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("credentials %q and %q: the broker released two kubelet credentials; a node has one", found.GetName(), c.GetName())
		}
		found = c
	}
	if found == nil {
		return nil, nil
	}
	payload, err := node.openSealed(found)
	if err != nil {
		return nil, err
	}
	kc := &pb.KubeletCredential{}
	err = proto.Unmarshal(payload, kc)
	clear(payload)
	if err != nil {
		return nil, fmt.Errorf("credential %q: malformed payload: %w", found.GetName(), err)
	}
	if kc.GetBootstrapToken() != "" {
		return openBootstrapToken(kc, found, outDir, bootstrapKubeconfig)
	}
	if kc.GetNodeName() == "" || kc.GetServer() == "" || len(kc.GetKeyPem()) == 0 || len(kc.GetCertificatePem()) == 0 {
		return nil, fmt.Errorf("credential %q: incomplete kubelet credential", found.GetName())
	}
	if _, err := parseLeaf(kc.GetCertificatePem()); err != nil {
		return nil, fmt.Errorf("credential %q: %w", found.GetName(), err)
	}
	client, err := filepath.Abs(filepath.Join(outDir, KubeletClientFile))
	if err != nil {
		return nil, err
	}
	if kubeconfig == "" {
		kubeconfig = filepath.Join(outDir, KubeconfigFile)
	}
	doc, err := kubeconfigFor(kc, client)
	if err != nil {
		return nil, fmt.Errorf("credential %q: %w", found.GetName(), err)
	}
	pemData := append(append(append([]byte{}, kc.GetCertificatePem()...), kc.GetChainPem()...), kc.GetKeyPem()...)
	clear(kc.KeyPem)
	return &kubelet{cred: kc, mode: found.GetMode(), files: []atomicfile.File{
		{Path: client, Data: pemData, Perm: 0o600},
		{Path: kubeconfig, Data: doc, Perm: 0o600},
	}}, nil
}

// openBootstrapToken makes the bootstrap kubeconfig of a bootstrap_token
// credential: the API server, its CA and the token.
func openBootstrapToken(kc *pb.KubeletCredential, c *pb.Credential, outDir, path string) (*kubelet, error) {
	id, secret, ok := strings.Cut(kc.GetBootstrapToken(), ".")
	if !ok || len(id) != 6 || len(secret) != 16 || strings.Trim(kc.GetBootstrapToken(), "abcdefghijklmnopqrstuvwxyz0123456789.") != "" || kc.GetServer() == "" {
		return nil, fmt.Errorf("credential %q: malformed bootstrap token credential", c.GetName())
	}
	if path == "" {
		path = filepath.Join(outDir, BootstrapKubeconfigFile)
	}
	doc, err := kubeconfigDoc(kc, "kubelet-bootstrap", map[string]any{"token": kc.GetBootstrapToken()})
	if err != nil {
		return nil, fmt.Errorf("credential %q: %w", c.GetName(), err)
	}
	return &kubelet{cred: kc, mode: c.GetMode(),
		files: []atomicfile.File{{Path: path, Data: doc, Perm: 0o600}}}, nil
}

// kubeconfigFor writes a kubeconfig (in JSON, which kubeconfig readers
// take as YAML) for the kubelet of kc: one cluster, one user whose client
// certificate and key are both in clientFile, one context, current.
func kubeconfigFor(kc *pb.KubeletCredential, clientFile string) ([]byte, error) {
	return kubeconfigDoc(kc, "system:node:"+kc.GetNodeName(), map[string]any{"client-certificate": clientFile, "client-key": clientFile})
}

// kubeconfigDoc writes a kubeconfig for kc's API server with one user,
// authenticated as auth says.
func kubeconfigDoc(kc *pb.KubeletCredential, user string, auth map[string]any) ([]byte, error) {
	type named struct {
		Name    string         `json:"name"`
		Cluster map[string]any `json:"cluster,omitempty"`
		User    map[string]any `json:"user,omitempty"`
		Context map[string]any `json:"context,omitempty"`
	}
	cluster := map[string]any{"server": kc.GetServer()}
	if ca := kc.GetClusterCaPem(); len(ca) > 0 {
		cluster["certificate-authority-data"] = ca // base64 in JSON, as kubeconfig wants
	}
	doc := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"clusters":        []named{{Name: "kubernetes", Cluster: cluster}},
		"users":           []named{{Name: user, User: auth}},
		"contexts":        []named{{Name: "default", Context: map[string]any{"cluster": "kubernetes", "user": user}}},
		"current-context": "default",
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, errors.New("unable to write the kubeconfig")
	}
	return append(out, '\n'), nil
}
