package test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/siftmesh/sift/internal/netns"
	"github.com/siftmesh/sift/internal/testnet"
)

// TestChaosControlPlanePartition cuts the network between a sift-proxy and
// its control plane (iptables DROP both ways, in a network namespace of the
// test's own, so nothing else is touched) while HTTP and opaque load runs,
// pushes an update during the partition, and heals it: the load must not
// notice, and the update must arrive and be ACKed after the healing.
func TestChaosControlPlanePartition(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("partition test skipped: %v", err)
	}
	t.Parallel()
	removeStaleNamespaces(t)
	partition := time.Duration(chaosSize(3, 30)) * time.Second
	ns := addNamespace(t, meshRunSeq.Add(1), "partition")

	// Everything lives on the namespace's loopback: backends, control
	// plane, proxy, clients.
	listen := func() net.Listener {
		ln, err := ns.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	var web []string
	for _, name := range []string{"a", "b"} {
		ln := listen()
		srv := &http.Server{Handler: nameHandler(name)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		web = append(web, ln.Addr().String())
	}
	echoLn := listen()
	testnet.Serve(t, echoLn, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	echoAddr := echoLn.Addr().String()
	// The proxy pings its control plane (the xDS cluster's
	// connection_keepalive, at gRPC's 10 s minimum), which permits it, as
	// sift-control and its bootstraps do.
	cp := &controlPlane{t: t, cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil),
		nacks: make(chan string, 100), versions: map[string][]string{},
		opts: []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true})}}
	cp.serveOn(listen())
	cp.set("1", churnResources(1, web, echoAddr))
	xds := staticCluster("xds", cp.addr)
	boot := strings.Replace(xdsBootstrap(cp.addr, false, true), xds, withFields(xds, `typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: `+
		`{"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, `+
		`explicit_http_config: {http2_protocol_options: {connection_keepalive: {interval: 10s, timeout: 2s}}}}}`), 1)
	cfg := writeBootstrap(t, boot+adminYAML, nil)
	proxy := startProcess(t, append([]string{"ip", "netns", "exec", ns.Name, siftProxyBinary(t)}, "-c", cfg, "--log-format", "json", "--drain-time-s", "1"),
		"http", "tcp", "admin")
	load := startChaosLoadVia(t, proxy.addrs["http"], proxy.addrs["tcp"], "1", ns.DialContext)
	load.run()
	waitACK := func(version string) {
		eventually(t, "the ACK of version "+version, func() bool { return cp.sawVersion("type.googleapis.com/envoy.config.listener.v3.Listener", version) })
	}
	waitACK("1")

	_, port, _ := net.SplitHostPort(cp.addr)
	rules := [][]string{{"INPUT", "-p", "tcp", "--dport", port, "-j", "DROP"}, {"INPUT", "-p", "tcp", "--sport", port, "-j", "DROP"}}
	for _, r := range rules {
		if err := ns.Iptables(append([]string{"-A"}, r...)...); err != nil {
			t.Fatal(err)
		}
	}
	cut := time.Now()
	time.Sleep(partition / 3)
	cp.set("2", churnResources(2, web, echoAddr)) // cannot arrive yet
	time.Sleep(partition - partition/3)
	if v, err := load.get(); err != nil || v != "1" {
		t.Errorf("during the partition: version %q, %v; want version 1 serving", v, err)
	}
	for _, r := range rules {
		if err := ns.Iptables(append([]string{"-D"}, r...)...); err != nil {
			t.Fatal(err)
		}
	}
	healed := time.Now()
	waitACK("2")
	acked := time.Since(healed)
	load.waitVersion(t, "2")
	load.stop()
	load.check(t)
	chaosReport(t, "a network partition between sift-proxy and its control plane", append([][2]string{
		{"partition (iptables DROP both ways)", partition.String() + ", an update pushed " + (partition / 3).String() + " into it"},
		{"update applied after healing", "ACKed " + acked.Round(time.Millisecond).String() + " after the network came back (" +
			strconv.Itoa(int(cp.streams.Load())) + " xDS streams opened in all)"},
		{"configuration serving during the partition", fmt.Sprintf("the last good one (version 1) for %v", healed.Sub(cut).Round(time.Millisecond))},
	}, load.rows()...))
}
