//go:build tools

// Package k8stools pins the kube-apiserver build (see build.sh); it is never compiled.
package k8stools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
