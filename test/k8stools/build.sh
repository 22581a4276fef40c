#!/usr/bin/env bash
# Builds kube-apiserver v1.37.1 and etcd 3.7.3 from the Go module proxy for the tests that run
# sift-control against a real API server (mesh/kube, test/kubernetes_test.go), into
# $SIFT_K8S_BIN (default ~/.cache/sift-k8s-bin), and only when a binary there is missing: a cold
# build takes about four minutes on two cores, a warm Go cache well under one.
#
# This module is separate from Sift's own: k8s.io/kubernetes needs a replace line for each of its
# staging modules, which must not leak into Sift's build. Prints the directory the binaries are in,
# which is what envtest's KUBEBUILDER_ASSETS wants.
set -euo pipefail
cd "$(dirname "$0")"
out="${SIFT_K8S_BIN:-$HOME/.cache/sift-k8s-bin}"
mkdir -p "$out"
if [ ! -x "$out/kube-apiserver" ]; then
  v=k8s.io/component-base/version
  go build -trimpath -o "$out/kube-apiserver.tmp" \
    -ldflags "-s -w -X $v.gitVersion=v1.37.1 -X $v.gitMajor=1 -X $v.gitMinor=37" \
    k8s.io/kubernetes/cmd/kube-apiserver >&2
  mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
fi
if [ ! -x "$out/etcd" ]; then
  go build -trimpath -o "$out/etcd.tmp" -ldflags "-s -w" ./etcd >&2
  mv "$out/etcd.tmp" "$out/etcd"
fi
echo "$out"
