package test

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/netns"
)

// relNSPrefix starts the names of the namespaces the chaos scenarios that
// need a network create (the mesh's topology, mesh_mtls_test.go).
const relNSPrefix = "rel-"

// partitionURL is a service that only exists in the configuration pushed
// during the partition: the client reaches it once its proxy has that
// configuration.
const partitionURL = "http://10.96.0.70/"

// TestChaosMeshPartition is TestChaosControlPlanePartition with the real
// sift-control: it cuts the network between sift-control and client-0's
// sift-proxy in the mTLS mesh (mesh_mtls_test.go) while HTTP and
// opaque (server-first) traffic runs from client-0 to app-0: iptables in
// client-0 drops every packet to and from sift-control's xDS port, as a
// partition does (no reset, nothing). Meanwhile sift-control pushes a new
// configuration (a new service), which app-0's proxy, not partitioned,
// takes. What must hold: no request or connection fails (client-0 serves on
// its last good configuration); client-0's proxy notices the dead connection
// (the keepalive pings sift-control bootstrap configures) and keeps trying; once the partition heals it reconnects, receives the pushed
// configuration and ACKs it — the new service is reachable.
func TestChaosMeshPartition(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("partition scenario skipped: %v", err)
	}
	t.Parallel()
	e := startMTLSEnv(t, mtlsEnvOptions{nsPrefix: relNSPrefix})
	client, proxy := e.ns["client-0"], e.proxies["client-0"]
	hold := time.Duration(chaosSize(3, 30)) * time.Second // the partition, after the proxy noticed it

	// Traffic first, then the partition.
	if _, err := waitGet(e, mtlsWebURL); err != nil {
		t.Fatalf("before the partition: %v", err)
	}
	load := startMeshLoad(e.client, mtlsWebURL, 2, 1<<30)
	defer load.finish()
	opaque := startOpaqueLoad(client, mtlsGreet, 2)
	defer opaque.finish()
	load.until(t, 20*time.Second, "traffic before the partition", func() bool { return load.count() >= 20 })

	xdsHost, xdsPort, _ := strings.Cut(meshXDS, ":")
	rules := [][]string{
		{"OUTPUT", "-p", "tcp", "-d", xdsHost, "--dport", xdsPort, "-j", "DROP"},
		{"INPUT", "-p", "tcp", "-s", xdsHost, "--sport", xdsPort, "-j", "DROP"},
	}
	healed := false
	heal := func() {
		if healed {
			return
		}
		healed = true
		for _, r := range rules {
			if err := client.Iptables(append([]string{"-D"}, r...)...); err != nil {
				t.Errorf("healing the partition: %v", err)
			}
		}
	}
	defer heal()
	partitionMark, started := proxy.logCount(), time.Now()
	for _, r := range rules {
		if err := client.Iptables(append([]string{"-A"}, r...)...); err != nil {
			t.Fatal(err)
		}
	}
	duringMark := load.count()

	// The proxy notices: its stream to sift-control ends.
	proxy.waitLog(t, partitionMark, 60*time.Second, "the xDS stream ending during the partition",
		jsonRecord(map[string]string{"msg": "xds stream ended; reconnecting (serving the last good configuration meanwhile)"}))
	noticed := time.Since(started)

	// A push during the partition: app-0's proxy takes it, client-0's cannot.
	appMark := e.proxies["app-0"].logCount()
	writeFileAtomic(t, e.meshPath, strings.Replace(mtlsMeshYAML, "  services:\n", `  services:
  - name: late
    cluster_ips: [10.96.0.70]
    selector: {app: shop}
    ports: [{name: http, port: 80, target_port: 8080}]
`, 1))
	e.proxies["app-0"].waitLog(t, appMark, 30*time.Second, "app-0 accepting the push made during the partition",
		jsonRecord(map[string]string{"msg": "xds update accepted"}))
	time.Sleep(hold)
	if l := proxy.findLog(partitionMark, `"msg":"xds update accepted"`); l != "" {
		t.Errorf("client-0 accepted an update during the partition: %s", l)
	}
	attempts := proxy.countLog(partitionMark, `"msg":"xds stream ended; reconnecting`)
	served := load.count() - duringMark
	if served == 0 {
		t.Error("no HTTP request completed during the partition")
	}

	// Heal: the proxy reconnects, takes the push and ACKs it.
	healMark, healedAt := proxy.logCount(), time.Now()
	heal()
	proxy.waitLog(t, healMark, 120*time.Second, "client-0 accepting the push after the partition healed",
		jsonRecord(map[string]string{"msg": "xds update accepted"}))
	resumed := time.Since(healedAt)
	body, err := waitGet(e, partitionURL)
	if err != nil {
		t.Errorf("the service pushed during the partition, after it healed: %v", err)
	} else if !strings.HasPrefix(body, "name=app-0") {
		t.Errorf("the service pushed during the partition answered %q", body)
	}
	mark := load.count()
	load.until(t, 20*time.Second, "traffic after the partition", func() bool { return load.count()-mark >= 20 })
	load.finish()
	opaque.finish()

	failedHTTP, httpFailures := load.failedRequests()
	failedOpaque, opaqueFailures := opaque.failed()
	if failedHTTP > 0 {
		t.Errorf("%d of %d HTTP requests failed; first: %v", failedHTTP, load.count(), httpFailures)
	}
	if failedOpaque > 0 {
		t.Errorf("%d of %d opaque connections failed; first: %v", failedOpaque, opaque.count(), opaqueFailures)
	}
	chaosReport(t, "a network partition between sift-proxy and sift-control (the mTLS mesh)", [][2]string{
		{"partition", "iptables DROP both ways between client-0 and sift-control's xDS port, in client-0's namespace"},
		{"the proxy noticed (the bootstrap's keepalive pings, 10 s / 5 s; the stream ended)", noticed.Round(100 * time.Millisecond).String()},
		{"partition held after that", hold.String()},
		{"reconnection attempts during the partition", fmt.Sprint(attempts)},
		{"a push during the partition", "taken by app-0 (not partitioned); not by client-0"},
		{"after the partition healed: reconnected and the push ACKed in", resumed.Round(100 * time.Millisecond).String()},
		{"the service pushed during the partition, after it healed", "served"},
		{"HTTP requests / failed (during the partition)", fmt.Sprintf("%d / %d (%d)", load.count(), failedHTTP, served)},
		{"opaque server-first connections / failed", fmt.Sprintf("%d / %d", opaque.count(), failedOpaque)},
	})
}

// waitGet fetches url from client-0 until it answers 200 (a new service may
// race its EDS) and returns the body; it gives up after 30 s.
func waitGet(e *mtlsEnv, url string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := e.client.Get(url)
		if err == nil {
			raw, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			b := string(raw)
			if rerr == nil && resp.StatusCode == 200 {
				return b, nil
			}
			err = fmt.Errorf("status %d, %q, %v", resp.StatusCode, b, rerr)
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// findLog returns the first line logged from index from on that contains
// s, or "".
func (p *meshProc) findLog(from int, s string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines[min(from, len(p.lines)):] {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// countLog counts the lines logged from index from on that contain s.
func (p *meshProc) countLog(from int, s string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines[min(from, len(p.lines)):] {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}
