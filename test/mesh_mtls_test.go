package test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/siftmesh/sift/internal/netns"
	"github.com/siftmesh/sift/internal/testnet"
)

// The mesh over mTLS, end to end: sift-control as the mesh CA (--ca-dir)
// serving xDS over TLS (--xds-tls), proxies started with the bootstraps
// `sift-control bootstrap` writes, and a mesh file with `mtls: true`.
//
// Topology (as TestMeshEndToEnd's, one app workload):
//
//	net:      bridge br0 10.77.0.1/24; sift-control, xDS over TLS on 10.77.0.1:18000
//	client-0: 10.77.0.2, service account "client"; sift-proxy (outbound);
//	          the test's clients
//	app-0:    10.77.0.10, service account "shop"; sift-proxy (inbound 4143 and
//	          outbound); on loopback: HTTP 8080, greeter 5432 (default opaque
//	          list), greeter 7000 (not on it: protocol unknown), TLS echo 8443
//
// Interception: the client's OUTPUT to the service range goes to 4140; app-0's
// PREROUTING to its application ports goes to 4143. Between the proxies:
// detected HTTP is sent to app-0:8080 over mTLS (redirected to 4143, whose
// chain for 8080 terminates TLS); everything opaque is sent to app-0:4143
// itself over mTLS with ALPN sift.opaque/1 and the opaque-transport header
// (docs/mesh-transport.md) — no redirect involved.
//
// The services ("shop", all selecting app=shop): web 10.96.0.10:80 → 8080
// (unknown), pg 10.96.0.20:5432 (opaque), greet 10.96.0.30:7000 (unknown,
// the server speaks first), secure 10.96.0.40:443 → 8443 (unknown, the app
// speaks TLS). The detection timeout is an hour: a connection that waited for
// detection would never complete within the test's deadlines.
const (
	mtlsWebURL = "http://10.96.0.10/"
	mtlsPG     = "10.96.0.20:5432"
	mtlsGreet  = "10.96.0.30:7000"
	mtlsSecure = "10.96.0.40:443"
	mtlsRPC    = "10.96.0.50:9090"
	mtlsApp    = "10.77.0.10"

	mtlsClientID = "spiffe://cluster.local/ns/shop/sa/client"
	mtlsServerID = "spiffe://cluster.local/ns/shop/sa/shop"
)

const mtlsMeshYAML = `mtls: true
detect_timeout: 1h
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
  - name: greet
    cluster_ips: [10.96.0.30]
    selector: {app: shop}
    ports: [{name: greet, port: 7000}]
  - name: secure
    cluster_ips: [10.96.0.40]
    selector: {app: shop}
    ports: [{name: https, port: 443, target_port: 8443}]
  - name: rpc
    cluster_ips: [10.96.0.50]
    selector: {app: shop}
    ports: [{name: grpc, port: 9090}]
  workloads:
  - name: client-0
    addresses: [10.77.0.2]
    labels: {app: client}
    service_account: client
  - name: app-0
    addresses: [10.77.0.10]
    labels: {app: shop}
    service_account: shop
    ports:
    - {name: http, port: 8080, authorized_clients: [{namespace: shop, service_account: client}]}
    - {name: pg, port: 5432}
    - {name: greet, port: 7000, authorized_clients: [{namespace: shop, service_account: client}]}
    - {name: https, port: 8443}
    - {name: grpc, port: 9090}
    - {name: open, port: 8081, plaintext: true}
`

// mtlsEnv is the running topology.
type mtlsEnv struct {
	net      *netns.NS
	ns       map[string]*netns.NS
	proxies  map[string]*meshProc
	control  *meshProc
	caDir    string
	meshPath string       // the mesh file sift-control watches
	client   *http.Client // from the client namespace, one connection per request
	appCert  *x509.Certificate
	greeted  atomic.Int64 // connections the greeters accepted

	// /hold requests: the web app answers them once mtlsHolds are in
	// flight together.
	holds   atomic.Int64
	holdsMu sync.Mutex
	held    chan struct{}
}

// mtlsHolds is how many /hold requests the web app waits for.
const mtlsHolds = 8

func TestMeshMTLS(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("mesh mTLS end-to-end test skipped: %v", err)
	}
	t.Parallel()
	e := startMTLSEnv(t, mtlsEnvOptions{})
	for _, sc := range []struct {
		name string
		run  func(*testing.T, *mtlsEnv)
	}{
		{"HTTPOverMTLS", mtlsHTTP},
		{"GRPCOverMTLS", mtlsGRPC},
		{"ServerFirst", mtlsServerFirst},
		{"ApplicationTLS", mtlsAppTLS},
		{"InboundRefusesPlaintextAndStrangers", mtlsRefusals},
		{"RootRotationUnderLoad", mtlsRotation},
	} {
		if !t.Run(sc.name, func(t *testing.T) { sc.run(t, e) }) {
			t.FailNow()
		}
	}
}

// mtlsEnvOptions vary the topology startMTLSEnv builds.
type mtlsEnvOptions struct {
	// nsPrefix starts the namespaces' names; "" means meshNSPrefix.
	nsPrefix string
	// meshYAML is the mesh file; "" means mtlsMeshYAML.
	meshYAML string
	// controlArgs are added to sift-control's command line.
	controlArgs []string
	// bootstrapArgs are added to `sift-control bootstrap`'s.
	bootstrapArgs []string
	// proxyArgs are added to each sift-proxy's.
	proxyArgs []string
}

// startMTLSEnv builds the topology described above: the namespaces, the
// applications, sift-control and both proxies, up and listening. Everything
// is stopped and removed when the test ends.
func startMTLSEnv(t *testing.T, o mtlsEnvOptions) *mtlsEnv {
	t.Helper()
	if o.nsPrefix == "" {
		o.nsPrefix = meshNSPrefix
	}
	if o.meshYAML == "" {
		o.meshYAML = mtlsMeshYAML
	}
	removeStaleNamespaces(t, o.nsPrefix)
	proxyBin, controlBin := siftProxyBinary(t), siftControlBinary(t)
	run := meshRunSeq.Add(1)
	e := &mtlsEnv{ns: map[string]*netns.NS{}, proxies: map[string]*meshProc{}, meshPath: filepath.Join(t.TempDir(), "mesh.yaml")}

	// The network.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	e.net = addPrefixedNamespace(t, o.nsPrefix, run, "net")
	must(e.net.IP("link", "add", "br0", "type", "bridge"))
	must(e.net.IP("addr", "add", "10.77.0.1/24", "dev", "br0"))
	must(e.net.IP("link", "set", "br0", "up"))
	for _, w := range []string{"client-0", "app-0"} {
		ns := addPrefixedNamespace(t, o.nsPrefix, run, w)
		e.ns[w] = ns
		must(netns.Veth(e.net, "v-"+w, ns, "eth0"))
		must(e.net.IP("link", "set", "v-"+w, "master", "br0"))
		must(ns.IP("addr", "add", meshWorkloadIPs[w]+"/24", "dev", "eth0"))
	}
	client, app := e.ns["client-0"], e.ns["app-0"]
	must(client.IP("route", "add", meshServiceNet, "via", "10.77.0.1"))
	must(client.Iptables("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", meshServiceNet, "-j", "REDIRECT", "--to-ports", "4140"))
	for _, port := range []string{"8080", "8081", "5432", "7000", "8443", "9090"} {
		must(app.Iptables("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", port, "-j", "REDIRECT", "--to-ports", "4143"))
	}

	// The applications, on app-0's loopback.
	appHTTP := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			// Answers once mtlsHolds requests are in flight together.
			e.holds.Add(1)
			e.holdsMu.Lock()
			if e.held == nil {
				e.held = make(chan struct{})
			}
			held := e.held
			if e.holds.Load() == mtlsHolds {
				close(held)
			}
			e.holdsMu.Unlock()
			select {
			case <-held:
			case <-time.After(10 * time.Second):
				http.Error(w, "not all held requests arrived", http.StatusGatewayTimeout)
				return
			}
		}
		remote, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "name=app-0 host=%s remote=%s proto=%s orig=%q", r.Host, remote, r.Proto, r.Header.Get("L5d-Orig-Proto"))
	})
	ln, err := app.Listen("tcp", "127.0.0.1:8080")
	must(err)
	httpServeIn(t, ln, appHTTP)
	ln, err = app.Listen("tcp", "127.0.0.1:8081") // the port that also takes plaintext
	must(err)
	httpServeIn(t, ln, appHTTP)
	for _, port := range []string{"5432", "7000"} {
		ln, err := app.Listen("tcp", "127.0.0.1:"+port)
		must(err)
		greet := greetHandler("app-0:" + port)
		testnet.Serve(t, ln, func(c net.Conn) { e.greeted.Add(1); greet(c) })
	}
	ln, err = app.Listen("tcp", "127.0.0.1:9090")
	must(err)
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("shop.rpc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	appTLS, appCert := selfSignedTLS(t, "secure.shop")
	e.appCert = appCert
	ln, err = app.Listen("tcp", "127.0.0.1:8443")
	must(err)
	testnet.Serve(t, tls.NewListener(ln, appTLS), func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "tls got %s", line)
		}
	})

	// sift-control: the CA, xDS over TLS with a certificate for its
	// bridge address, the current trust bundle kept in a file that every
	// proxy's bootstrap reads (trusted_ca.filename, watched), as a shared
	// volume would, so that xDS survives a root rotation.
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle.pem")
	writeFileAtomic(t, e.meshPath, o.meshYAML)
	e.caDir = filepath.Join(dir, "ca")
	e.control = startMeshProc(t, "sift-control", e.net.Command(controlBin, append([]string{"--mesh", e.meshPath, "--xds-address", meshXDS,
		"--admin-address", "", "--ca-dir", e.caDir, "--xds-tls", "--xds-tls-names", "sift-control,10.77.0.1",
		"--ca-poll-interval", "50ms", "--ca-bundle-out", bundle, "-l", "debug"}, o.controlArgs...)...))
	e.control.waitLog(t, 0, 30*time.Second, "xds serving", func(l string) bool { return strings.Contains(l, `msg="xds serving"`) })

	// The proxies, with the bootstraps sift-control writes: the node token,
	// xDS over TLS trusting the mesh root.
	for _, w := range []struct {
		name      string
		listeners []string
	}{
		{"client-0", []string{"outbound"}},
		{"app-0", []string{"outbound", "inbound"}},
	} {
		boot := filepath.Join(dir, w.name+"-bootstrap.yaml")
		out, err := exec.Command(controlBin, append([]string{"bootstrap", "--ca-dir", e.caDir, "--node", w.name + ".shop",
			"--xds-address", meshXDS, "--admin-address", "127.0.0.1:9901", "--trust-file", bundle, "-o", boot}, o.bootstrapArgs...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("sift-control bootstrap: %v\n%s", err, out)
		}
		p := startMeshProc(t, "sift-proxy "+w.name, e.ns[w.name].Command(proxyBin, append([]string{"-c", boot,
			"--log-format", "json", "-l", "debug", "--drain-time-s", "1"}, o.proxyArgs...)...))
		for _, l := range w.listeners {
			addr := map[string]string{"outbound": "127.0.0.1:4140", "inbound": "0.0.0.0:4143"}[l]
			p.waitLog(t, 0, 30*time.Second, "its "+l+" listener on "+addr,
				jsonRecord(map[string]string{"msg": "listening", "listener": l, "address": addr}))
		}
		e.proxies[w.name] = p
	}
	e.client = &http.Client{
		Transport: &http.Transport{DialContext: client.DialContext, DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// greetHandler speaks first ("hello from <name>"), then echoes lines.
func greetHandler(name string) func(net.Conn) {
	return func(c net.Conn) {
		fmt.Fprintf(c, "hello from %s\n", name)
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "got %s", line)
		}
	}
}

// selfSignedTLS is a server configuration with a fresh self-signed
// certificate for name, and that certificate.
func selfSignedTLS(t *testing.T, name string) (*tls.Config, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}, cert
}

// admin fetches path from the admin interface of w's proxy.
func (e *mtlsEnv) admin(t *testing.T, w, path string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: e.ns[w].DialContext}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://127.0.0.1:9901" + path)
	if err != nil {
		t.Fatalf("%s's admin %s: %v", w, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s's admin %s: status %d, %v: %s", w, path, resp.StatusCode, err, b)
	}
	return string(b)
}

// waitAdmin polls path on w's admin until every line in want is in it.
func (e *mtlsEnv) waitAdmin(t *testing.T, w, path string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		body := e.admin(t, w, path)
		missing := ""
		for _, s := range want {
			if !strings.Contains(body, s) {
				missing = s
				break
			}
		}
		if missing == "" {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's %s lacks %q:\n%s", w, path, missing, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMetricLine polls w's /stats/prometheus until one line holds every
// string in want.
// get sends req with the client namespace's client and returns the body
// of a 200 answer; anything else fails the test.
func (e *mtlsEnv) get(t *testing.T, req *http.Request) string {
	t.Helper()
	resp, err := e.client.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL, err)
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("%s %s: status %d, %q, %v", req.Method, req.URL, resp.StatusCode, b, err)
	}
	return string(b)
}

// metricValue is the value of the one line of w's metrics that holds all of
// want (waiting for it as waitMetricLine does).
func (e *mtlsEnv) metricValue(t *testing.T, w string, want ...string) int {
	t.Helper()
	l := e.waitMetricLine(t, w, want...)
	v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
	if err != nil {
		t.Fatalf("metric line %q: %v", l, err)
	}
	return int(v)
}

func (e *mtlsEnv) waitMetricLine(t *testing.T, w string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		body := e.admin(t, w, "/stats/prometheus")
	lines:
		for _, l := range strings.Split(body, "\n") {
			for _, s := range want {
				if !strings.Contains(l, s) {
					continue lines
				}
			}
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line of %s's /stats/prometheus holds all of %q:\n%s", w, want, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Scenario 1: HTTP to the web service (detected on the outbound side) is
// sent to app-0:8080 over mTLS; app-0's inbound terminates it (the client's
// SPIFFE ID on its metrics) and serves it with the connection manager.
func mtlsHTTP(t *testing.T, e *mtlsEnv) {
	// The first request may race the outbound listener's EDS: poll.
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := e.client.Get(mtlsWebURL)
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
			t.Fatalf("GET %s from the client namespace: %v", mtlsWebURL, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The backend speaks HTTP/1 only and app-0's inbound cluster for 8080
	// (unknown protocol) speaks the request's protocol: between the proxies
	// the request rode HTTP/2 marked l5d-orig-proto (below), and app-0's
	// proxy restored HTTP/1.1 and removed the mark.
	if want := `name=app-0 host=10.96.0.10 remote=127.0.0.1 proto=HTTP/1.1 orig=""`; body != want {
		t.Errorf("body = %q, want %q", body, want)
	}
	// A client cannot smuggle the mark to an application either.
	req, _ := http.NewRequest("GET", mtlsWebURL, nil)
	req.Header.Set("L5d-Orig-Proto", "HTTP/1.1; spoofed")
	if got := e.get(t, req); !strings.HasSuffix(got, `proto=HTTP/1.1 orig=""`) {
		t.Errorf("with a client's own l5d-orig-proto, the application got %q", got)
	}
	// Multiplexing on the wire: mtlsHolds HTTP/1 requests in flight at once,
	// each on its own client connection, reach app-0's proxy on one HTTP/2
	// connection (the one the requests above opened), not one each.
	inboundOpens := func() int {
		return e.metricValue(t, "app-0", "tcp_open_total{", `direction="inbound"`, `srv_port="8080"`, `tls="true"`)
	}
	before := inboundOpens()
	var wg sync.WaitGroup
	for range mtlsHolds {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", strings.TrimSuffix(mtlsWebURL, "/")+"/hold", nil)
			if got := e.get(t, req); !strings.HasSuffix(got, `proto=HTTP/1.1 orig=""`) {
				t.Errorf("held request: %q", got)
			}
		})
	}
	wg.Wait()
	if opened := inboundOpens() - before; opened > 1 {
		t.Errorf("%d HTTP/1 requests in flight together opened %d connections to app-0's inbound, want them multiplexed on at most one", mtlsHolds, opened)
	}
	// The outbound side detected HTTP; app-0's inbound saw TLS on 8080 (the
	// redirect kept the port) and served it on the HTTP chain.
	e.proxies["client-0"].waitLog(t, 0, 10*time.Second, "the outbound HTTP connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "outbound", "local": "10.96.0.10:80",
		"chain": "http|web.shop.svc.cluster.local:80|10.96.0.10", "detected": "http/1.1",
	}))
	e.proxies["app-0"].waitLog(t, 0, 10*time.Second, "the inbound mTLS HTTP connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "inbound", "local": mtlsApp + ":8080", "chain": "http|inbound:8080", "detected": "tls",
	}))
	// app-0's request metrics: the connection was mTLS, from the client's
	// identity to app-0's. client-0's: the request went out over mTLS to
	// app-0's identity (Linkerd's outbound tls and server_id).
	t.Log(e.waitMetricLine(t, "app-0", "request_total{", `direction="inbound"`, `srv_port="8080"`, `tls="true"`,
		`client_id="`+mtlsClientID+`"`, `server_id="`+mtlsServerID+`"`))
	t.Log(e.waitMetricLine(t, "client-0", "request_total{", `direction="outbound"`, `srv_port="80"`, `tls="true"`,
		`server_id="`+mtlsServerID+`"`))
}

// Scenario 1b: a gRPC call (h2c from the client, detected) to the rpc
// service, over mTLS between the proxies: HTTP/2 end to end (the gRPC
// server speaks nothing else).
func mtlsGRPC(t *testing.T, e *mtlsEnv) {
	cc, err := grpc.NewClient("passthrough:///"+mtlsRPC, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return e.ns["client-0"].DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "shop.rpc"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health check through the mesh: %v, %v", resp, err)
	}
	e.proxies["client-0"].waitLog(t, 0, 10*time.Second, "the outbound h2c connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "outbound", "local": mtlsRPC, "detected": "h2c",
	}))
	e.waitMetricLine(t, "app-0", "request_total{", `direction="inbound"`, `srv_port="9090"`, `tls="true"`,
		`client_id="`+mtlsClientID+`"`)
}

// Scenario 2: server-first services greet through both proxies: pg on the
// default opaque list (no detection), and greet on a port of unknown
// protocol, whose client is silent: the outbound race opens the opaque
// transport after the grace period (50 ms) and the greeting comes back.
// Both reach app-0 through the opaque transport on its inbound port.
func mtlsServerFirst(t *testing.T, e *mtlsEnv) {
	for _, tc := range []struct{ addr, want, chain string }{
		{mtlsPG, "hello from app-0:5432\n", "opaque|pg.shop.svc.cluster.local:5432|10.96.0.20"},
		{mtlsGreet, "hello from app-0:7000\n", "opaque|greet.shop.svc.cluster.local:7000|10.96.0.30"},
	} {
		from := map[string]int{"client-0": e.proxies["client-0"].logCount(), "app-0": e.proxies["app-0"].logCount()}
		start := time.Now()
		c := dialIn(t, e.ns["client-0"], tc.addr)
		r := bufio.NewReader(c)
		greeting, err := r.ReadString('\n')
		took := time.Since(start)
		if err != nil || greeting != tc.want {
			t.Fatalf("%s: greeting %q, %v; want %q", tc.addr, greeting, err, tc.want)
		}
		t.Logf("%s: greeting after %v (server-first grace period 50 ms)", tc.addr, took)
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			t.Fatal(err)
		}
		if reply, err := r.ReadString('\n'); err != nil || reply != "got ping\n" {
			t.Fatalf("%s: reply %q, %v", tc.addr, reply, err)
		}
		c.Close()
		e.proxies["client-0"].waitLog(t, from["client-0"], 10*time.Second, "the outbound connection to "+tc.addr, jsonRecord(map[string]string{
			"msg": "connection", "listener": "outbound", "local": tc.addr, "chain": tc.chain,
		}))
		e.proxies["app-0"].waitLog(t, from["app-0"], 10*time.Second, "the opaque-transport connection for "+tc.addr, jsonRecord(map[string]string{
			"msg": "connection", "listener": "inbound", "local": mtlsApp + ":4143", "chain": "opaque-transport|inbound:4143", "detected": "tls",
		}))
	}
	// TCP metrics carry both identities: client-0's outbound connections
	// the destination's, from app-0's certificate in the opaque transport's
	// handshake (Linkerd's outbound tls and server_id); app-0's inbound ones
	// the client's and its own.
	for _, port := range []string{"5432", "7000"} {
		t.Log(e.waitMetricLine(t, "client-0", "tcp_close_total{", `direction="outbound"`, `srv_port="`+port+`"`, `tls="true"`,
			`server_id="`+mtlsServerID+`"`, `classification="success"`))
		e.waitMetricLine(t, "client-0", "tcp_open_total{", `direction="outbound"`, `srv_port="`+port+`"`, `tls="true"`,
			`server_id="`+mtlsServerID+`"`)
	}
	t.Log(e.waitMetricLine(t, "app-0", "tcp_open_total{", `direction="inbound"`, `tls="true"`,
		`client_id="`+mtlsClientID+`"`, `server_id="`+mtlsServerID+`"`))
}

// Scenario 3: the client speaks TLS to the secure service; the mesh carries
// it opaque inside mTLS: the client sees the application's certificate.
func mtlsAppTLS(t *testing.T, e *mtlsEnv) {
	from := e.proxies["app-0"].logCount()
	raw := dialIn(t, e.ns["client-0"], mtlsSecure)
	pool := x509.NewCertPool()
	pool.AddCert(e.appCert)
	c := tls.Client(raw, &tls.Config{ServerName: "secure.shop", RootCAs: pool})
	if err := c.Handshake(); err != nil {
		t.Fatalf("TLS to the application through the mesh: %v", err)
	}
	if got := c.ConnectionState().PeerCertificates[0]; !got.Equal(e.appCert) {
		t.Fatalf("the client saw %v, not the application's certificate", got.Subject)
	}
	r := bufio.NewReader(c)
	if _, err := io.WriteString(c, "secret\n"); err != nil {
		t.Fatal(err)
	}
	if reply, err := r.ReadString('\n'); err != nil || reply != "tls got secret\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	e.proxies["client-0"].waitLog(t, 0, 10*time.Second, "the outbound TLS connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "outbound", "local": mtlsSecure, "chain": "tls|secure.shop.svc.cluster.local:443|10.96.0.40",
	}))
	e.proxies["app-0"].waitLog(t, from, 10*time.Second, "the opaque-transport connection", jsonRecord(map[string]string{
		"msg": "connection", "listener": "inbound", "local": mtlsApp + ":4143", "chain": "opaque-transport|inbound:4143",
	}))
}

// Scenario 4: app-0's inbound refuses plaintext — to the inbound port
// itself and to an application port (an unmeshed client) — and TLS from a
// client whose certificate another CA signed, or the mesh CA for another
// trust domain; nothing reaches the application. The control: the same
// client with a certificate the mesh CA signed for the client's identity is
// greeted.
func mtlsRefusals(t *testing.T, e *mtlsEnv) {
	inbound := mtlsApp + ":4143"
	// The opaque-transport header, naming the greeter on 7000: were it
	// forwarded, the greeting would come back.
	const header = "SIFT\x01\x00\x1b\x58\x00"
	refused := func(t *testing.T, c net.Conn, send string) {
		t.Helper()
		io.WriteString(c, send)
		b, err := io.ReadAll(c)
		if len(b) != 0 || isTimeout(err) {
			t.Fatalf("read %q, %v; want the connection closed with nothing", b, err)
		}
	}
	// tlsClient dials the inbound port with ALPN sift.opaque/1 presenting
	// cert, and sends the header.
	tlsClient := func(t *testing.T, cert tls.Certificate) (*tls.Conn, error) {
		raw := dialIn(t, e.ns["client-0"], inbound)
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, NextProtos: []string{"sift.opaque/1"}})
		if err := c.Handshake(); err != nil {
			return nil, err
		}
		_, err := io.WriteString(c, header)
		return c, err
	}
	// tlsRefused: the handshake fails, or (TLS 1.3: the server's verdict on
	// the client certificate arrives after the client's handshake is done)
	// the first read ends with nothing.
	tlsRefused := func(t *testing.T, cert tls.Certificate) {
		t.Helper()
		c, err := tlsClient(t, cert)
		if err == nil {
			var b []byte
			b, err = io.ReadAll(c)
			if len(b) != 0 || isTimeout(err) {
				t.Fatalf("read %q, %v; want refused", b, err)
			}
		}
		t.Logf("refused: %v", err)
	}
	meshRoot, meshKey := readRootPair(t, filepath.Join(e.caDir, "root.pem"))

	greeted := e.greeted.Load()
	t.Run("plaintext to the inbound port", func(t *testing.T) {
		refused(t, dialIn(t, e.ns["client-0"], inbound), header)
	})
	t.Run("plaintext HTTP to an application port", func(t *testing.T) {
		refused(t, dialIn(t, e.ns["client-0"], mtlsApp+":8080"), "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
	})
	t.Run("foreign CA", func(t *testing.T) {
		cfg, _ := selfSignedTLS(t, "stranger")
		tlsRefused(t, cfg.Certificates[0])
	})
	t.Run("mesh CA, another trust domain", func(t *testing.T) {
		tlsRefused(t, leafFor(t, meshRoot, meshKey, "spiffe://elsewhere.example/ns/shop/sa/client"))
	})
	intruder := leafFor(t, meshRoot, meshKey, "spiffe://cluster.local/ns/shop/sa/intruder")
	t.Run("mesh CA, an identity the port does not authorize, opaque transport", func(t *testing.T) {
		c, err := tlsClient(t, intruder)
		if err != nil {
			t.Fatal(err) // the mesh accepts the identity; the port does not
		}
		refused(t, c, "")
	})
	t.Run("mesh CA, an identity the port does not authorize, HTTP", func(t *testing.T) {
		raw := dialIn(t, e.ns["client-0"], mtlsApp+":8080")
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{intruder}, NextProtos: []string{"http/1.1"}})
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		refused(t, c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
	})
	if n := e.greeted.Load() - greeted; n != 0 {
		t.Errorf("the greeters accepted %d connections from refused clients", n)
	}
	e.waitMetricLine(t, "app-0", `sift_rbac_decisions_total{decision="denied",stat_prefix="inbound"} 1`)
	e.waitMetricLine(t, "app-0", `sift_rbac_decisions_total{decision="denied",stat_prefix="inbound:8080"} 1`)
	t.Run("plaintext to a port that takes it, from an unmeshed client", func(t *testing.T) {
		c := dialIn(t, e.ns["client-0"], mtlsApp+":8081")
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		if !strings.Contains(string(b), "200 OK") || !strings.Contains(string(b), "name=app-0") {
			t.Errorf("got %q, want the application's answer", b)
		}
	})
	t.Run("control: mesh CA, the client's identity", func(t *testing.T) {
		c, err := tlsClient(t, leafFor(t, meshRoot, meshKey, mtlsClientID))
		if err != nil {
			t.Fatal(err)
		}
		if g, err := bufio.NewReader(c).ReadString('\n'); err != nil || g != "hello from app-0:7000\n" {
			t.Fatalf("greeting %q, %v", g, err)
		}
	})
}

// readRootPair reads the CA's root.pem: the root certificate and its key.
func readRootPair(t *testing.T, path string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cert *x509.Certificate
	var key crypto.Signer
	for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
		switch b.Type {
		case "CERTIFICATE":
			if cert, err = x509.ParseCertificate(b.Bytes); err != nil {
				t.Fatal(err)
			}
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			key = k.(crypto.Signer)
		}
	}
	if cert == nil || key == nil {
		t.Fatalf("%s: no certificate and key", path)
	}
	return cert, key
}

// leafFor is a client certificate for the SPIFFE ID id signed by ca.
func leafFor(t *testing.T, ca *x509.Certificate, caKey crypto.Signer, id string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		URIs:         []*url.URL{u},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Scenario 5: the mesh root is rotated (`sift-control ca rotate`, a 6 s
// overlap: the bundle gains the new root, leaves switch to it at 3 s, the old
// root leaves at 6 s — 3 s for every proxy to get its new leaf, enough under
// a loaded make test; with 2 s, one client in a few hundred still presented
// its old leaf when the old root left) under continuous HTTP and opaque traffic, every
// request a new mTLS connection: none fails; a connection opened before the
// rotation still works after it; app-0 presents a leaf of the new root.
func mtlsRotation(t *testing.T, e *mtlsEnv) {
	oldRoot := readRoot(t, filepath.Join(e.caDir, "root.pem"))
	if got := e.inboundLeaf(t); !bytesEqual(got.AuthorityKeyId, oldRoot.SubjectKeyId) {
		t.Fatalf("before the rotation app-0's leaf is not the root's")
	}
	long := dialIn(t, e.ns["client-0"], mtlsPG)
	longR := bufio.NewReader(long)
	if g, err := longR.ReadString('\n'); err != nil || g != "hello from app-0:5432\n" {
		t.Fatalf("greeting %q, %v", g, err)
	}
	long.SetDeadline(time.Now().Add(30 * time.Second))

	load := startMeshLoad(e.client, mtlsWebURL, 2, 5000)
	defer load.finish()
	opaque := startOpaqueLoad(e.ns["client-0"], mtlsGreet, 2)
	defer opaque.finish()
	load.until(t, 20*time.Second, "traffic from the load", func() bool { return load.count() >= 20 })

	out, err := exec.Command(siftControlBinary(t), "ca", "rotate", "--ca-dir", e.caDir, "--overlap", "6s").CombinedOutput()
	if err != nil {
		t.Fatalf("sift-control ca rotate: %v\n%s", err, out)
	}
	// The rotation ends when next-root.pem has become root.pem.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(e.caDir, "rotation.json")); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rotation did not finish within 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	newRoot := readRoot(t, filepath.Join(e.caDir, "root.pem"))
	if newRoot.Equal(oldRoot) {
		t.Fatal("root.pem unchanged after the rotation")
	}
	// app-0 presents a leaf of the new root, and traffic flows on.
	deadline = time.Now().Add(10 * time.Second)
	for !bytesEqual(e.inboundLeaf(t).AuthorityKeyId, newRoot.SubjectKeyId) {
		if time.Now().After(deadline) {
			t.Fatal("app-0 does not present a leaf of the new root")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mark := load.count()
	load.until(t, 20*time.Second, "50 requests after the rotation", func() bool { return load.count()-mark >= 50 })
	load.finish()
	opaque.finish()

	if _, err := io.WriteString(long, "still there\n"); err != nil {
		t.Fatal(err)
	}
	if reply, err := longR.ReadString('\n'); err != nil || reply != "got still there\n" {
		t.Errorf("the connection opened before the rotation: %q, %v", reply, err)
	}
	if n, failures := load.failedRequests(); n > 0 {
		t.Errorf("%d of %d HTTP requests failed around the rotation; first: %v", n, load.count(), failures)
	}
	if n, failures := opaque.failed(); n > 0 {
		t.Errorf("%d of %d opaque connections failed around the rotation; first: %v", n, opaque.count(), failures)
	}
	t.Logf("around the rotation: %d HTTP requests, %d opaque connections", load.count(), opaque.count())
}

// inboundLeaf returns the certificate app-0's inbound presents (a TLS
// client without a certificate sees it before the server refuses it).
func (e *mtlsEnv) inboundLeaf(t *testing.T) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	raw := dialIn(t, e.ns["client-0"], mtlsApp+":4143")
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"sift.opaque/1"},
		VerifyPeerCertificate: func(certs [][]byte, _ [][]*x509.Certificate) error {
			var err error
			leaf, err = x509.ParseCertificate(certs[0])
			return err
		}})
	c.Handshake()
	c.Close()
	if leaf == nil {
		t.Fatal("app-0's inbound presented no certificate")
	}
	return leaf
}

// readRoot reads the root certificate in the CA's root.pem.
func readRoot(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, _ := readRootPair(t, path)
	return c
}

func bytesEqual(a, b []byte) bool { return len(a) > 0 && string(a) == string(b) }

// opaqueLoad: workers each open connection after connection to a greeter,
// read the greeting, send a line and read the reply, until finished.
type opaqueLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	n, nFail int
	failures []string
}

func startOpaqueLoad(ns *netns.NS, addr string, workers int) *opaqueLoad {
	l := &opaqueLoad{stop: make(chan struct{})}
	one := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := ns.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		if g, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(g, "hello from ") {
			return fmt.Errorf("greeting %q, %v", g, err)
		}
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return err
		}
		if reply, err := r.ReadString('\n'); err != nil || reply != "got ping\n" {
			return fmt.Errorf("reply %q, %v", reply, err)
		}
		return nil
	}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				err := one()
				l.mu.Lock()
				l.n++
				if err != nil {
					l.nFail++
					if len(l.failures) < 10 {
						l.failures = append(l.failures, err.Error())
					}
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *opaqueLoad) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *opaqueLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

func (l *opaqueLoad) failed() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nFail, append([]string(nil), l.failures...)
}
