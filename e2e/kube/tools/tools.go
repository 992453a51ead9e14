//go:build tools

// Package tools pins the Kubernetes control-plane commands the Kubernetes
// e2e suite runs: kube-apiserver and kube-controller-manager, built from
// the module proxy at the version in go.mod.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
