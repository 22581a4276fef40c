package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/netns"
	"github.com/siftmesh/sift/internal/testnet"
)

// The mesh end-to-end test: real sift-control and sift-proxy processes,
// real transparent interception with iptables, in network namespaces.
//
// Topology (every address lives only inside namespaces this test creates;
// the "net" namespace has no uplink, so nothing can leave the sandbox):
//
//	net:      bridge br0 10.77.0.1/24; sift-control, xDS on 10.77.0.1:18000
//	client-0: 10.77.0.2 (veth to br0); sift-proxy, outbound 127.0.0.1:4140;
//	          this test's HTTP and TCP clients
//	app-0:    10.77.0.10 (veth to br0); sift-proxy, inbound 0.0.0.0:4143 and
//	          outbound; HTTP backend 127.0.0.1:8080, greeter 127.0.0.1:5432
//	app-1:    10.77.0.11, as app-0
//
// Interception and the rest:
//
//   - client: nat OUTPUT REDIRECT of TCP to the service range 10.96.0.0/16
//     to 4140, the outbound listener. The proxy itself dials workload
//     addresses (10.77.0.x), which the rule leaves alone: no loop, no owner
//     match needed. The route for 10.96.0.0/16 only exists so that connect()
//     finds one before the redirect; nothing is ever sent on it.
//   - app-N: nat PREROUTING REDIRECT of TCP to the workload's ports 8080 and
//     5432 to 4143, the inbound listener, which forwards by original
//     destination port to 127.0.0.1:<port>. The backends listen on loopback
//     only: nothing but the local inbound proxy can reach them.
//   - Clients and backends run in this test process: their sockets are
//     opened on a thread that entered the namespace (netns.NS.Do), so their
//     traffic is the namespace's like a process's there. Only the proxies
//     and sift-control are separate processes (`ip netns exec`).
//
// The mesh ("shop"): service web, 10.96.0.10:80 → 8080, protocol unknown (the
// outbound proxy detects HTTP); service pg, 10.96.0.20:5432, on the default
// opaque list (no detection anywhere; the greeter speaks first). Both select
// app=shop. app-1 starts labelled app=standby: configured, but not in the
// services until scenario 3 adds it, so that its proxy is ready before
// traffic is sent to it. The detection timeout is an hour: a connection that
// waited for detection would never complete within the test's deadlines.
const (
	meshXDS        = "10.77.0.1:18000"
	meshServiceNet = "10.96.0.0/16"
	meshWebURL     = "http://10.96.0.10/"
	meshPG         = "10.96.0.20:5432"
)

var meshWorkloadIPs = map[string]string{"client-0": "10.77.0.2", "app-0": "10.77.0.10", "app-1": "10.77.0.11"}

// meshYAML is the mesh file: client-0, then each app workload named in apps
// with its app label ("shop" puts it in the services); absent: not in the mesh.
func meshYAML(apps map[string]string) string {
	var b strings.Builder
	b.WriteString(`detect_timeout: 1h
namespaces:
- name: shop
  services:
  - name: web
    cluster_ips: [10.96.0.10]
    selector: {app: shop}
    ports: [{name: http, port: 80, target_port: 8080}]
  - name: pg
    cluster_ips: [10.96.0.20]
    selector: {app: shop}
    ports: [{name: pg, port: 5432}]
  workloads:
  - name: client-0
    addresses: [10.77.0.2]
    labels: {app: client}
`)
	for _, name := range []string{"app-0", "app-1"} {
		label, ok := apps[name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, `  - name: %s
    addresses: [%s]
    labels: {app: %s}
    ports: [{name: http, port: 8080}, {name: pg, port: 5432}]
`, name, meshWorkloadIPs[name], label)
	}
	return b.String()
}

// meshEnv is the running topology.
type meshEnv struct {
	run      int64
	net      *netns.NS
	ns       map[string]*netns.NS // by workload name
	proxies  map[string]*meshProc // sift-proxy by workload name
	control  *meshProc            // the current sift-control
	meshPath string
	client   *http.Client // from the client namespace, one connection per request
}

func TestMeshEndToEnd(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("mesh end-to-end test skipped: %v", err)
	}
	t.Parallel()
	removeStaleNamespaces(t)
	proxyBin, controlBin := siftProxyBinary(t), siftControlBinary(t)

	e := &meshEnv{run: meshRunSeq.Add(1), ns: map[string]*netns.NS{}, proxies: map[string]*meshProc{}}
	e.buildNetwork(t)

	// Backends, in the app namespaces on loopback.
	for _, app := range []string{"app-0", "app-1"} {
		ns := e.ns[app]
		ln, err := ns.Listen("tcp", "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		httpServeIn(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			remote, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "name=%s host=%s remote=%s xff=%q request-id=%t", app, r.Host, remote, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Request-Id") != "")
		}))
		ln, err = ns.Listen("tcp", "127.0.0.1:5432")
		if err != nil {
			t.Fatal(err)
		}
		testnet.Serve(t, ln, func(c net.Conn) {
			fmt.Fprintf(c, "hello from %s\n", app)
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(c, "got %s", line)
			}
		})
	}

	// sift-control, then a proxy per workload. The client's proxy uses delta
	// ADS, the apps' state-of-the-world ADS.
	e.meshPath = filepath.Join(t.TempDir(), "mesh.yaml")
	writeFileAtomic(t, e.meshPath, meshYAML(map[string]string{"app-0": "shop", "app-1": "standby"}))
	e.control = e.startControl(t, controlBin)
	for _, w := range []struct {
		name      string
		delta     bool
		listeners []string
	}{
		{"client-0", true, []string{"outbound"}},
		{"app-0", false, []string{"outbound", "inbound"}},
		{"app-1", false, []string{"outbound", "inbound"}},
	} {
		cfg := writeBootstrap(t, xdsBootstrap(meshXDS, w.delta, true), nil)
		p := startMeshProc(t, "sift-proxy "+w.name, e.ns[w.name].Command(proxyBin, "-c", cfg,
			"--service-node", w.name+".shop", "--service-cluster", "shop",
			"--log-format", "json", "-l", "debug", "--drain-time-s", "10"))
		for _, l := range w.listeners {
			addr := map[string]string{"outbound": "127.0.0.1:4140", "inbound": "0.0.0.0:4143"}[l]
			p.waitLog(t, 0, 30*time.Second, "its "+l+" listener on "+addr,
				jsonRecord(map[string]string{"msg": "listening", "listener": l, "address": addr}))
		}
		e.proxies[w.name] = p
	}
	e.client = &http.Client{
		Transport: &http.Transport{DialContext: e.ns["client-0"].DialContext, DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
	t.Cleanup(e.client.CloseIdleConnections)

	// Each scenario needs the previous one's state: they run in order and
	// stop at the first failure.
	for _, sc := range []struct {
		name string
		run  func(*testing.T, *meshEnv)
	}{
		{"HTTPThroughBothProxies", meshHTTP},
		{"ServerSpeaksFirstOnOpaquePort", meshServerFirst},
		{"MeshEditUnderLoad", meshEditUnderLoad},
		{"ControlPlaneKilledUnderLoad", func(t *testing.T, e *meshEnv) { meshControlKilled(t, e, controlBin) }},
	} {
		if !t.Run(sc.name, func(t *testing.T) { sc.run(t, e) }) {
			t.FailNow()
		}
	}
}

// buildNetwork creates the namespaces, links and interception rules.
func (e *meshEnv) buildNetwork(t *testing.T) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	e.net = addNamespace(t, e.run, "net")
	must(e.net.IP("link", "add", "br0", "type", "bridge"))
	must(e.net.IP("addr", "add", "10.77.0.1/24", "dev", "br0"))
	must(e.net.IP("link", "set", "br0", "up"))
	for _, w := range []string{"client-0", "app-0", "app-1"} {
		ns := addNamespace(t, e.run, w)
		e.ns[w] = ns
		peer := "v-" + w
		must(netns.Veth(e.net, peer, ns, "eth0"))
		must(e.net.IP("link", "set", peer, "master", "br0"))
		must(ns.IP("addr", "add", meshWorkloadIPs[w]+"/24", "dev", "eth0"))
	}
	client := e.ns["client-0"]
	must(client.IP("route", "add", meshServiceNet, "via", "10.77.0.1"))
	must(client.Iptables("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", meshServiceNet, "-j", "REDIRECT", "--to-ports", "4140"))
	for _, app := range []string{"app-0", "app-1"} {
		for _, port := range []string{"8080", "5432"} {
			must(e.ns[app].Iptables("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", port, "-j", "REDIRECT", "--to-ports", "4143"))
		}
	}
}

// startControl starts sift-control in the net namespace on meshXDS and
// waits until it serves.
func (e *meshEnv) startControl(t *testing.T, bin string) *meshProc {
	t.Helper()
	p := startMeshProc(t, "sift-control", e.net.Command(bin, "--mesh", e.meshPath, "--xds-address", meshXDS,
		"--admin-address", "", "--mesh-poll-interval", "50ms", "-l", "debug"))
	p.waitLog(t, 0, 30*time.Second, "xds serving", func(l string) bool { return strings.Contains(l, `msg="xds serving"`) })
	return p
}

// Scenario 1: an HTTP request to the web service's cluster IP goes client →
// outbound proxy (detection: HTTP/1.1) → app-0's inbound proxy (detection
// again) → the backend on app-0's loopback, and back.
func meshHTTP(t *testing.T, e *meshEnv) {
	// The first request may race the outbound listener's EDS (the listener
	// logs "listening" when bound): poll for the first answer.
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := e.client.Get(meshWebURL)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				body = string(b)
				break
			}
			err = fmt.Errorf("status %d, %q, %v", resp.StatusCode, b, rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s from the client namespace: %v", meshWebURL, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The backend named itself; it saw the Host the client sent; the
	// connection came from its own inbound proxy over loopback; the HTTP
	// connection manager (sift-control's default for detected HTTP) served
	// the request — it generated an x-request-id — and, with
	// use_remote_address unset, added no X-Forwarded-For, as Envoy does.
	if want := `name=app-0 host=10.96.0.10 remote=127.0.0.1 xff="" request-id=true`; body != want {
		t.Errorf("body = %q, want %q", body, want)
	}
	// The path, from the proxies' own accounts.
	e.proxies["client-0"].waitLog(t, 0, 10*time.Second, "the outbound HTTP connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "outbound", "local": "10.96.0.10:80",
		"chain": "http|web.shop.svc.cluster.local:80|10.96.0.10", "detected": "http/1.1", "reason": "match",
	}))
	rec := e.proxies["app-0"].waitLog(t, 0, 10*time.Second, "the inbound HTTP connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "inbound", "local": "10.77.0.10:8080",
		"chain": "http|inbound:8080", "detected": "http/1.1", "reason": "match",
	}))
	if !strings.Contains(rec, `"remote":"10.77.0.2:`) {
		t.Errorf("app-0's inbound connection did not come from the client's proxy: %s", rec)
	}
}

// Scenario 2: a server-speaks-first service on 5432 (default opaque list)
// greets through both proxies at once: with an hour of detection timeout, a
// greeting at all proves that neither proxy waited for the client.
func meshServerFirst(t *testing.T, e *meshEnv) {
	from := map[string]int{"client-0": e.proxies["client-0"].logCount(), "app-0": e.proxies["app-0"].logCount()}
	c := dialIn(t, e.ns["client-0"], meshPG)
	r := bufio.NewReader(c)
	greeting, err := r.ReadString('\n')
	if err != nil || greeting != "hello from app-0\n" {
		t.Fatalf("greeting %q, %v; want hello from app-0", greeting, err)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if reply, err := r.ReadString('\n'); err != nil || reply != "got ping\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	e.proxies["client-0"].waitLog(t, from["client-0"], 10*time.Second, "the outbound opaque connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "outbound", "local": meshPG,
		"chain": "opaque|pg.shop.svc.cluster.local:5432|10.96.0.20", "reason": "opaque_port",
	}))
	e.proxies["app-0"].waitLog(t, from["app-0"], 10*time.Second, "the inbound opaque connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "inbound", "local": "10.77.0.10:5432",
		"chain": "opaque|inbound:5432", "reason": "opaque_port",
	}))
}

// meshLoadWorkers and meshLoadMax bound every load: 4 workers of at most
// meshLoadMax requests each.
const (
	meshLoadWorkers = 4
	meshLoadMax     = 5000
)

// Scenario 3: under load, the mesh file gains app-1 in the services, then
// loses app-0 altogether. No request fails; traffic reaches app-1, then only
// app-1.
func meshEditUnderLoad(t *testing.T, e *meshEnv) {
	load := startMeshLoad(e.client, meshWebURL, meshLoadWorkers, meshLoadMax)
	defer load.finish()
	load.until(t, 20*time.Second, "traffic from the load", func() bool { return load.count() >= 50 })

	mark := load.count()
	writeFileAtomic(t, e.meshPath, meshYAML(map[string]string{"app-0": "shop", "app-1": "shop"}))
	load.until(t, 20*time.Second, "traffic on both app-0 and app-1 after adding app-1", func() bool {
		got := load.since(mark)
		return got["app-0"] > 0 && got["app-1"] > 0
	})

	// app-0 leaves the mesh: its proxy keeps its last configuration (and
	// the backend runs on), so requests already on their way still land.
	writeFileAtomic(t, e.meshPath, meshYAML(map[string]string{"app-1": "shop"}))
	load.until(t, 20*time.Second, "200 answers in a row from app-1 after removing app-0", func() bool { return load.streak("app-1") >= 200 })
	load.finish()
	if n, failures := load.failedRequests(); n > 0 {
		t.Errorf("%d of %d requests failed during the mesh edits; first: %v", n, load.count(), failures)
	} else {
		t.Logf("%d requests during the edits, none failed", load.count())
	}
}

// Scenario 4: sift-control is killed (SIGKILL) under load: nothing fails
// while it is down and traffic stays on its last configuration; it restarts
// on the same address with an edited mesh (app-0 back, app-1 gone) and the
// proxies reconnect and resync.
func meshControlKilled(t *testing.T, e *meshEnv, controlBin string) {
	client := e.proxies["client-0"]
	load := startMeshLoad(e.client, meshWebURL, meshLoadWorkers, meshLoadMax)
	defer load.finish()
	load.until(t, 20*time.Second, "traffic from the load", func() bool { return load.count() >= 50 })

	logMark := client.logCount()
	e.control.kill()
	client.waitLog(t, logMark, 20*time.Second, "its xDS stream ending", jsonRecord(map[string]string{
		"msg": "xds stream ended; reconnecting (serving the last good configuration meanwhile)",
	}))
	down := load.count()
	load.until(t, 20*time.Second, "300 answers with the control plane down", func() bool { return load.count()-down >= 300 })
	if got := load.since(down); len(got) != 1 || got["app-1"] == 0 {
		t.Errorf("answers with the control plane down: %v, want all from app-1 (the last configuration)", got)
	}

	writeFileAtomic(t, e.meshPath, meshYAML(map[string]string{"app-0": "shop"}))
	e.control = e.startControl(t, controlBin)
	load.until(t, 30*time.Second, "200 answers in a row from app-0 after the restart", func() bool { return load.streak("app-0") >= 200 })
	load.finish()
	if n, failures := load.failedRequests(); n > 0 {
		t.Errorf("%d of %d requests failed around the control-plane restart; first: %v", n, load.count(), failures)
	} else {
		t.Logf("%d requests around the control-plane restart, none failed", load.count())
	}

	// Every proxy came back to the new control plane; app-1, no longer in
	// the mesh, keeps its last configuration (its inbound listener serves).
	for _, w := range []string{"client-0", "app-0", "app-1"} {
		e.control.waitLog(t, 0, 30*time.Second, w+"'s proxy reconnecting", func(l string) bool {
			return strings.Contains(l, `msg="proxy connected" node=`+w+".shop")
		})
	}
	c := dialIn(t, e.ns["client-0"], meshWorkloadIPs["app-1"]+":5432")
	if greeting, err := bufio.NewReader(c).ReadString('\n'); err != nil || greeting != "hello from app-1\n" {
		t.Errorf("app-1 (out of the mesh) through its inbound proxy: %q, %v", greeting, err)
	}
}
