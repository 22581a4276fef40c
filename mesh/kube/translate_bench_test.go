package kube

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// scaleObjects is a cluster of services×podsPer pods in 10 namespaces, each
// service with one EndpointSlice listing its pods as ready.
func scaleObjects(services, podsPer int) objects {
	var o objects
	for n := range 10 {
		o.namespaces = append(o.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", n)}})
	}
	for i := range services {
		ns, name := fmt.Sprintf("ns%d", i%10), fmt.Sprintf("svc%d", i)
		o.services = append(o.services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), Selector: map[string]string{"app": name},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}})
		es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: name}}}
		for j := range podsPer {
			k := i*podsPer + j
			p := pod(ns, fmt.Sprintf("%s-%d", name, j), fmt.Sprintf("10.%d.%d.%d", 100+k/62500, k/250%250, k%250+1), true, map[string]string{"app": name}, nil)
			o.pods = append(o.pods, p)
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.Status.PodIP}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: p.Name}})
		}
		o.slices = append(o.slices, es)
	}
	return o
}

// BenchmarkTranslate: one rebuild of a 1 000-service, 10 000-pod cluster
// (translation and mesh.Complete; the xDS generation is the controller's).
func BenchmarkTranslate(b *testing.B) {
	o := scaleObjects(1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		m, warnings := translate(o)
		if len(warnings) > 0 {
			b.Fatal(warnings[0])
		}
		if err := m.Complete(); err != nil {
			b.Fatal(err)
		}
	}
}
