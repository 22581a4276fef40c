package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/upstream"
)

const controlMesh = `detect_timeout: 2s
namespaces:
- name: shop
  services:
  - name: web
    cluster_ips: [10.96.0.10]
    selector: {app: web}
    ports: [{port: 80, target_port: 8080}]
  - name: db
    cluster_ips: [10.96.0.20]
    selector: {app: db}
    ports: [{port: 3306}]
  workloads:
  - name: web-0
    addresses: [10.0.0.10]
    labels: {app: web}
  - name: db-0
    addresses: [10.0.0.20]
    labels: {app: db}
    node_id: db
`

type controlProcess struct {
	cmd       *exec.Cmd
	xds       string
	admin     string
	exited    chan struct{}
	exitError error
	// logs returns what sift-control logged so far.
	logs func() string
}

var serving = regexp.MustCompile(`msg="(xds|admin) serving" address=(\S+)`)

// startControl starts sift-control on meshPath with ports chosen by the
// kernel, plus extra flags.
func startControl(t *testing.T, meshPath string, extra ...string) *controlProcess {
	t.Helper()
	return startControlArgs(t, append([]string{"--mesh", meshPath, "--mesh-poll-interval", "50ms"}, extra...)...)
}

// startControlArgs starts sift-control with args (the mesh source's among
// them), ports chosen by the kernel and debug logs.
func startControlArgs(t *testing.T, extra ...string) *controlProcess {
	t.Helper()
	args := append([]string{"--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0", "-l", "debug"}, extra...)
	cmd := exec.Command(siftControlBinary(t), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &controlProcess{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan struct{})
	var logsMu sync.Mutex
	var logs strings.Builder
	p.logs = func() string {
		logsMu.Lock()
		defer logsMu.Unlock()
		return logs.String()
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logsMu.Lock()
			logs.WriteString(sc.Text() + "\n")
			logsMu.Unlock()
			if m := serving.FindStringSubmatch(sc.Text()); m != nil {
				if m[1] == "xds" {
					p.xds = m[2]
					close(ready) // logged after admin
				} else {
					p.admin = m[2]
				}
			}
		}
		p.exitError = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			logsMu.Lock()
			t.Logf("sift-control logs:\n%s", logs.String())
			logsMu.Unlock()
		}
	})
	select {
	case <-ready:
	case <-p.exited:
		t.Fatalf("sift-control exited early: %v", p.exitError)
	case <-time.After(60 * time.Second):
		t.Fatal("sift-control did not report its address")
	}
	return p
}

// recv receives one message within limit (a stream receive with a deadline;
// the receive goroutine ends when the stream does).
func recv[T any](t *testing.T, rcv func() (T, error), limit time.Duration) T {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() { v, err := rcv(); ch <- result{v, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("receive: %v", r.err)
		}
		return r.v
	case <-time.After(limit):
		t.Fatalf("nothing received within %v", limit)
	}
	panic("unreachable")
}

func unpack[T proto.Message](t *testing.T, resp *discoveryv3.DiscoveryResponse, newT func() T) map[string]T {
	t.Helper()
	out := map[string]T{}
	for _, a := range resp.GetResources() {
		m := newT()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
		out[resourceName(m)] = m
	}
	return out
}

func resourceName(m proto.Message) string {
	switch r := m.(type) {
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName()
	case interface{ GetName() string }:
		return r.GetName()
	}
	return ""
}

func endpointsOf(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
		}
	}
	return out
}

func scrape(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitMetric polls /metrics until it has line (a condition, not a delay).
func waitMetric(t *testing.T, admin, line string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		body := scrape(t, admin)
		if strings.Contains(body, line+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %q:\n%s", line, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestControlPlaneEndToEnd runs the real sift-control on a mesh file and
// talks to it as Envoy would: an ADS state-of-the-world stream (CDS, then
// EDS for the clusters, then LDS, each ACKed) and a delta ADS stream. It
// checks that the resources pass sift-proxy's decoders, that a file edit is
// pushed on both streams, that a broken edit keeps the previous snapshot, the
// metrics, and a graceful stop on SIGTERM.
func TestControlPlaneEndToEnd(t *testing.T) {
	t.Parallel()
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(meshPath, []byte(controlMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := startControl(t, meshPath)
	conn, err := grpc.NewClient(cp.xds, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	const limit = 10 * time.Second

	// State of the world over ADS, as node web-0.shop.
	sotw, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "web-0.shop", Cluster: "web"}
	send := func(req *discoveryv3.DiscoveryRequest) {
		t.Helper()
		if err := sotw.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	ack := func(resp *discoveryv3.DiscoveryResponse, names ...string) {
		t.Helper()
		send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: names})
	}
	send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
	cds := recv(t, sotw.Recv, limit)
	clusters := unpack(t, cds, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
	var clusterNames, edsNames []string
	for name, c := range clusters {
		clusterNames = append(clusterNames, name)
		if c.GetType() == clusterv3.Cluster_EDS {
			edsNames = append(edsNames, c.GetEdsClusterConfig().GetServiceName())
		}
		if err := c.ValidateAll(); err != nil {
			t.Errorf("cluster %s: Envoy validation: %v", name, err)
		}
		if _, err := upstream.Build(c, upstream.Options{}); err != nil {
			t.Errorf("sift-proxy rejects cluster %s: %v", name, err)
		}
	}
	if diff := cmp.Diff([]string{"inbound|8080||", "outbound|3306||db.shop.svc.cluster.local", "outbound|80||web.shop.svc.cluster.local"},
		sorted(clusterNames)); diff != "" {
		t.Fatalf("clusters (-want +got):\n%s", diff)
	}
	ack(cds)
	edsNames = sorted(edsNames)
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: edsNames})
	eds := recv(t, sotw.Recv, limit)
	if eds.GetTypeUrl() != resource.EndpointType {
		t.Fatalf("got %s, want endpoints", eds.GetTypeUrl())
	}
	clas := unpack(t, eds, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
	if diff := cmp.Diff([]string{"10.0.0.10:8080"}, endpointsOf(clas["outbound|80||web.shop.svc.cluster.local"])); diff != "" {
		t.Errorf("web endpoints (-want +got):\n%s", diff)
	}
	ack(eds, edsNames...)
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType})
	lds := recv(t, sotw.Recv, limit)
	listeners := unpack(t, lds, func() *listenerv3.Listener { return &listenerv3.Listener{} })
	for name, l := range listeners {
		if err := l.ValidateAll(); err != nil {
			t.Errorf("listener %s: Envoy validation: %v", name, err)
		}
		if _, err := listener.Decode(l, filters.BuildContext{Clusters: upstream.NewManager()}); err != nil {
			t.Errorf("sift-proxy rejects listener %s: %v", name, err)
		}
	}
	if _, ok := listeners["outbound"]; !ok {
		t.Fatalf("no outbound listener in %v", listeners)
	}
	ack(lds)

	// Delta over ADS, as node db: wildcard listeners.
	delta, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "db"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	dl := recv(t, delta.Recv, limit)
	var dnames []string
	for _, r := range dl.GetResources() {
		dnames = append(dnames, r.GetName())
	}
	if diff := cmp.Diff([]string{"inbound", "outbound"}, sorted(dnames)); diff != "" {
		t.Fatalf("delta listeners (-want +got):\n%s", diff)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: dl.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, cp.admin, "sift_control_connected_proxies 2")
	waitMetric(t, cp.admin, `sift_control_xds_streams{flavor="delta_ads"} 1`)
	waitMetric(t, cp.admin, `sift_control_xds_streams{flavor="sotw_ads"} 1`)
	waitMetric(t, cp.admin, `sift_control_xds_requests_total{flavor="sotw_ads",result="ack",type="Listener"} 1`)

	// A broken edit: reported, and nothing is pushed.
	if err := os.WriteFile(meshPath, []byte(controlMesh+"  - name: BROKEN\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, cp.admin, `sift_control_mesh_reloads_total{result="error"} 1`)

	// A valid edit: a new web endpoint and a new detection timeout. The first
	// responses after it carry the edit (so the broken one was never served).
	// web-1 runs no proxy (meshed: false), so its endpoint is not withheld
	// until a proxy of its acknowledges its inbound listener.
	edited := strings.Replace(controlMesh, "detect_timeout: 2s", "detect_timeout: 3s", 1) + `  - name: web-1
    addresses: [10.0.0.11]
    labels: {app: web}
    meshed: false
`
	if err := os.WriteFile(meshPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sawEDS, sawLDS := false, false
	for !sawEDS || !sawLDS {
		resp := recv(t, sotw.Recv, limit)
		switch resp.GetTypeUrl() {
		case resource.EndpointType:
			clas := unpack(t, resp, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
			if diff := cmp.Diff([]string{"10.0.0.10:8080", "10.0.0.11:8080"}, endpointsOf(clas["outbound|80||web.shop.svc.cluster.local"])); diff != "" {
				t.Fatalf("web endpoints after the edit (-want +got):\n%s", diff)
			}
			sawEDS = true
			ack(resp, edsNames...)
		case resource.ListenerType:
			if got := detectTimeout(t, unpack(t, resp, func() *listenerv3.Listener { return &listenerv3.Listener{} })["outbound"]); got != 3*time.Second {
				t.Fatalf("pushed detect timeout %v, want 3s", got)
			}
			sawLDS = true
			// NACK it, as a proxy that could not use it would.
			send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: lds.GetVersionInfo(), ResponseNonce: resp.GetNonce(),
				ErrorDetail: &statuspb.Status{Code: 3, Message: "listener \"outbound\": test rejection"}})
		default:
			ack(resp)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the edit took %v to arrive", d)
	}
	dresp := recv(t, delta.Recv, limit)
	if dresp.GetTypeUrl() != resource.ListenerType || len(dresp.GetResources()) != 2 {
		t.Fatalf("delta push after the edit: %v", dresp)
	}
	for _, r := range dresp.GetResources() {
		var l listenerv3.Listener
		if err := r.GetResource().UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		if got := detectTimeout(t, &l); got != 3*time.Second {
			t.Errorf("delta listener %s: detect timeout %v, want 3s", l.GetName(), got)
		}
	}
	waitMetric(t, cp.admin, `sift_control_xds_requests_total{flavor="sotw_ads",result="nack",type="Listener"} 1`)
	waitMetric(t, cp.admin, `sift_control_mesh_reloads_total{result="ok"} 1`)

	// SIGTERM: a graceful stop, exit status 0, streams ended.
	if err := cp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cp.exited:
		if cp.exitError != nil {
			t.Fatalf("exit after SIGTERM: %v", cp.exitError)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sift-control did not stop on SIGTERM")
	}
	// Responses sent before the stop (the re-send after the NACK) may still
	// be buffered; then the streams end.
	for i := 0; ; i++ {
		if _, err := sotw.Recv(); err != nil {
			break
		}
		if i == 3 {
			t.Fatal("the ADS stream is still open after the stop")
		}
	}
	for i := 0; ; i++ {
		if _, err := delta.Recv(); err != nil {
			break
		}
		if i == 3 {
			t.Fatal("the delta stream is still open after the stop")
		}
	}
}

func detectTimeout(t *testing.T, l *listenerv3.Listener) time.Duration {
	t.Helper()
	for _, lf := range l.GetListenerFilters() {
		var d detectv1.Detect
		if lf.GetTypedConfig().UnmarshalTo(&d) == nil {
			return d.GetTimeout().AsDuration()
		}
	}
	t.Fatalf("listener %s has no detect filter", l.GetName())
	return 0
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}
