package controlplane

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/siftmesh/sift/mesh"
)

// scaleMesh is services services of podsPer workloads each in 10
// namespaces (mesh/kube's BenchmarkTranslate cluster), each service's
// endpoints listed as the Kubernetes source lists them; extra adds one
// workload to service 7, as a pod joining it.
func scaleMesh(b *testing.B, services, podsPer int, extra bool) *mesh.Mesh {
	m := &mesh.Mesh{}
	for n := range 10 {
		m.Namespaces = append(m.Namespaces, &mesh.Namespace{Name: fmt.Sprintf("ns%d", n)})
	}
	ip := func(k int) netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(100 + k/62500), byte(k / 250 % 250), byte(k%250 + 1)})
	}
	for i := range services {
		ns := m.Namespaces[i%10]
		name := fmt.Sprintf("svc%d", i)
		ns.Services = append(ns.Services, &mesh.Service{Name: name, Namespace: ns.Name,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})},
			Ports:      []mesh.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": name}})
		pods := podsPer
		if extra && i == 7 {
			pods++
		}
		s := ns.Services[len(ns.Services)-1]
		s.Endpoints = []string{}
		for j := range pods {
			s.Endpoints = append(s.Endpoints, fmt.Sprintf("%s/%s-%d", ns.Name, name, j))
			ns.Workloads = append(ns.Workloads, &mesh.Workload{Name: fmt.Sprintf("%s-%d", name, j), Namespace: ns.Name,
				Addresses: []netip.Addr{ip(i*(podsPer+1) + j)}, Labels: map[string]string{"app": name},
				Ports: []mesh.WorkloadPort{{Port: 8080}}})
		}
	}
	if err := m.Complete(); err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkRebuild: every workload's snapshot of a 1 000-service,
// 10 000-workload mesh. "full" builds from scratch (what every change cost
// before incremental rebuilds, and Config.FullPush); "pod joins" alternates
// between the mesh with and without one more endpoint, as a rollout does;
// "generate one workload" is Generate for one proxy (the old rebuild ran it
// for every workload).
func BenchmarkRebuild(b *testing.B) {
	a, c := scaleMesh(b, 1000, 10, false), scaleMesh(b, 1000, 10, true)
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			newBuilder(DefaultOptions(), false).build(a, nil)
		}
	})
	b.Run("pod joins", func(b *testing.B) {
		bl := newBuilder(DefaultOptions(), false)
		bl.build(a, nil)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i++; i%2 == 1 {
				bl.build(c, nil)
			} else {
				bl.build(a, nil)
			}
		}
		b.ReportMetric(float64(bl.stats.ServicesGenerated), "services-generated/op")
		b.ReportMetric(float64(bl.stats.WorkloadsGenerated), "workloads-generated/op")
		b.ReportMetric(float64(bl.stats.Snapshots), "distinct-snapshots")
	})
	b.Run("generate one workload", func(b *testing.B) {
		w := a.Workloads()[0]
		b.ReportAllocs()
		for b.Loop() {
			Generate(a, w, DefaultOptions())
		}
	})
}
