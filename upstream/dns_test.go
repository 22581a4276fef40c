package upstream

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// dnsCluster is a STRICT_DNS cluster over names (each "name:port"), with
// extra top-level fields.
func dnsCluster(extra string, targets ...string) string {
	return staticCluster("dns", `"type":"STRICT_DNS",`+extra, targets...)
}

func TestStrictDNSRefresh(t *testing.T) {
	t.Parallel()
	srv := newDNSServer(t)
	srv.set("backend.sift.test", "127.0.0.3", "127.0.0.2", "127.0.0.2")
	c := build(t, clusterJSON(t, dnsCluster(`"dnsRefreshRate":"3600s","dnsLookupFamily":"V4_ONLY",`, "backend.sift.test:8080")), Options{Resolver: srv.resolver()})
	waitReady(t, c)
	want := []Endpoint{
		{Addr: "127.0.0.2:8080", Weight: 1, Health: "UNKNOWN", Hostname: "backend.sift.test"},
		{Addr: "127.0.0.3:8080", Weight: 1, Health: "UNKNOWN", Hostname: "backend.sift.test"},
	}
	if diff := cmp.Diff(want, c.Endpoints()); diff != "" {
		t.Fatalf("endpoints after the first resolution (-want +got):\n%s", diff)
	}

	steps := []struct {
		name   string
		change func()
		want   []string
	}{
		{"answer changes", func() { srv.set("backend.sift.test", "127.0.0.4") }, []string{"127.0.0.4:8080"}},
		{"server fails: last good set kept", func() { srv.setFail("backend.sift.test") }, []string{"127.0.0.4:8080"}},
		{"recovers", func() { srv.set("backend.sift.test", "127.0.0.5", "127.0.0.4") }, []string{"127.0.0.4:8080", "127.0.0.5:8080"}},
		{"NXDOMAIN: no hosts, as in Envoy", func() { srv.remove("backend.sift.test") }, []string{}},
	}
	for _, s := range steps {
		s.change()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := c.dns.refreshNow(ctx)
		cancel()
		if err != nil {
			t.Fatalf("%s: refresh: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, addrsOf(c.Endpoints())); diff != "" {
			t.Errorf("%s: endpoints (-want +got):\n%s", s.name, diff)
		}
	}
}

// The refresh timer (not the test hook) picks up a change.
func TestStrictDNSRefreshTimer(t *testing.T) {
	t.Parallel()
	srv := newDNSServer(t)
	srv.set("timer.sift.test", "127.0.0.2")
	c := build(t, clusterJSON(t, dnsCluster(`"dnsRefreshRate":"0.01s","dnsJitter":"0.005s","dnsLookupFamily":"V4_ONLY",`, "timer.sift.test:80")), Options{Resolver: srv.resolver()})
	waitAddrs(t, c, []string{"127.0.0.2:80"})
	srv.set("timer.sift.test", "127.0.0.3")
	waitAddrs(t, c, []string{"127.0.0.3:80"})
}

func TestStrictDNSLookupFamily(t *testing.T) {
	t.Parallel()
	srv := newDNSServer(t)
	srv.set("dual.sift.test", "127.0.0.2", "::2")
	srv.set("v4.sift.test", "127.0.0.3")
	srv.set("v6.sift.test", "::3")
	tests := []struct {
		family, name string
		want         []string
	}{
		{"AUTO", "dual.sift.test", []string{"[::2]:80"}},
		{"AUTO", "v4.sift.test", []string{"127.0.0.3:80"}},
		{"AUTO", "v6.sift.test", []string{"[::3]:80"}},
		{"V4_PREFERRED", "dual.sift.test", []string{"127.0.0.2:80"}},
		{"V4_PREFERRED", "v6.sift.test", []string{"[::3]:80"}},
		{"V4_ONLY", "dual.sift.test", []string{"127.0.0.2:80"}},
		{"V4_ONLY", "v6.sift.test", []string{}},
		{"V6_ONLY", "dual.sift.test", []string{"[::2]:80"}},
		{"V6_ONLY", "v4.sift.test", []string{}},
		{"ALL", "dual.sift.test", []string{"127.0.0.2:80", "[::2]:80"}},
		{"ALL", "v4.sift.test", []string{"127.0.0.3:80"}},
	}
	for _, tt := range tests {
		t.Run(tt.family+"/"+tt.name, func(t *testing.T) {
			t.Parallel()
			c := build(t, clusterJSON(t, dnsCluster(`"dnsLookupFamily":"`+tt.family+`",`, tt.name+":80")), Options{Resolver: srv.resolver()})
			waitReady(t, c)
			if diff := cmp.Diff(tt.want, addrsOf(c.Endpoints())); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
		})
	}
}

// Several names: each keeps its weight and health, and one failing name
// does not take the others' endpoints away.
func TestStrictDNSTargets(t *testing.T) {
	t.Parallel()
	srv := newDNSServer(t)
	srv.set("a.sift.test", "127.0.0.2")
	srv.setFail("b.sift.test")
	js := `{"name":"dns","type":"STRICT_DNS","dnsRefreshRate":"3600s","dnsLookupFamily":"V4_ONLY","loadAssignment":{"endpoints":[{"lbEndpoints":[` +
		`{"endpoint":{"address":{"socketAddress":{"address":"a.sift.test","portValue":80}}},"loadBalancingWeight":3},` +
		`{"endpoint":{"address":{"socketAddress":{"address":"b.sift.test","portValue":81}},"hostname":"b.example"},"healthStatus":"DEGRADED"}]}]}}`
	c := build(t, clusterJSON(t, js), Options{Resolver: srv.resolver()})
	waitReady(t, c)
	want := []Endpoint{{Addr: "127.0.0.2:80", Weight: 3, Health: "UNKNOWN", Hostname: "a.sift.test"}}
	if diff := cmp.Diff(want, c.Endpoints()); diff != "" {
		t.Errorf("endpoints with b failing (-want +got):\n%s", diff)
	}
	srv.set("b.sift.test", "127.0.0.3")
	if err := c.dns.refreshNow(t.Context()); err != nil {
		t.Fatal(err)
	}
	want = append(want, Endpoint{Addr: "127.0.0.3:81", Weight: 1, Health: "DEGRADED", Hostname: "b.example"})
	if diff := cmp.Diff(want, c.Endpoints()); diff != "" {
		t.Errorf("endpoints after b recovers (-want +got):\n%s", diff)
	}
}

// Dial right after Build waits for the first resolution, then connects to
// the resolved address.
func TestStrictDNSDial(t *testing.T) {
	t.Parallel()
	srv := newDNSServer(t)
	srv.set("backend.sift.test", "127.0.0.1")
	b := newBackend(t)
	c := build(t, clusterJSON(t, dnsCluster(`"dnsLookupFamily":"V4_ONLY",`, "backend.sift.test:"+port(b.addr))), Options{Resolver: srv.resolver()})
	conn, err := c.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.Addr != b.addr {
		t.Errorf("Addr = %s, want %s", conn.Addr, b.addr)
	}
}

// A cluster closed while its first lookup hangs stops at once; Dial then
// finds no endpoint instead of waiting.
func TestStrictDNSCloseWhileResolving(t *testing.T) {
	t.Parallel()
	dialing := make(chan struct{})
	hanging := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		select {
		case dialing <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	c, err := Build(clusterJSON(t, dnsCluster("", "hang.sift.test:80")), Options{Resolver: hanging})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-dialing:
	case <-time.After(10 * time.Second):
		t.Fatal("resolver never dialled")
	}
	c.Close()
	select {
	case <-c.Ready():
	default:
		t.Error("Ready not closed by Close")
	}
	if _, err := c.Dial(t.Context()); !errors.Is(err, ErrNoHealthyEndpoint) {
		t.Errorf("Dial: %v, want ErrNoHealthyEndpoint", err)
	}
}

// Dial gives up waiting for the first resolution at connect_timeout.
func TestStrictDNSDialWaitTimeout(t *testing.T) {
	t.Parallel()
	hanging := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	c := build(t, clusterJSON(t, dnsCluster(`"connectTimeout":"0.05s",`, "hang.sift.test:80")), Options{Resolver: hanging})
	_, err := c.Dial(t.Context())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: %v, want a deadline error", err)
	}
	if want := `upstream: cluster "dns": waiting for the first DNS resolution: context deadline exceeded`; err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	var got []int
	for n := range 6 {
		got = append(got, int(backoff(100, 1000, n)))
	}
	if diff := cmp.Diff([]int{100, 200, 400, 800, 1000, 1000}, got); diff != "" {
		t.Errorf("backoff (-want +got):\n%s", diff)
	}
}
