package controlplane

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/google/go-cmp/cmp"

	opaqueupstreamv1 "github.com/siftmesh/sift/api/sift/extensions/upstreams/opaque_transport/v1"
	"github.com/siftmesh/sift/mesh"
)

// A named target port resolves per workload from its ports' names, as
// kube-proxy resolves a Service's named targetPort per pod: each endpoint at
// its own port, a workload without the name is no endpoint, and each
// workload's proxy listens on its own port. The opaque transport names one
// port per cluster: the one most endpoints share (lowest on a tie).
func TestNamedTargetPort(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, `mtls: true
namespaces:
- name: shop
  services:
  - name: web
    cluster_ips: [10.96.0.10]
    selector: {app: web}
    ports: [{port: 80, target_port: http}]
  workloads:
  - {name: web-0, addresses: [10.0.0.10], labels: {app: web}, ports: [{name: http, port: 8080}]}
  - {name: web-1, addresses: [10.0.0.11], labels: {app: web}, ports: [{name: http, port: 9090}, {name: admin, port: 8080}]}
  - {name: web-2, addresses: [10.0.0.12], labels: {app: web}, ports: [{name: metrics, port: 9100}]}
  - {name: client, addresses: [10.0.0.99]}
`)
	opts := DefaultOptions()
	opts.Security = testSecurity{}
	r := Generate(m, m.Workload("shop/client"), opts)
	cla := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, e := range r.Endpoints {
		cla[e.GetClusterName()] = e
	}
	host := "web.shop.svc.cluster.local"
	if diff := cmp.Diff([]string{"10.0.0.10:8080", "10.0.0.11:9090"}, endpointsOf(cla[OutboundClusterName(host, 80)])); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"10.0.0.10:4143"}, endpointsOf(cla[OpaqueClusterName(host, 80)])); diff != "" {
		t.Errorf("opaque-transport endpoints (-want +got):\n%s", diff)
	}
	var opaque *clusterv3.Cluster
	for _, c := range r.Clusters {
		if c.GetName() == OpaqueClusterName(host, 80) {
			opaque = c
		}
	}
	var ot opaqueupstreamv1.OpaqueTransport
	if err := opaque.GetTypedExtensionProtocolOptions()[opaqueTransportOptionsName].UnmarshalTo(&ot); err != nil {
		t.Fatal(err)
	}
	if ot.GetPort() != 8080 {
		t.Errorf("opaque transport port = %d, want 8080", ot.GetPort())
	}
	inbound := func(w string) []uint16 {
		var out []uint16
		for _, p := range m.InboundPorts(m.Workload(w)) {
			out = append(out, p.Port)
		}
		return out
	}
	if diff := cmp.Diff([]uint16{8080, 9090}, inbound("shop/web-1")); diff != "" {
		t.Errorf("web-1's inbound ports (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint16{9100}, inbound("shop/web-2")); diff != "" {
		t.Errorf("web-2's inbound ports (-want +got):\n%s", diff)
	}
}

func TestOpaqueTargets(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, `namespaces:
- name: shop
  workloads:
  - {name: a, addresses: [10.0.0.1], ports: [{name: http, port: 9090}]}
  - {name: b, addresses: [10.0.0.2], ports: [{name: http, port: 8080}]}
  - {name: c, addresses: [10.0.0.3], ports: [{name: http, port: 9090}]}
  - {name: d, addresses: [10.0.0.4]}
`)
	ws := m.Workloads()
	tests := []struct {
		name     string
		port     uint16
		target   string
		wantPort uint16
		want     []string
	}{
		{"numeric", 80, "", 80, []string{"shop/a", "shop/b", "shop/c", "shop/d"}},
		{"named: the port most share", 80, "http", 9090, []string{"shop/a", "shop/c"}},
		{"named: nobody has it", 80, "grpc", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, eps := opaqueTargets(ws, mesh.ServicePort{Port: tt.port, TargetPortName: tt.target})
			var keys []string
			for _, w := range eps {
				keys = append(keys, w.Key())
			}
			if port != tt.wantPort || !cmp.Equal(keys, tt.want) {
				t.Errorf("opaqueTargets = %d %v, want %d %v", port, keys, tt.wantPort, tt.want)
			}
		})
	}
}
