package chainmatch

import (
	"fmt"
	"net/netip"
	"testing"
)

// benchSidecarTable is shaped like a mesh sidecar's inbound listener: opaque
// ports, mTLS and plaintext chains told apart by transport and ALPN, a few
// SNI chains and a catch-all.
func benchSidecarTable(tb testing.TB) *Table {
	tb.Helper()
	chains := []Criteria{
		{DestinationPort: 3306},
		{DestinationPort: 5432},
		{DestinationPort: 6379},
		{TransportProtocol: "tls", ApplicationProtocols: []string{"istio-peer-exchange", "istio"}},
		{TransportProtocol: "tls", ApplicationProtocols: []string{"h2", "http/1.1"}},
		{TransportProtocol: "tls"},
		{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.1", "http/1.0", "h2c"}},
		{TransportProtocol: "raw_buffer"},
		{ServerNames: []string{"api.svc.cluster.local"}, TransportProtocol: "tls"},
		{ServerNames: []string{"*.example.com"}, TransportProtocol: "tls"},
		{PrefixRanges: pfxs("127.0.0.1/32"), SourceType: SourceLocal},
	}
	tbl, err := NewTable(chains)
	if err != nil {
		tb.Fatal(err)
	}
	return tbl
}

func benchMatch(b *testing.B, tbl *Table, in Input) {
	b.Helper()
	if _, ok := tbl.Match(in); !ok {
		b.Fatalf("no match for %+v", in)
	}
	b.ReportAllocs()
	for b.Loop() {
		tbl.Match(in)
	}
}

func BenchmarkMatch(b *testing.B) {
	sidecar := benchSidecarTable(b)
	b.Run("sidecar/opaque-port", func(b *testing.B) {
		benchMatch(b, sidecar, conn("10.0.0.1:3306", client))
	})
	b.Run("sidecar/mtls", func(b *testing.B) {
		benchMatch(b, sidecar, conn("10.0.0.1:8080", client).transport("tls").alpn("istio-peer-exchange", "h2"))
	})
	b.Run("sidecar/plaintext-http", func(b *testing.B) {
		benchMatch(b, sidecar, conn("10.0.0.1:8080", client).alpn("http/1.1"))
	})
	b.Run("sidecar/sni-wildcard", func(b *testing.B) {
		benchMatch(b, sidecar, conn("10.0.0.1:8080", client).sni("a.b.example.com").transport("tls"))
	})

	// An edge gateway with many SNI chains.
	var sni []Criteria
	for i := range 1000 {
		sni = append(sni, Criteria{ServerNames: []string{fmt.Sprintf("host%d.example.com", i), fmt.Sprintf("*.tenant%d.example.net", i)}})
	}
	sni = append(sni, Criteria{})
	sniTable, err := NewTable(sni)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("sni-2000/exact", func(b *testing.B) {
		benchMatch(b, sniTable, conn("10.0.0.1:443", client).sni("host777.example.com").transport("tls"))
	})
	b.Run("sni-2000/wildcard", func(b *testing.B) {
		benchMatch(b, sniTable, conn("10.0.0.1:443", client).sni("a.b.tenant777.example.net").transport("tls"))
	})

	// Many destination prefixes of several lengths.
	var dst []Criteria
	for i := range 256 {
		dst = append(dst, Criteria{PrefixRanges: pfxs(fmt.Sprintf("10.%d.0.0/16", i), fmt.Sprintf("172.16.%d.0/24", i), fmt.Sprintf("2001:db8:%x::/48", i))})
	}
	dst = append(dst, Criteria{})
	dstTable, err := NewTable(dst)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("prefixes-768/v4", func(b *testing.B) {
		benchMatch(b, dstTable, conn("172.16.200.9:80", client))
	})
	b.Run("prefixes-768/v6", func(b *testing.B) {
		benchMatch(b, dstTable, Input{Destination: netip.MustParseAddrPort("[2001:db8:c8::1]:80"), Source: netip.MustParseAddrPort(client)})
	})
	b.Run("prefixes-768/miss", func(b *testing.B) {
		benchMatch(b, dstTable, conn("192.168.0.1:80", client))
	})
}

// benchSourceTable has chains whose choice depends on the source as well as
// on detected values, so Needs must walk the branches for each connection.
func benchSourceTable(tb testing.TB) *Table {
	tb.Helper()
	tbl, err := NewTable([]Criteria{
		{ApplicationProtocols: []string{"h2"}, SourcePrefixRanges: pfxs("10.0.0.0/8")},
		{ApplicationProtocols: []string{"http/1.1"}, SourceType: SourceLocal},
		{TransportProtocol: "tls", ServerNames: []string{"*.example.com"}},
		{TransportProtocol: "tls"},
		{},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return tbl
}

func BenchmarkNeeds(b *testing.B) {
	sidecar, source := benchSidecarTable(b), benchSourceTable(b)
	for _, bc := range []struct {
		name string
		tbl  *Table
		in   Input
	}{
		{"opaque-port", sidecar, conn("10.0.0.1:3306", client)},
		{"detect", sidecar, conn("10.0.0.1:8080", client)},
		{"detect-source-dependent", source, conn("10.0.0.1:8080", client)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bc.tbl.Needs(bc.in)
			}
		})
	}
}

func BenchmarkNewTable(b *testing.B) {
	var chains []Criteria
	for i := range 100 {
		chains = append(chains, Criteria{DestinationPort: uint32(8000 + i%10), ServerNames: []string{fmt.Sprintf("h%d.example.com", i)}, ApplicationProtocols: []string{"h2", "http/1.1"}})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewTable(chains); err != nil {
			b.Fatal(err)
		}
	}
}
