package upstream

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
)

// clusterJSON decodes an Envoy Cluster written as protojson.
func clusterJSON(t testing.TB, js string) *clusterv3.Cluster {
	t.Helper()
	pb := &clusterv3.Cluster{}
	if err := protojson.Unmarshal([]byte(js), pb); err != nil {
		t.Fatalf("decoding test cluster: %v\n%s", err, js)
	}
	return pb
}

// build builds pb and closes the cluster when the test ends.
func build(t testing.TB, pb *clusterv3.Cluster, opts Options) *Cluster {
	t.Helper()
	if opts.Resolver == nil {
		opts.Resolver = noDNS
	}
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	c, err := Build(pb, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

var quiet = slog.New(slog.DiscardHandler)

// noDNS fails every lookup without touching the network: no test may reach
// the machine's configured name server.
var noDNS = &net.Resolver{
	PreferGo: true,
	Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no DNS in this test")
	},
}

// seeded returns a reproducible Options.rand.
func seeded(seed uint64) func(int) int {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(n int) int {
		mu.Lock()
		defer mu.Unlock()
		return r.IntN(n)
	}
}

// staticCluster returns a STATIC cluster JSON over addrs ("ip:port"), with
// extra top-level fields (a JSON fragment ending in a comma, or "").
func staticCluster(name, extra string, addrs ...string) string {
	var eps []string
	for _, a := range addrs {
		h, p, _ := net.SplitHostPort(a)
		eps = append(eps, `{"endpoint":{"address":{"socketAddress":{"address":"`+h+`","portValue":`+p+`}}}}`)
	}
	return `{"name":"` + name + `",` + extra + `"loadAssignment":{"endpoints":[{"lbEndpoints":[` + strings.Join(eps, ",") + `]}]}}`
}

// backend is a TCP server on 127.0.0.1:0 that accepts and holds connections
// until the test ends.
type backend struct {
	addr  string
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newBackend(t testing.TB) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: ln.Addr().String(), ln: ln}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.wg.Wait()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

// closedAddr returns a 127.0.0.1 address nothing listens on.
func closedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func addrsOf(eps []Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, e.Addr)
	}
	return out
}

// waitAddrs waits until c's endpoint addresses are want, on the cluster's
// change notification (no polling), for at most 10 s.
func waitAddrs(t testing.TB, c *Cluster, want []string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		ch := c.changedCh()
		got := addrsOf(c.Endpoints())
		if cmp.Equal(got, want) {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("endpoints: (-got +want)\n%s", cmp.Diff(got, want))
		}
	}
}

func waitReady(t testing.TB, c *Cluster) {
	t.Helper()
	select {
	case <-c.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("cluster not ready after 10s")
	}
}

// dnsServer is a minimal authoritative DNS server on 127.0.0.1:0 (UDP) for
// A and AAAA queries, whose answers a test changes at will.
type dnsServer struct {
	pc net.PacketConn
	wg sync.WaitGroup

	mu      sync.Mutex
	records map[string][]netip.Addr // lower-case name without trailing dot
	fail    map[string]bool         // answer SERVFAIL
}

func newDNSServer(t testing.TB) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{pc: pc, records: map[string][]netip.Addr{}, fail: map[string]bool{}}
	s.wg.Go(s.serve)
	t.Cleanup(func() {
		pc.Close()
		s.wg.Wait()
	})
	return s
}

// set makes name resolve to addrs (none: NODATA); remove makes it NXDOMAIN.
func (s *dnsServer) set(name string, addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	s.records[name] = as
	delete(s.fail, name)
}

func (s *dnsServer) remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, name)
	delete(s.fail, name)
}

func (s *dnsServer) setFail(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[name] = true
}

// resolver is a Go resolver that sends every query to s.
func (s *dnsServer) resolver() *net.Resolver {
	addr := s.pc.LocalAddr().String()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", addr)
		},
	}
}

func (s *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := s.answer(buf[:n]); resp != nil {
			s.pc.WriteTo(resp, from)
		}
	}
}

const (
	typeA    = 1
	typeAAAA = 28
)

// answer builds the response to one query (RFC 1035 section 4.1), or nil
// for a packet it does not understand.
func (s *dnsServer) answer(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil
	}
	off := 12
	var labels []string
	for {
		if off >= len(q) {
			return nil
		}
		l := int(q[off])
		off++
		if l == 0 {
			break
		}
		if l&0xC0 != 0 || off+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[off:off+l]))
		off += l
	}
	if off+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[off:])
	off += 4
	name := strings.ToLower(strings.Join(labels, "."))

	s.mu.Lock()
	addrs, known := s.records[name]
	fail := s.fail[name]
	s.mu.Unlock()

	var rcode byte
	switch {
	case fail:
		rcode = 2 // SERVFAIL
	case !known:
		rcode = 3 // NXDOMAIN
	}
	var answers [][]byte
	if rcode == 0 {
		for _, a := range addrs {
			var rr []byte
			switch {
			case qtype == typeA && a.Is4():
				rr = binary.BigEndian.AppendUint16([]byte{0xC0, 12}, typeA)
			case qtype == typeAAAA && a.Is6():
				rr = binary.BigEndian.AppendUint16([]byte{0xC0, 12}, typeAAAA)
			default:
				continue
			}
			rr = binary.BigEndian.AppendUint16(rr, 1)  // class IN
			rr = binary.BigEndian.AppendUint32(rr, 30) // TTL
			ip := a.AsSlice()
			rr = binary.BigEndian.AppendUint16(rr, uint16(len(ip)))
			answers = append(answers, append(rr, ip...))
		}
	}
	resp := []byte{q[0], q[1], 0x80 | 0x04 | q[2]&0x79, 0x80 | rcode}
	resp = binary.BigEndian.AppendUint16(resp, 1)
	resp = binary.BigEndian.AppendUint16(resp, uint16(len(answers)))
	resp = binary.BigEndian.AppendUint16(resp, 0)
	resp = binary.BigEndian.AppendUint16(resp, 0)
	resp = append(resp, q[12:off]...)
	for _, rr := range answers {
		resp = append(resp, rr...)
	}
	return resp
}
