package mesh

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParsePortSet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
		contains       []uint16
		missing        []uint16
		wantErr        string
	}{
		{name: "default list", in: DefaultOpaquePorts, want: DefaultOpaquePorts, contains: []uint16{25, 3306, 11211}, missing: []uint16{80, 443}},
		{name: "range", in: "4000-4100", want: "4000-4100", contains: []uint16{4000, 4050, 4100}, missing: []uint16{3999, 4101}},
		{name: "merges and sorts", in: " 4101, 4000-4100,22,21", want: "21-22,4000-4101", contains: []uint16{21, 22, 4101}},
		{name: "empty", in: "", want: "", missing: []uint16{1, 25}},
		{name: "port zero", in: "0", wantErr: `"0": port 0 is out of range (1-65535)`},
		{name: "too big", in: "70000", wantErr: `"70000": port 70000 is out of range (1-65535)`},
		{name: "reversed range", in: "20-10", wantErr: `"20-10": range ends before it starts`},
		{name: "garbage", in: "http", wantErr: `"http": not a port number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParsePortSet(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			for _, p := range tt.contains {
				if !got.Contains(p) {
					t.Errorf("Contains(%d) = false", p)
				}
			}
			for _, p := range tt.missing {
				if got.Contains(p) {
					t.Errorf("Contains(%d) = true", p)
				}
			}
		})
	}
}

func ports(s string) *PortSet {
	ps := MustParsePortSet(s)
	return &ps
}

// TestOpaquePrecedence: Linkerd's config.linkerd.io/opaque-ports — a list on
// a service or workload replaces its namespace's, which replaces the
// install default; none of them augments another.
func TestOpaquePrecedence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                      string
		def, ns, svc, wl          *PortSet
		wantService, wantWorkload string
	}{
		{name: "install default", wantService: DefaultOpaquePorts, wantWorkload: DefaultOpaquePorts},
		{name: "changed install default", def: ports("9999"), wantService: "9999", wantWorkload: "9999"},
		{name: "namespace replaces default", ns: ports("4000-4100"), wantService: "4000-4100", wantWorkload: "4000-4100"},
		{name: "service replaces namespace", ns: ports("4000-4100"), svc: ports("7100"), wantService: "7100", wantWorkload: "4000-4100"},
		{name: "workload replaces namespace", ns: ports("4000-4100"), wl: ports("7200"), wantService: "4000-4100", wantWorkload: "7200"},
		{name: "empty list disables the default", svc: ports(""), wl: ports(""), wantService: "", wantWorkload: ""},
		{name: "service list does not affect workloads", svc: ports("7100"), wantService: "7100", wantWorkload: DefaultOpaquePorts},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &Service{Name: "s", ClusterIPs: nil, Ports: []ServicePort{{Port: 80}}, OpaquePorts: tt.svc}
			w := &Workload{Name: "w", OpaquePorts: tt.wl}
			m := &Mesh{DefaultOpaquePorts: tt.def, Namespaces: []*Namespace{{Name: "ns", OpaquePorts: tt.ns, Services: []*Service{s}, Workloads: []*Workload{w}}}}
			if err := m.Complete(); err != nil {
				t.Fatal(err)
			}
			if got := m.ServiceOpaquePorts(s).String(); got != tt.wantService {
				t.Errorf("ServiceOpaquePorts = %q, want %q", got, tt.wantService)
			}
			if got := m.WorkloadOpaquePorts(w).String(); got != tt.wantWorkload {
				t.Errorf("WorkloadOpaquePorts = %q, want %q", got, tt.wantWorkload)
			}
		})
	}
}

func TestTreatmentAndInboundPorts(t *testing.T) {
	t.Parallel()
	web := &Service{Name: "web", Selector: map[string]string{"app": "web"}, Ports: []ServicePort{
		{Port: 80, TargetPort: 8080, Protocol: "http/1"}, // case-insensitive
		{Port: 3306}, // default list
		{Port: 9000, Protocol: ProtocolTLS},
		{Port: 9100, Protocol: ProtocolOpaque},
		{Port: 9200},
	}}
	w := &Workload{Name: "web-0", Labels: map[string]string{"app": "web", "x": "y"},
		Ports:            []WorkloadPort{{Port: 9400, Protocol: ProtocolGRPC}, {Port: 22}},
		SkipInboundPorts: ports("22")}
	other := &Workload{Name: "other", Labels: map[string]string{"app": "db"}}
	m := &Mesh{Namespaces: []*Namespace{{Name: "ns", Services: []*Service{web}, Workloads: []*Workload{w, other}}}}
	if err := m.Complete(); err != nil {
		t.Fatal(err)
	}
	var got []Treatment
	for _, p := range web.Ports {
		got = append(got, m.ServicePortTreatment(web, p))
	}
	if diff := cmp.Diff([]Treatment{HTTP, Opaque, TLS, Opaque, Detect}, got); diff != "" {
		t.Errorf("service treatments (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"ns/web"}, w.Services); diff != "" {
		t.Errorf("Services (-want +got):\n%s", diff)
	}
	if len(other.Services) != 0 {
		t.Errorf("other.Services = %v, want none", other.Services)
	}
	if w.NodeID != "web-0.ns" || web.Hostname != "web.ns.svc.cluster.local" {
		t.Errorf("defaults: node id %q, hostname %q", w.NodeID, web.Hostname)
	}
	want := []InboundPort{
		{Port: 3306, Protocol: ProtocolUnknown, Treatment: Opaque},
		{Port: 8080, Protocol: ProtocolHTTP1, Treatment: HTTP},
		{Port: 9000, Protocol: ProtocolTLS, Treatment: TLS},
		{Port: 9100, Protocol: ProtocolOpaque, Treatment: Opaque},
		{Port: 9200, Protocol: ProtocolUnknown, Treatment: Detect},
		{Port: 9400, Protocol: ProtocolGRPC, Treatment: HTTP},
	}
	if diff := cmp.Diff(want, m.InboundPorts(w)); diff != "" {
		t.Errorf("InboundPorts (-want +got):\n%s", diff)
	}
}

func TestCompleteErrors(t *testing.T) {
	t.Parallel()
	m := &Mesh{Namespaces: []*Namespace{
		{Name: "a", Services: []*Service{
			{Name: "s", Ports: []ServicePort{{Port: 80}, {Port: 80, Protocol: "smtp"}}},
			{Name: "s", Ports: []ServicePort{{Port: 81}}},
		}, Workloads: []*Workload{{Name: "w", NodeID: "n"}, {Name: "v", NodeID: "n"}}},
		{Name: "Bad_Name"},
	}}
	err := m.Complete()
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("%v is not a *FieldError", e)
		}
		got = append(got, fe.Error())
	}
	want := []string{
		`namespaces[0].services[0].ports[1].port: port 80 is listed twice (also ports[0])`,
		`namespaces[0].services[0].ports[1].protocol: unknown protocol "smtp" (known: unknown, HTTP/1, HTTP/2, gRPC, opaque, TLS)`,
		`namespaces[0].services[1].name: service "s" is defined twice in namespace "a" (also services[0])`,
		`namespaces[0].workloads[1].node_id: node id "n" is already the node id of a/w`,
		`namespaces[1].name: "Bad_Name" is not a valid name (lower-case letters, digits and '-', as in Kubernetes)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func TestIdentities(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		trustDomain  string
		sa           string
		wantWorkload string
	}{
		{name: "defaults", wantWorkload: "spiffe://cluster.local/ns/shop/sa/default"},
		{name: "service account", sa: "web", wantWorkload: "spiffe://cluster.local/ns/shop/sa/web"},
		{name: "trust domain", trustDomain: "prod.example.com", sa: "web", wantWorkload: "spiffe://prod.example.com/ns/shop/sa/web"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			web := &Service{Name: "web", Selector: map[string]string{"app": "web"}, Ports: []ServicePort{{Port: 80}}}
			none := &Service{Name: "none", Selector: map[string]string{"app": "none"}, Ports: []ServicePort{{Port: 80}}}
			w0 := &Workload{Name: "web-0", ServiceAccount: tt.sa, Labels: map[string]string{"app": "web"}}
			w1 := &Workload{Name: "web-1", ServiceAccount: tt.sa, Labels: map[string]string{"app": "web"}}
			canary := &Workload{Name: "web-canary", ServiceAccount: "canary", Labels: map[string]string{"app": "web"}}
			m := &Mesh{TrustDomain: tt.trustDomain, Namespaces: []*Namespace{{Name: "shop",
				Services: []*Service{web, none}, Workloads: []*Workload{w0, w1, canary}}}}
			if err := m.Complete(); err != nil {
				t.Fatal(err)
			}
			if w0.Identity != tt.wantWorkload || w1.Identity != tt.wantWorkload {
				t.Errorf("Identity = %q, %q, want %q", w0.Identity, w1.Identity, tt.wantWorkload)
			}
			td := tt.trustDomain
			if td == "" {
				td = DefaultTrustDomain
			}
			want := []string{SPIFFEID(td, "shop", "canary"), tt.wantWorkload} // sorted, deduplicated
			if diff := cmp.Diff(want, web.Identities); diff != "" {
				t.Errorf("web.Identities (-want +got):\n%s", diff)
			}
			if len(none.Identities) != 0 {
				t.Errorf("none.Identities = %v, want none", none.Identities)
			}
		})
	}
}
