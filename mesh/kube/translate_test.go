package kube

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/siftmesh/sift/mesh"
)

func pod(ns, name, ip string, ready bool, labels, annotations map[string]string) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{ServiceAccountName: "sa-" + name, Containers: []corev1.Container{{Name: "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}},
	}
}

func ptr[T any](v T) *T { return &v }

// The translated mesh, completed: Linkerd's annotation precedence, declared
// protocols from appProtocol, endpoints from EndpointSlices (or Ready pods).
func TestTranslate(t *testing.T) {
	objs := objects{
		config: &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "sift-system", Name: "sift-config"},
			Data: map[string]string{KeyOpaquePorts: "3306,6000-6010", KeyDetectTimeout: "3s", KeyTrustDomain: "example.org", KeyMTLS: "maybe"}},
		namespaces: []*corev1.Namespace{
			{ObjectMeta: metav1.ObjectMeta{Name: "shop", Annotations: map[string]string{AnnotationOpaquePorts: "9000", AnnotationSkipInboundPorts: "4000-4010"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		},
		pods: []*corev1.Pod{
			pod("shop", "web-0", "10.0.0.10", true, map[string]string{"app": "web"}, nil),
			pod("shop", "web-1", "10.0.0.11", false, map[string]string{"app": "web"}, map[string]string{AnnotationOpaquePorts: "7000", AnnotationSkipInboundPorts: ""}),
			pod("shop", "twin", "10.0.0.11", true, nil, nil), // web-1's address: left out
			pod("plain", "db-0", "10.0.1.20", true, map[string]string{"app": "db"}, map[string]string{AnnotationSkipOutboundPorts: "bad"}),
			pod("plain", "pending", "", false, map[string]string{"app": "db"}, nil),
		},
		services: []*corev1.Service{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
				Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Selector: map[string]string{"app": "web"},
					Ports: []corev1.ServicePort{
						{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), AppProtocol: ptr("kubernetes.io/h2c")},
						{Name: "named", Port: 81, TargetPort: intstr.FromString("http")},
						{Name: "bad", Port: 82, TargetPort: intstr.FromString("Not_A_Name")},
					}}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "plain", Name: "db", Annotations: map[string]string{AnnotationOpaquePorts: "5432"}},
				Spec: corev1.ServiceSpec{ClusterIP: "10.96.1.20", Selector: map[string]string{"app": "db"},
					Ports: []corev1.ServicePort{{Port: 5432, AppProtocol: ptr("grpc")}}}},
		},
		slices: []*discoveryv1.EndpointSlice{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.0.0.10"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-0"}},
				{Addresses: []string{"10.0.0.11"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-1"}},
			}}},
	}
	m, warnings := translate(objs)
	wantWarnings := []string{
		`configmap sift-system/sift-config: mtls: "maybe" is not true or false`,
		`pod plain/db-0: annotation config.linkerd.io/skip-outbound-ports: "bad": not a port number`,
		`pod shop/web-1: status.podIPs: 10.0.0.11 is also the address of pod shop/twin; pod left out`,
		`service shop/web: spec.ports[2].targetPort: "Not_A_Name" is not a port name; port left out`,
	}
	if diff := cmp.Diff(wantWarnings, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	if err := m.Complete(); err != nil {
		t.Fatal(err)
	}
	if m.TrustDomain != "example.org" || m.Detection().String() != "3s" || m.DefaultOpaque().String() != "3306,6000-6010" {
		t.Errorf("defaults: trust %q, detect %v, opaque %v", m.TrustDomain, m.Detection(), m.DefaultOpaque())
	}
	var names []string
	for _, w := range m.Workloads() {
		names = append(names, w.Key()+"@"+w.NodeID+"@"+w.Identity)
	}
	wantNames := []string{"plain/db-0@db-0.plain@spiffe://example.org/ns/plain/sa/sa-db-0", "shop/twin@twin.shop@spiffe://example.org/ns/shop/sa/sa-twin", "shop/web-0@web-0.shop@spiffe://example.org/ns/shop/sa/sa-web-0"}
	if diff := cmp.Diff(wantNames, names); diff != "" {
		t.Errorf("workloads (-want +got):\n%s", diff)
	}

	web, db := m.Service("shop/web"), m.Service("plain/db")
	if len(web.Ports) != 2 || web.Ports[0].Protocol != mesh.ProtocolHTTP2 || db.Ports[0].Protocol != mesh.ProtocolGRPC {
		t.Errorf("ports: web %+v, db %+v", web.Ports, db.Ports)
	}
	// Opaque ports: the service's own list replaces the namespace's and the
	// default; a namespace's list replaces the default.
	if got := m.ServiceOpaquePorts(db).String(); got != "5432" {
		t.Errorf("db opaque = %q", got)
	}
	if got := m.ServiceOpaquePorts(web).String(); got != "9000" {
		t.Errorf("web opaque = %q (the namespace's)", got)
	}
	web0, db0 := m.Workload("shop/web-0"), m.Workload("plain/db-0")
	// A named targetPort resolves per pod from its container ports' names.
	if got, ok := web.Ports[1].TargetFor(web0); web.Ports[1].TargetPortName != "http" || !ok || got != 8080 {
		t.Errorf("named target port %q for web-0 = %d, %v; want 8080", web.Ports[1].TargetPortName, got, ok)
	}
	if got := m.WorkloadOpaquePorts(db0).String(); got != "3306,6000-6010" {
		t.Errorf("db-0 opaque = %q (the default)", got)
	}
	if got := m.SkipInbound(web0).String(); got != "4000-4010" {
		t.Errorf("web-0 skip inbound = %q (the namespace's)", got)
	}
	if got := m.SkipOutbound(db0); !got.Empty() {
		t.Errorf("db-0 skip outbound = %q, want none (its annotation is invalid)", got)
	}
	// Endpoints: the EndpointSlice's ready pods; without a slice, the
	// selected Ready pods.
	keys := func(ws []*mesh.Workload) string {
		var out []string
		for _, w := range ws {
			out = append(out, w.Key())
		}
		return strings.Join(out, ",")
	}
	if got := keys(m.Endpoints(web)); got != "shop/web-0" {
		t.Errorf("web endpoints = %q", got)
	}
	if got := keys(m.Endpoints(db)); got != "plain/db-0" {
		t.Errorf("db endpoints = %q", got)
	}
}

// A workload's own list replaces its namespace's, even when empty.
func TestTranslateWorkloadListReplacesNamespace(t *testing.T) {
	objs := objects{
		namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "shop", Annotations: map[string]string{AnnotationSkipInboundPorts: "4000"}}}},
		pods:       []*corev1.Pod{pod("shop", "a", "10.0.0.1", true, nil, map[string]string{AnnotationSkipInboundPorts: "", AnnotationOpaquePorts: "1-100"})},
	}
	m, warnings := translate(objs)
	if len(warnings) != 0 {
		t.Fatal(warnings)
	}
	if err := m.Complete(); err != nil {
		t.Fatal(err)
	}
	a := m.Workload("shop/a")
	if !m.SkipInbound(a).Empty() || m.WorkloadOpaquePorts(a).String() != "1-100" {
		t.Errorf("skip inbound %q, opaque %q", m.SkipInbound(a), m.WorkloadOpaquePorts(a))
	}
}

// A pod is meshed when it runs sift-proxy (a container or a native sidecar
// named so, or sift inject's annotation); its endpoints then wait for its
// proxy's ACK. Other pods are published as soon as they are ready.
func TestTranslateMeshedPods(t *testing.T) {
	sidecar := pod("shop", "sidecar", "10.0.0.1", true, nil, nil)
	sidecar.Spec.Containers = append(sidecar.Spec.Containers, corev1.Container{Name: "sift-proxy"})
	native := pod("shop", "native", "10.0.0.2", true, nil, nil)
	native.Spec.InitContainers = []corev1.Container{{Name: "sift-proxy", RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways)}}
	annotated := pod("shop", "annotated", "10.0.0.3", true, nil, map[string]string{"sift.io/injected": "true"})
	linkerd := pod("shop", "linkerd", "10.0.0.4", true, nil, nil)
	linkerd.Spec.Containers = append(linkerd.Spec.Containers, corev1.Container{Name: "linkerd-proxy"})
	m, warnings := translate(objects{pods: []*corev1.Pod{sidecar, native, annotated, linkerd, pod("shop", "plain", "10.0.0.5", true, nil, nil)}})
	if len(warnings) != 0 {
		t.Fatal(warnings)
	}
	if err := m.Complete(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, w := range m.Workloads() {
		got[w.Name] = !w.Unmeshed
	}
	want := map[string]bool{"sidecar": true, "native": true, "annotated": true, "linkerd": false, "plain": false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("meshed (-want +got):\n%s", diff)
	}
}
