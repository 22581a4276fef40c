package harness

import (
	"testing"

	"github.com/siftmesh/sift/bench/internal/gen"
)

func TestDirectAddrFollowsProxyChains(t *testing.T) {
	top := gen.Topology{Listeners: []gen.Listener{
		{Name: "mtls_out", Port: 15001, Kind: gen.MTLSOrigin, Upstreams: []int{15011}},
		{Name: "mtls_in", Port: 15011, Kind: gen.MTLSTerminate, Upstreams: []int{15100}},
		{Name: "lb", Port: 15006, Kind: gen.HTTP1, Upstreams: []int{15110, 15111, 15112}},
	}}
	for l, want := range map[string]string{"mtls_out": "127.0.0.1:15100", "mtls_in": "127.0.0.1:15100", "lb": "127.0.0.1:15110"} {
		if got := directAddr(top, l); got != want {
			t.Errorf("directAddr(%s) = %s, want %s", l, got, want)
		}
	}
	if got := listenerAddr(top, "mtls_out"); got != "127.0.0.1:15001" {
		t.Errorf("listenerAddr = %s", got)
	}
}

func TestEveryScenarioTopologyIsValid(t *testing.T) {
	r := &Runner{o: Options{PortBase: 15000}}
	if got := len(r.scenarios()); got != 9 {
		t.Fatalf("%d scenarios, want 9", got)
	}
	// Topologies are built inside the scenario functions; check the port
	// plan they share stays inside the documented block.
	for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 11, 90, 91, 100, 101, 102, 103, 104, 105, 109, 110, 111, 112} {
		if p := r.port(n); p < 15000 || p > 15160 {
			t.Errorf("port(%d) = %d outside base..base+160", n, p)
		}
	}
}

func TestHelpers(t *testing.T) {
	if got := splitList(" a, b ,,c "); len(got) != 3 || got[0] != "a" || got[2] != "c" {
		t.Errorf("splitList = %q", got)
	}
	out := []byte("serving\n{\"ops\":1}\nnoise\n")
	if got := string(lastJSONLine(out)); got != `{"ops":1}` {
		t.Errorf("lastJSONLine = %q", got)
	}
	if atoiOr("x", 7) != 7 || atoiOr("15", 7) != 15 {
		t.Error("atoiOr")
	}
}
