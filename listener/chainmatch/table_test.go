package chainmatch

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/siftmesh/sift/filters"
)

// conn returns an Input from "ip:port" strings.
func conn(dst, src string) Input {
	return Input{Destination: netip.MustParseAddrPort(dst), Source: netip.MustParseAddrPort(src)}
}

func (in Input) sni(name string) Input        { in.ServerName = name; return in }
func (in Input) transport(tp string) Input    { in.TransportProtocol = tp; return in }
func (in Input) alpn(protos ...string) Input  { in.ApplicationProtocols = protos; return in }
func (in Input) direct(addr string) Input     { in.DirectSource = netip.MustParseAddrPort(addr); return in }
func (in Input) withSource(addr string) Input { in.Source = netip.MustParseAddrPort(addr); return in }

const none = -1 // want: no chain

type matchCase struct {
	name string
	in   Input
	want int
}

type result struct {
	Index int
	OK    bool
}

func runMatch(t *testing.T, chains []Criteria, cases []matchCase) {
	t.Helper()
	tbl, err := NewTable(chains)
	if err != nil {
		t.Fatalf("NewTable() error = %v", err)
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := result{Index: tt.want, OK: tt.want >= 0}
			idx, ok := tbl.Match(tt.in)
			if diff := cmp.Diff(want, result{idx, ok}); diff != "" {
				t.Errorf("Match(%+v) mismatch (-want +got):\n%s", tt.in, diff)
			}
			// The reference implementation agrees.
			ref, n := refMatch(chains, tt.in)
			if n > 1 || cmp.Diff(want, result{ref, n == 1}) != "" {
				t.Errorf("refMatch(%+v) = %d (%d candidates), want %d", tt.in, ref, n, tt.want)
			}
		})
	}
}

const (
	dst80  = "10.0.0.1:80"
	client = "192.168.1.9:40000"
)

// Each criterion alone, with its specificity rule.
func TestMatchEachCriterion(t *testing.T) {
	t.Parallel()
	t.Run("destination_port", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{DestinationPort: 80}, {DestinationPort: 443}, {}}, []matchCase{
			{name: "port 80", in: conn("10.0.0.1:80", client), want: 0},
			{name: "port 443", in: conn("10.0.0.1:443", client), want: 1},
			{name: "other port falls back to chains without a port", in: conn("10.0.0.1:8080", client), want: 2},
		})
	})
	t.Run("prefix_ranges longest prefix wins", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{
			{PrefixRanges: pfxs("10.0.0.0/8")},
			{PrefixRanges: pfxs("10.1.0.0/16", "172.16.0.0/12")},
			{PrefixRanges: pfxs("10.1.2.3/32")},
			{},
		}, []matchCase{
			{name: "/8", in: conn("10.9.9.9:80", client), want: 0},
			{name: "/16", in: conn("10.1.9.9:80", client), want: 1},
			{name: "second prefix of a chain", in: conn("172.20.0.1:80", client), want: 1},
			{name: "/32", in: conn("10.1.2.3:80", client), want: 2},
			{name: "no prefix", in: conn("192.168.0.1:80", client), want: 3},
			{name: "ipv6 uses the chain without prefixes", in: conn("[2001:db8::1]:80", client), want: 3},
			{name: "ipv4-mapped destination matches ipv4 prefixes", in: conn("[::ffff:10.1.2.3]:80", client), want: 2},
		})
	})
	t.Run("server_names", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{
			{ServerNames: []string{"www.example.com"}},
			{ServerNames: []string{"*.example.com"}},
			{ServerNames: []string{"*.com"}},
			{},
			{ServerNames: []string{"*.b.example.com", "API.Example.org"}},
		}, []matchCase{
			{name: "exact beats wildcard", in: conn(dst80, client).sni("www.example.com"), want: 0},
			{name: "wildcard", in: conn(dst80, client).sni("api.example.com"), want: 1},
			{name: "wildcard spans several labels", in: conn(dst80, client).sni("a.x.example.com"), want: 1},
			{name: "longest wildcard suffix wins", in: conn(dst80, client).sni("a.b.example.com"), want: 4},
			{name: "wildcard does not match its bare domain", in: conn(dst80, client).sni("example.com"), want: 2},
			{name: "shorter wildcard", in: conn(dst80, client).sni("example.net.com"), want: 2},
			{name: "config is lower-cased", in: conn(dst80, client).sni("api.example.org"), want: 4},
			{name: "no match falls back to chains without names", in: conn(dst80, client).sni("example.org"), want: 3},
			{name: "no sni", in: conn(dst80, client), want: 3},
			{name: "single label", in: conn(dst80, client).sni("com"), want: 3},
			{name: "trailing dot is not stripped", in: conn(dst80, client).sni("www.example.com."), want: 3},
		})
	})
	t.Run("server_names without a catch-all", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{ServerNames: []string{"*.example.com"}}}, []matchCase{
			{name: "match", in: conn(dst80, client).sni("a.example.com"), want: 0},
			{name: "no match", in: conn(dst80, client).sni("a.example.org"), want: none},
			{name: "no sni", in: conn(dst80, client), want: none},
		})
	})
	t.Run("transport_protocol", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{TransportProtocol: "tls"}, {TransportProtocol: "raw_buffer"}, {}}, []matchCase{
			{name: "tls", in: conn(dst80, client).transport("tls"), want: 0},
			{name: "unset is raw_buffer", in: conn(dst80, client), want: 1},
			{name: "raw_buffer", in: conn(dst80, client).transport("raw_buffer"), want: 1},
			{name: "other", in: conn(dst80, client).transport("quic"), want: 2},
		})
	})
	t.Run("application_protocols", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{
			{ApplicationProtocols: []string{"h2"}},
			{ApplicationProtocols: []string{"http/1.1", "h2c"}},
			{},
		}, []matchCase{
			{name: "h2", in: conn(dst80, client).alpn("h2"), want: 0},
			{name: "first of a chain's list", in: conn(dst80, client).alpn("http/1.1"), want: 1},
			{name: "second of a chain's list", in: conn(dst80, client).alpn("h2c"), want: 1},
			{name: "connection's order decides", in: conn(dst80, client).alpn("http/1.1", "h2"), want: 1},
			{name: "connection's order decides reversed", in: conn(dst80, client).alpn("h2", "http/1.1"), want: 0},
			{name: "unknown then known", in: conn(dst80, client).alpn("spdy/3", "h2"), want: 0},
			{name: "unknown", in: conn(dst80, client).alpn("spdy/3"), want: 2},
			{name: "none", in: conn(dst80, client), want: 2},
		})
	})
	t.Run("direct_source_prefix_ranges", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{DirectSourcePrefixRanges: pfxs("10.0.0.0/8")}, {}}, []matchCase{
			{name: "direct source matches", in: conn(dst80, "192.168.1.1:1").direct("10.2.2.2:5"), want: 0},
			{name: "source is not used when direct source is set", in: conn(dst80, "10.1.1.1:1").direct("192.168.1.1:5"), want: 1},
			{name: "zero direct source means source", in: conn(dst80, "10.1.1.1:1"), want: 0},
		})
	})
	t.Run("source_type", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{SourceType: SourceLocal}, {SourceType: SourceExternal}, {SourceType: SourceAny}}, []matchCase{
			{name: "127.0.0.1 is local", in: conn(dst80, "127.0.0.1:1"), want: 0},
			{name: "::1 is local", in: conn("[2001:db8::1]:80", "[::1]:1"), want: 0},
			{name: "ipv4-mapped 127.0.0.1 is local", in: conn(dst80, "[::ffff:127.0.0.1]:1"), want: 0},
			{name: "same ip is local", in: conn("10.0.0.1:80", "10.0.0.1:5000"), want: 0},
			{name: "same ipv6 is local", in: conn("[2001:db8::1]:80", "[2001:db8::1]:5000"), want: 0},
			{name: "127.0.0.2 is external, as in Envoy", in: conn(dst80, "127.0.0.2:1"), want: 1},
			{name: "other ip is external", in: conn(dst80, "10.0.0.2:1"), want: 1},
			{name: "non-ip source is local, like Envoy's pipes", in: Input{Destination: netip.MustParseAddrPort(dst80)}, want: 0},
		})
	})
	t.Run("source_type falls back to ANY", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{SourceType: SourceLocal}, {}}, []matchCase{
			{name: "local", in: conn(dst80, "127.0.0.1:1"), want: 0},
			{name: "external uses ANY", in: conn(dst80, client), want: 1},
		})
	})
	t.Run("source_type without ANY", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{SourceType: SourceExternal}}, []matchCase{
			{name: "external", in: conn(dst80, client), want: 0},
			{name: "local has no chain", in: conn(dst80, "127.0.0.1:1"), want: none},
		})
	})
	t.Run("source_prefix_ranges", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{
			{SourcePrefixRanges: pfxs("192.168.0.0/16")},
			{SourcePrefixRanges: pfxs("192.168.1.0/24")},
			{SourcePrefixRanges: pfxs("2001:db8::/32")},
		}, []matchCase{
			{name: "/24", in: conn(dst80, "192.168.1.9:1"), want: 1},
			{name: "/16", in: conn(dst80, "192.168.2.9:1"), want: 0},
			{name: "ipv6", in: conn(dst80, "[2001:db8::7]:1"), want: 2},
			{name: "no match", in: conn(dst80, "10.0.0.1:1"), want: none},
		})
	})
	t.Run("source_ports", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{SourcePorts: []uint32{1000, 2000}}, {}}, []matchCase{
			{name: "listed", in: conn(dst80, "192.168.1.9:2000"), want: 0},
			{name: "not listed", in: conn(dst80, "192.168.1.9:3000"), want: 1},
			{name: "source port 0", in: conn(dst80, "192.168.1.9:0"), want: 1},
		})
	})
}

// Once a step has chosen the most specific branch, a later step that finds
// nothing ends the match: Envoy does not try less specific branches. The
// destination-port case is the one Envoy's findFilterChain spells out ("There
// is entry for specific port but none of the filter chain matches. Instead of
// matching catch-all port 0, the fallback filter chain is returned.") and the
// FilterChainMatch documentation states for every step ("Filter chains
// specifying the wrong port can never be the most specific match"; "In each
// step, filter chains which most specifically matches the attributes
// continue to the next step").
func TestMatchNoBacktracking(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		chains []Criteria
		cases  []matchCase
	}{
		{
			name:   "destination port then server name",
			chains: []Criteria{{DestinationPort: 443, ServerNames: []string{"a.example.com"}}, {}},
			cases: []matchCase{
				{name: "port and name", in: conn("10.0.0.1:443", client).sni("a.example.com"), want: 0},
				{name: "port without the name does not fall back to any port", in: conn("10.0.0.1:443", client).sni("b.example.com"), want: none},
				{name: "other port", in: conn("10.0.0.1:80", client).sni("b.example.com"), want: 1},
			},
		},
		{
			name:   "destination ip then transport",
			chains: []Criteria{{PrefixRanges: pfxs("10.0.0.0/8"), TransportProtocol: "tls"}, {}},
			cases: []matchCase{
				{name: "tls", in: conn(dst80, client).transport("tls"), want: 0},
				{name: "raw_buffer does not fall back", in: conn(dst80, client), want: none},
				{name: "other ip", in: conn("192.168.0.1:80", client), want: 1},
			},
		},
		{
			name:   "longer prefix then source",
			chains: []Criteria{{PrefixRanges: pfxs("10.1.0.0/16"), SourcePrefixRanges: pfxs("172.16.0.0/12")}, {PrefixRanges: pfxs("10.0.0.0/8")}},
			cases: []matchCase{
				{name: "both", in: conn("10.1.0.1:80", "172.16.0.1:1"), want: 0},
				{name: "source mismatch does not fall back to the /8", in: conn("10.1.0.1:80", client), want: none},
			},
		},
		{
			name:   "exact name then application protocol",
			chains: []Criteria{{ServerNames: []string{"www.example.com"}, ApplicationProtocols: []string{"h2"}}, {ServerNames: []string{"*.example.com"}}},
			cases: []matchCase{
				{name: "exact with h2", in: conn(dst80, client).sni("www.example.com").alpn("h2"), want: 0},
				{name: "exact without h2 does not fall back to the wildcard", in: conn(dst80, client).sni("www.example.com").alpn("http/1.1"), want: none},
				{name: "wildcard", in: conn(dst80, client).sni("api.example.com").alpn("http/1.1"), want: 1},
			},
		},
		{
			name:   "wildcard then transport",
			chains: []Criteria{{ServerNames: []string{"*.example.com"}, TransportProtocol: "tls"}, {}},
			cases: []matchCase{
				{name: "tls", in: conn(dst80, client).sni("a.example.com").transport("tls"), want: 0},
				{name: "raw does not fall back", in: conn(dst80, client).sni("a.example.com"), want: none},
			},
		},
		{
			name:   "transport then application protocol",
			chains: []Criteria{{TransportProtocol: "tls", ApplicationProtocols: []string{"h2"}}, {ApplicationProtocols: []string{"http/1.1"}}},
			cases: []matchCase{
				{name: "tls h2", in: conn(dst80, client).transport("tls").alpn("h2"), want: 0},
				{name: "tls http/1.1 does not fall back", in: conn(dst80, client).transport("tls").alpn("http/1.1"), want: none},
				{name: "raw http/1.1", in: conn(dst80, client).alpn("http/1.1"), want: 1},
			},
		},
		{
			name:   "application protocol then direct source",
			chains: []Criteria{{ApplicationProtocols: []string{"h2"}, DirectSourcePrefixRanges: pfxs("10.0.0.0/8")}, {}},
			cases: []matchCase{
				{name: "h2 from 10/8", in: conn(dst80, "10.9.9.9:1").alpn("h2"), want: 0},
				{name: "h2 from elsewhere does not fall back", in: conn(dst80, client).alpn("h2"), want: none},
				{name: "http/1.1", in: conn(dst80, client).alpn("http/1.1"), want: 1},
			},
		},
		{
			name:   "source type then source port",
			chains: []Criteria{{SourceType: SourceLocal, SourcePorts: []uint32{1}}, {}},
			cases: []matchCase{
				{name: "local port 1", in: conn(dst80, "127.0.0.1:1"), want: 0},
				{name: "local port 2 does not fall back to ANY", in: conn(dst80, "127.0.0.1:2"), want: none},
				{name: "external", in: conn(dst80, client), want: 1},
			},
		},
		{
			name:   "source prefix then source port",
			chains: []Criteria{{SourcePrefixRanges: pfxs("10.1.0.0/16"), SourcePorts: []uint32{1000}}, {SourcePrefixRanges: pfxs("10.0.0.0/8")}},
			cases: []matchCase{
				{name: "both", in: conn(dst80, "10.1.2.3:1000"), want: 0},
				{name: "wrong port does not fall back to the /8", in: conn(dst80, "10.1.2.3:2000"), want: none},
				{name: "/8", in: conn(dst80, "10.2.0.1:2000"), want: 1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runMatch(t, tt.chains, tt.cases)
		})
	}
}

func TestMatchEdgeCases(t *testing.T) {
	t.Parallel()
	t.Run("empty table", func(t *testing.T) {
		t.Parallel()
		runMatch(t, nil, []matchCase{{name: "any", in: conn(dst80, client), want: none}})
	})
	t.Run("explicit 0.0.0.0/0 competes with chains without prefixes", func(t *testing.T) {
		t.Parallel()
		// Envoy files both under 0.0.0.0/0 in its trie (where two entries
		// for one prefix trip a debug assertion); Sift merges them into one
		// branch, so they are told apart by the later criteria.
		runMatch(t, []Criteria{{PrefixRanges: pfxs("0.0.0.0/0"), TransportProtocol: "tls"}, {}}, []matchCase{
			{name: "tls", in: conn(dst80, client).transport("tls"), want: 0},
			{name: "raw", in: conn(dst80, client), want: 1},
			{name: "ipv6 only has the chain without prefixes", in: conn("[2001:db8::1]:80", client).transport("tls"), want: 1},
		})
	})
	t.Run("empty server name is no requirement", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{ServerNames: []string{"", "a.com"}, TransportProtocol: "tls"}, {ServerNames: []string{"b.com"}}}, []matchCase{
			{name: "listed", in: conn(dst80, client).sni("a.com").transport("tls"), want: 0},
			{name: "unlisted", in: conn(dst80, client).sni("c.com").transport("tls"), want: 0},
			{name: "other chain", in: conn(dst80, client).sni("b.com"), want: 1},
		})
	})
	t.Run("empty application protocol selects the catch-all where it appears", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{ApplicationProtocols: []string{"h2"}}, {}}, []matchCase{
			{name: "empty first", in: conn(dst80, client).alpn("", "h2"), want: 1},
			{name: "empty second", in: conn(dst80, client).alpn("h2", ""), want: 0},
		})
	})
	t.Run("missing addresses", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{PrefixRanges: pfxs("10.0.0.0/8")}, {DestinationPort: 80}, {SourcePrefixRanges: pfxs("10.0.0.0/8")}}, []matchCase{
			{name: "no addresses use the catch-alls", in: Input{}, want: none},
			{name: "no destination", in: Input{Source: netip.MustParseAddrPort(client)}, want: none},
			{name: "no source", in: Input{Destination: netip.MustParseAddrPort("192.168.0.1:80")}, want: 1},
		})
	})
	t.Run("ipv6 zones are ignored", func(t *testing.T) {
		t.Parallel()
		runMatch(t, []Criteria{{PrefixRanges: pfxs("fe80::/64")}, {}}, []matchCase{
			{name: "zoned", in: conn("[fe80::1%eth0]:80", client), want: 0},
		})
	})
}

func TestMatchIPv6(t *testing.T) {
	t.Parallel()
	runMatch(t, []Criteria{
		{PrefixRanges: pfxs("2001:db8::/32")},
		{PrefixRanges: pfxs("2001:db8:1::/48"), SourcePrefixRanges: pfxs("fd00::/8")},
		{PrefixRanges: pfxs("10.0.0.0/8")},
		{PrefixRanges: pfxs("::/0"), SourceType: SourceLocal},
	}, []matchCase{
		{name: "/32", in: conn("[2001:db8:2::1]:80", "[fd00::1]:1"), want: 0},
		{name: "/48", in: conn("[2001:db8:1::1]:80", "[fd00::1]:1"), want: 1},
		{name: "/48 source mismatch", in: conn("[2001:db8:1::1]:80", "[2001:db8::9]:1"), want: none},
		{name: "ipv4", in: conn("10.0.0.1:80", "[fd00::1]:1"), want: 2},
		{name: "ipv6 catch-all local", in: conn("[2001:db9::1]:80", "[::1]:1"), want: 3},
		{name: "ipv6 catch-all external", in: conn("[2001:db9::1]:80", "[fd00::1]:1"), want: none},
		{name: "ipv4 outside every prefix", in: conn("192.168.0.1:80", "[fd00::1]:1"), want: none},
	})
}

// More prefixes than the linear scan handles, to exercise the per-length maps.
func TestMatchManyPrefixes(t *testing.T) {
	t.Parallel()
	var chains []Criteria
	for i := range 20 {
		chains = append(chains, Criteria{PrefixRanges: pfxs(fmt.Sprintf("10.%d.0.0/16", i), fmt.Sprintf("2001:db8:%x::/48", i))})
	}
	chains = append(chains,
		Criteria{PrefixRanges: pfxs("10.3.3.0/24")},
		Criteria{PrefixRanges: pfxs("10.0.0.0/8", "2001:db8::/32")},
		Criteria{PrefixRanges: pfxs("10.3.3.3/32")},
	)
	runMatch(t, chains, []matchCase{
		{name: "/16", in: conn("10.7.1.1:80", client), want: 7},
		{name: "/24", in: conn("10.3.3.1:80", client), want: 20},
		{name: "/32", in: conn("10.3.3.3:80", client), want: 22},
		{name: "/8", in: conn("10.99.0.1:80", client), want: 21},
		{name: "v6 /48", in: conn("[2001:db8:13::1]:80", client), want: 19},
		{name: "v6 /32", in: conn("[2001:db8:ffff::1]:80", client), want: 21},
		{name: "none", in: conn("11.0.0.1:80", client), want: none},
		{name: "v4-mapped", in: conn("[::ffff:10.3.3.3]:80", client), want: 22},
	})
}

func TestInputFrom(t *testing.T) {
	t.Parallel()
	info := &filters.ConnInfo{
		LocalAddr:            netip.MustParseAddrPort(dst80),
		RemoteAddr:           netip.MustParseAddrPort(client),
		TransportProtocol:    "tls",
		ServerName:           "a.com",
		ApplicationProtocols: []string{"h2"},
	}
	want := conn(dst80, client).sni("a.com").transport("tls").alpn("h2")
	if diff := cmp.Diff(want, InputFrom(info), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("InputFrom() mismatch (-want +got):\n%s", diff)
	}
}

func TestSourceTypeString(t *testing.T) {
	t.Parallel()
	got := []string{SourceAny.String(), SourceLocal.String(), SourceExternal.String(), SourceType(9).String()}
	want := []string{"ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL", "SourceType(9)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("String() mismatch (-want +got):\n%s", diff)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	sidecar, source := benchSidecarTable(t), benchSourceTable(t)
	tests := []struct {
		tbl *Table
		in  Input
	}{
		{sidecar, conn("10.0.0.1:3306", client)},
		{sidecar, conn("10.0.0.1:8080", client).sni("api.svc.cluster.local").transport("tls").alpn("istio-peer-exchange", "h2")},
		{sidecar, conn("10.0.0.1:8080", client).alpn("http/1.1")},
		{sidecar, conn("[::ffff:10.0.0.1]:8080", "[::ffff:127.0.0.1]:9").sni("x.y.z.example.com").transport("tls")},
		{source, conn("10.0.0.1:8080", "10.1.1.1:9").alpn("h2")},
		{source, conn("[2001:db8::1]:8080", "[2001:db8::1]:9").sni("a.example.com").transport("tls")},
	}
	for _, tt := range tests {
		if n := testing.AllocsPerRun(100, func() { tt.tbl.Match(tt.in) }); n != 0 {
			t.Errorf("Match(%+v) allocates %v times", tt.in, n)
		}
		if n := testing.AllocsPerRun(100, func() { tt.tbl.Needs(tt.in) }); n != 0 {
			t.Errorf("Needs(%+v) allocates %v times", tt.in, n)
		}
	}
}
