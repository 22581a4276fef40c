package test

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/netns"
	"github.com/siftmesh/sift/internal/testnet"
)

// TestMeshOriginalDstHandOff: Envoy's use_original_dst with real iptables
// redirection, in a network namespace. A connection redirected to the
// virtual listener is handed to the listener bound to its original
// destination — here a wildcard 0.0.0.0 listener on the same port, as
// Istio's virtualOutbound hands off to 0.0.0.0:<port> listeners — and stays
// on the virtual listener when no listener has that port. The wildcard
// listener binds IPv4 only, as Envoy binds 0.0.0.0.
func TestMeshOriginalDstHandOff(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("original_dst hand-off test skipped: %v", err)
	}
	t.Parallel()
	removeStaleNamespaces(t)
	ns := addNamespace(t, meshRunSeq.Add(1), "handoff")
	// connect() needs a route to the service range before the OUTPUT
	// redirect rewrites the destination (a veth pair with both ends here;
	// nothing is sent on it).
	for _, args := range [][]string{
		{"link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"link", "set", "v0", "up"}, {"link", "set", "v1", "up"},
		{"addr", "add", "10.98.0.1/24", "dev", "v0"},
		{"route", "add", meshServiceNet, "dev", "v0"},
	} {
		if err := ns.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := ns.Iptables("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", meshServiceNet, "-j", "REDIRECT", "--to-ports", "15001"); err != nil {
		t.Fatal(err)
	}
	greeterIn := func(addr, name string) {
		ln, err := ns.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		testnet.Serve(t, ln, func(c net.Conn) { fmt.Fprintf(c, "%s\n", name) })
	}
	greeterIn("127.0.0.1:9001", "virtual")
	greeterIn("127.0.0.1:9002", "real")

	cfg := writeBootstrap(t, `
static_resources:
  listeners:
  - name: virtual
    address: {socket_address: {address: 127.0.0.1, port_value: 15001}}
    use_original_dst: true
    listener_filters:
    - {name: envoy.filters.listener.original_dst, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
    filter_chains: [{filters: {{virtual}}}]
  - name: real
    address: {socket_address: {address: 0.0.0.0, port_value: 8080}}
    filter_chains: [{filters: {{real}}}]
  clusters:
`+staticCluster("virtual", "127.0.0.1:9001")+staticCluster("real", "127.0.0.1:9002"),
		map[string]string{"virtual": tcpProxy("virtual"), "real": tcpProxy("real")})
	p := startMeshProc(t, "sift-proxy", ns.Command(siftProxyBinary(t), "-c", cfg, "--log-format", "json", "-l", "debug"))
	p.waitLog(t, 0, 30*time.Second, "the virtual listener", jsonRecord(map[string]string{"msg": "listening", "listener": "virtual"}))
	p.waitLog(t, 0, 30*time.Second, "the real listener on 0.0.0.0:8080 (IPv4, as configured)",
		jsonRecord(map[string]string{"msg": "listening", "listener": "real", "address": "0.0.0.0:8080"}))

	for _, tc := range []struct{ dst, want string }{
		{"10.96.0.99:8080", "real"},    // handed off to the wildcard listener on 8080
		{"10.96.0.99:8081", "virtual"}, // no listener on 8081: the virtual listener serves it
	} {
		c := dialIn(t, ns, tc.dst)
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || got != tc.want+"\n" {
			t.Errorf("connection to %s answered by %q (%v), want %s", tc.dst, got, err, tc.want)
		}
	}
	// IPv4 only: nothing listens on [::1]:8080.
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp6", "[::1]:8080", 5*time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("a listener on 0.0.0.0:8080 accepted an IPv6 connection")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
