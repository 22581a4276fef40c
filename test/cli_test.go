package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/siftmesh/sift/internal/netns"
	"github.com/siftmesh/sift/internal/testnet"
)

// siftBinary is the sift CLI, built once per test binary.
func siftBinary(t *testing.T) string { return binary(t, "github.com/siftmesh/sift/cmd/sift") }

// TestSiftIptables applies `sift iptables` in a workload's network namespace
// and checks real connections: outbound TCP reaches the proxy's outbound
// port, inbound TCP its inbound port, and the proxy's own traffic, loopback
// and the skip ports are left alone; applying twice changes nothing;
// --remove restores direct connections.
func TestSiftIptables(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("sift iptables test skipped: %v", err)
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("sift iptables test skipped: needs setpriv (util-linux) to connect as the proxy's UID")
	}
	t.Parallel()
	removeStaleNamespaces(t)
	sift := siftBinary(t)
	run := meshRunSeq.Add(1)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	pod, remote := addNamespace(t, run, "pod"), addNamespace(t, run, "remote")
	must(netns.Veth(pod, "eth0", remote, "eth0"))
	must(pod.IP("addr", "add", "10.89.0.2/24", "dev", "eth0"))
	must(remote.IP("addr", "add", "10.89.0.1/24", "dev", "eth0"))

	// Each server answers with its name.
	serve := func(ns *netns.NS, addr, name string) {
		ln, err := ns.Listen("tcp", addr)
		must(err)
		testnet.Serve(t, ln, func(c net.Conn) { fmt.Fprintf(c, "%s\n", name) })
	}
	serve(remote, "10.89.0.1:8080", "remote:8080")
	serve(remote, "10.89.0.1:8081", "remote:8081")
	serve(pod, "0.0.0.0:4140", "proxy-outbound")
	serve(pod, "0.0.0.0:4143", "proxy-inbound")
	serve(pod, "0.0.0.0:9000", "app:9000")
	serve(pod, "0.0.0.0:2222", "app:2222")

	reach := func(from *netns.NS, addr string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := from.DialContext(ctx, "tcp", addr)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}
	// reachAs connects from the pod as uid (the proxy's own traffic).
	reachAs := func(uid int, host string, port int) string {
		t.Helper()
		out, err := pod.Command("setpriv", "--reuid", fmt.Sprint(uid), "--regid", fmt.Sprint(uid), "--clear-groups",
			"bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d; head -1 <&3", host, port)).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("%v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	runSift := func(args ...string) string {
		t.Helper()
		out, err := pod.Command(sift, append([]string{"iptables"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("sift iptables %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	counters := regexp.MustCompile(`(?m)^#.*$|\[\d+:\d+\]`)
	natRules := func() string {
		t.Helper()
		out, err := pod.Command("iptables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save: %v\n%s", err, out)
		}
		return counters.ReplaceAllString(string(out), "")
	}
	check := func(when string, cases map[string][2]string) {
		t.Helper()
		for what, c := range cases {
			var got string
			switch {
			case strings.HasPrefix(what, "as the proxy"):
				got = reachAs(2102, "10.89.0.1", 8080)
			case strings.HasPrefix(what, "inbound"):
				got = reach(remote, c[0])
			default:
				got = reach(pod, c[0])
			}
			if got != c[1] {
				t.Errorf("%s: %s (%s) reached %q, want %q", when, what, c[0], got, c[1])
			}
		}
	}
	before := natRules()
	check("before", map[string][2]string{"outbound": {"10.89.0.1:8080", "remote:8080"}, "inbound": {"10.89.0.2:9000", "app:9000"}})

	dry := runSift("--dry-run", "--skip-outbound-ports", "8081", "--skip-inbound-ports", "2222")
	if !strings.Contains(dry, "iptables -t nat -N SIFT_PROXY_INIT_OUTPUT") || natRules() != before {
		t.Errorf("--dry-run printed %q and the rules changed: %v", dry, natRules() != before)
	}

	args := []string{"--proxy-uid", "2102", "--skip-outbound-ports", "8081", "--skip-inbound-ports", "2222,3000-3100"}
	runSift(args...)
	applied := natRules()
	check("applied", map[string][2]string{
		"outbound":                {"10.89.0.1:8080", "proxy-outbound"},
		"outbound to a skip port": {"10.89.0.1:8081", "remote:8081"},
		"outbound on loopback":    {"127.0.0.1:9000", "app:9000"},
		"as the proxy, outbound":  {"10.89.0.1:8080", "remote:8080"},
		"inbound":                 {"10.89.0.2:9000", "proxy-inbound"},
		"inbound to a skip port":  {"10.89.0.2:2222", "app:2222"},
	})
	runSift(args...)
	if again := natRules(); again != applied {
		t.Errorf("applying twice changed the rules:\nfirst:\n%s\nsecond:\n%s", applied, again)
	}
	runSift("--remove")
	if after := natRules(); after != before || strings.Contains(after, "SIFT_") {
		t.Errorf("--remove left:\n%s\nwant:\n%s", after, before)
	}
	check("removed", map[string][2]string{"outbound": {"10.89.0.1:8080", "remote:8080"}, "inbound": {"10.89.0.2:9000", "app:9000"}})
}

// TestSiftDiagnose asks a real sift-proxy, through `sift diagnose`, about a
// detected HTTP connection and a server-first one.
func TestSiftDiagnose(t *testing.T) {
	t.Parallel()
	p := startDetectingProxy(t, greeter(t, "220 hello\r\n"))
	c := dial(t, p.addr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.CloseWrite()
	readAllWithin(t, c, 10*time.Second)
	if _, greeting := timeToGreeting(t, p.addr); string(greeting) != "220 hello\r\n" {
		t.Fatalf("greeting %q", greeting)
	}
	_, port, _ := net.SplitHostPort(p.addr)
	var out string
	eventually(t, "both connections in the detection log", func() bool {
		b, err := exec.Command(siftBinary(t), "diagnose", "--admin", p.admin, "--port", port).CombinedOutput()
		if err != nil {
			t.Fatalf("sift diagnose: %v\n%s", err, b)
		}
		out = string(b)
		return strings.Count(out, "  detection: ") == 2
	})
	for _, want := range []string{
		"sift-proxy at " + p.admin + ": LIVE",
		"configuration: bootstrap ",
		"detection: opaque — the client stayed silent past the grace period and the server spoke first",
		"chain:     opaque → cluster server",
		"detection: http/1.1 — the http1 sniffer recognised it",
		"sniffers:  tls no_match, h2 no_match, http1 match",
		"chain:     http → cluster http",
		"endpoints: 127.0.0.1:",
		"outcome:   dispatched",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("sift diagnose output lacks %q:\n%s", want, out)
		}
	}
	// A proxy that is not there: a clear error, not a stack of JSON.
	b, err := exec.Command(siftBinary(t), "diagnose", "--admin", "127.0.0.1:1").CombinedOutput()
	if err == nil || !strings.Contains(string(b), "is sift-proxy running with its admin server there? --admin") {
		t.Errorf("diagnose of nothing: %v\n%s", err, b)
	}
}

// TestSiftInjectOutputIsValid injects a Deployment with the real `sift`
// binary and checks what it added against the real programs: sift-proxy
// accepts the injected arguments and bootstrap (--mode validate), and the
// init container's arguments are ones `sift iptables` accepts (--dry-run).
func TestSiftInjectOutputIsValid(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(siftBinary(t), "inject", "--opaque-ports", "3306", "-")
	cmd.Stdin = strings.NewReader(`apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: shop}
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}, annotations: {config.linkerd.io/skip-inbound-ports: "22", config.linkerd.io/skip-outbound-ports: "5432,6379"}}
    spec: {containers: [{name: shop, image: shop:1}]}
`)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sift inject: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stdin: document 1: Deployment/shop: injected") {
		t.Errorf("summary: %q", stderr.String())
	}
	var d appsv1.Deployment
	if err := sigsyaml.UnmarshalStrict(out, &d); err != nil {
		t.Fatalf("the output is not a Deployment: %v\n%s", err, out)
	}
	containers, inits := d.Spec.Template.Spec.Containers, d.Spec.Template.Spec.InitContainers
	if len(containers) != 2 || containers[1].Name != "sift-proxy" || len(inits) != 1 || inits[0].Name != "sift-init" {
		t.Fatalf("containers %d, init containers %d:\n%s", len(containers), len(inits), out)
	}
	env := strings.NewReplacer("$(SIFT_POD_NAME)", "shop-7d9f", "$(SIFT_POD_NAMESPACE)", "shop")
	var args []string
	for _, a := range containers[1].Args {
		args = append(args, env.Replace(a))
	}
	if b, err := exec.Command(siftProxyBinary(t), append(args, "--mode", "validate")...).CombinedOutput(); err != nil {
		t.Errorf("sift-proxy refuses the injected arguments: %v\n%s", err, b)
	}
	init := append(append([]string{}, inits[0].Args...), "--dry-run")
	b, err := exec.Command(siftBinary(t), init...).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "--dports 5432,6379") || !strings.Contains(string(b), "--dports 22") {
		t.Errorf("sift %v: %v\n%s", init, err, b)
	}
}

// TestSiftIptablesIPv6AndLegacy: --ipv6 redirects IPv6 connections too, and
// --iptables-mode legacy writes (and removes) the same chains with
// iptables-legacy.
func TestSiftIptablesIPv6AndLegacy(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("sift iptables test skipped: %v", err)
	}
	for _, bin := range []string{"ip6tables", "iptables-legacy", "iptables-legacy-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("sift iptables IPv6/legacy test skipped: needs %s (iptables package)", bin)
		}
	}
	t.Parallel()
	removeStaleNamespaces(t)
	sift := siftBinary(t)
	run := meshRunSeq.Add(1)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	pod, remote := addNamespace(t, run, "pod6"), addNamespace(t, run, "remote6")
	must(netns.Veth(pod, "eth0", remote, "eth0"))
	must(pod.IP("-6", "addr", "add", "fd89::2/64", "dev", "eth0", "nodad"))
	must(remote.IP("-6", "addr", "add", "fd89::1/64", "dev", "eth0", "nodad"))
	serve := func(ns *netns.NS, addr, name string) {
		ln, err := ns.Listen("tcp", addr)
		must(err)
		testnet.Serve(t, ln, func(c net.Conn) { fmt.Fprintf(c, "%s\n", name) })
	}
	serve(remote, "[fd89::1]:8080", "remote")
	serve(pod, "[::]:4140", "proxy-outbound")
	reach := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pod.DialContext(ctx, "tcp", "[fd89::1]:8080")
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}
	siftIn := func(args ...string) {
		t.Helper()
		if out, err := pod.Command(sift, append([]string{"iptables"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("sift iptables %v: %v\n%s", args, err, out)
		}
	}
	if got := reach(); got != "remote" {
		t.Fatalf("before: %q", got)
	}
	siftIn("--ipv6")
	if got := reach(); got != "proxy-outbound" {
		t.Errorf("IPv6 with --ipv6: reached %q, want the proxy", got)
	}
	siftIn("--ipv6", "--remove")
	if got := reach(); got != "remote" {
		t.Errorf("IPv6 after --remove: reached %q", got)
	}

	siftIn("--iptables-mode", "legacy")
	out, err := pod.Command("iptables-legacy-save", "-t", "nat").CombinedOutput()
	if err != nil || !strings.Contains(string(out), ":SIFT_PROXY_INIT_OUTPUT") || !strings.Contains(string(out), "-A OUTPUT -j SIFT_PROXY_INIT_OUTPUT") {
		t.Errorf("iptables-legacy after --iptables-mode legacy: %v\n%s", err, out)
	}
	siftIn("--iptables-mode", "legacy", "--remove")
	if out, _ := pod.Command("iptables-legacy-save", "-t", "nat").CombinedOutput(); strings.Contains(string(out), "SIFT_") {
		t.Errorf("iptables-legacy after --remove:\n%s", out)
	}
}
