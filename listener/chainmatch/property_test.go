package chainmatch

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/siftmesh/sift/filters"
)

// refMatch is a direct reading of FilterChainMatch's documentation: prune the
// set of chains step by step, keeping at each step the chains whose value is
// the most specific match. It returns the chosen chain and how many chains
// were left (more than one means an ambiguous table).
func refMatch(chains []Criteria, in Input) (int, int) {
	cs := make([]Criteria, len(chains))
	cand := make([]int, 0, len(chains))
	for i := range chains {
		c, err := chains[i].normalize()
		if err != nil {
			panic(err)
		}
		cs[i] = c
		cand = append(cand, i)
	}
	a := addrsOf(&in)
	// keep retains the candidates with the best non-negative score.
	keep := func(score func(c *Criteria) int) {
		best, out := -1, cand[:0:0]
		for _, i := range cand {
			switch s := score(&cs[i]); {
			case s > best:
				best, out = s, append(out[:0], i)
			case s == best && s >= 0:
				out = append(out, i)
			}
		}
		cand = out
	}
	longest := func(ps []netip.Prefix, addr netip.Addr) int {
		best := -1
		for _, p := range orAll(ps) {
			if p.Contains(addr) {
				best = max(best, p.Bits())
			}
		}
		return best
	}

	// 1. Destination port.
	keep(func(c *Criteria) int {
		switch c.DestinationPort {
		case uint32(a.dport):
			return 1
		case 0:
			return 0
		}
		return -1
	})
	// 2. Destination IP.
	keep(func(c *Criteria) int { return longest(c.PrefixRanges, a.dst) })
	// 3. Server name: exact, then the longest wildcard suffix, then none.
	keep(func(c *Criteria) int {
		if len(c.ServerNames) == 0 {
			return 0
		}
		best := -1
		for _, n := range c.ServerNames {
			switch {
			case n == "":
				best = max(best, 0)
			case n == in.ServerName:
				best = max(best, 1<<20)
			case strings.HasPrefix(n, "*."):
				suffix := n[1:]
				if i := strings.LastIndex(in.ServerName, suffix); i >= 1 && i == len(in.ServerName)-len(suffix) {
					best = max(best, len(suffix))
				}
			}
		}
		return best
	})
	// 4. Transport protocol.
	tp := in.TransportProtocol
	if tp == "" {
		tp = filters.TransportRawBuffer
	}
	keep(func(c *Criteria) int {
		switch c.TransportProtocol {
		case tp:
			return 1
		case "":
			return 0
		}
		return -1
	})
	// 5. Application protocols: the first of the connection's protocols that
	// a candidate lists; otherwise candidates without any. An empty protocol
	// names the latter (Envoy keys them by "").
	anyALPN := func(c *Criteria) bool {
		return len(c.ApplicationProtocols) == 0 || slices.Contains(c.ApplicationProtocols, "")
	}
	chosen := ""
	for _, p := range in.ApplicationProtocols {
		if p == "" {
			if slices.ContainsFunc(cand, func(i int) bool { return anyALPN(&cs[i]) }) {
				break
			}
			continue
		}
		if slices.ContainsFunc(cand, func(i int) bool { return slices.Contains(cs[i].ApplicationProtocols, p) }) {
			chosen = p
			break
		}
	}
	keep(func(c *Criteria) int {
		switch {
		case chosen != "" && slices.Contains(c.ApplicationProtocols, chosen):
			return 1
		case chosen == "" && anyALPN(c):
			return 0
		}
		return -1
	})
	// 6. Direct source IP.
	keep(func(c *Criteria) int { return longest(c.DirectSourcePrefixRanges, a.dsrc) })
	// 7. Source type.
	want := SourceExternal
	if a.sameIPOrLoopback() {
		want = SourceLocal
	}
	keep(func(c *Criteria) int {
		switch c.SourceType {
		case want:
			return 1
		case SourceAny:
			return 0
		}
		return -1
	})
	// 8. Source IP.
	keep(func(c *Criteria) int { return longest(c.SourcePrefixRanges, a.src) })
	// 9. Source port.
	keep(func(c *Criteria) int {
		switch {
		case slices.Contains(c.SourcePorts, uint32(a.sport)):
			return 1
		case len(c.SourcePorts) == 0:
			return 0
		}
		return -1
	})
	if len(cand) == 0 {
		return -1, 0
	}
	return cand[0], len(cand)
}

// gen draws random tables and connections from small pools of values that
// overlap, so that every specificity rule is exercised.
type gen struct{ r *rand.Rand }

func pick[T any](g gen, pool []T) T { return pool[g.r.IntN(len(pool))] }

// subset returns no values two times out of three, else one to max distinct
// values.
func subset[T comparable](g gen, pool []T, maxN int) []T {
	if g.r.IntN(3) > 0 {
		return nil
	}
	var out []T
	for range 1 + g.r.IntN(maxN) {
		if v := pick(g, pool); !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

var (
	poolDstPorts  = []uint32{0, 0, 80, 443}
	poolDstPrefix = pfxs("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "2001:db8::/32", "2001:db8:1::/48")
	poolManyDst   = func() []netip.Prefix {
		var ps []netip.Prefix
		for i := range 12 {
			ps = append(ps, pfx(fmt.Sprintf("10.%d.0.0/16", i)), pfx(fmt.Sprintf("10.1.%d.0/24", i)))
		}
		return ps
	}()
	poolNames     = []string{"a.example.com", "b.example.com", "*.example.com", "*.com", "x.org", "*.a.example.com"}
	poolTransport = []string{"", "", "tls", "raw_buffer"}
	poolALPN      = []string{"h2", "http/1.1", "x"}
	poolDirect    = pfxs("10.0.0.0/8", "127.0.0.0/8", "192.168.0.0/16")
	poolSource    = pfxs("10.0.0.0/8", "10.1.2.3/32", "192.168.0.0/16", "::/0", "2001:db8::/32")
	poolSrcPorts  = []uint32{1000, 2000}

	inDst     = []string{"10.0.0.1", "10.1.2.3", "10.1.9.9", "10.3.0.1", "10.1.3.7", "192.168.0.1", "2001:db8::1", "2001:db8:1::1", "::ffff:10.1.2.3"}
	inDstPort = []uint16{80, 443, 3306}
	inSrc     = []string{"127.0.0.1", "127.0.0.2", "10.0.0.1", "10.1.2.3", "192.168.1.1", "::1", "2001:db8::5"}
	inSrcPort = []uint16{1000, 2000, 3000}
	inNames   = []string{"", "a.example.com", "b.example.com", "c.example.com", "d.a.example.com", "example.com", "foo.com", "x.org", "nomatch"}
	inTP      = []string{"", "raw_buffer", "tls", "quic"}
	inALPN    = [][]string{nil, {"h2"}, {"http/1.1"}, {"x"}, {"h2", "http/1.1"}, {"http/1.1", "h2"}, {"y"}, {"y", "x"}}
)

func (g gen) criteria() Criteria {
	c := Criteria{
		DestinationPort:          pick(g, poolDstPorts),
		PrefixRanges:             subset(g, poolDstPrefix, 2),
		ServerNames:              subset(g, poolNames, 2),
		TransportProtocol:        pick(g, poolTransport),
		ApplicationProtocols:     subset(g, poolALPN, 2),
		DirectSourcePrefixRanges: subset(g, poolDirect, 1),
		SourceType:               SourceType(g.r.IntN(3)),
		SourcePrefixRanges:       subset(g, poolSource, 2),
		SourcePorts:              subset(g, poolSrcPorts, 2),
	}
	if g.r.IntN(10) == 0 { // enough prefixes for lpm's per-length maps
		c.PrefixRanges = nil
		for range 1 + g.r.IntN(12) {
			if p := pick(g, poolManyDst); !slices.Contains(c.PrefixRanges, p) {
				c.PrefixRanges = append(c.PrefixRanges, p)
			}
		}
	}
	// Most chains constrain only a few fields, as real ones do.
	if g.r.IntN(3) > 0 {
		c.DirectSourcePrefixRanges = nil
		c.SourcePrefixRanges = nil
		c.SourceType = SourceAny
	}
	return c
}

// table adds random chains, dropping those that overlap the ones kept.
func (g gen) table(tries int) ([]Criteria, *Table) {
	var chains []Criteria
	for range tries {
		c := g.criteria()
		if _, err := NewTable(append(chains, c)); err == nil {
			chains = append(chains, c)
		}
	}
	tbl, err := NewTable(chains)
	if err != nil {
		panic(err)
	}
	return chains, tbl
}

// addrs draws a connection's addresses.
func (g gen) addrs() Input {
	dst := netip.AddrPortFrom(netip.MustParseAddr(pick(g, inDst)), pick(g, inDstPort))
	src := netip.AddrPortFrom(netip.MustParseAddr(pick(g, inSrc)), pick(g, inSrcPort))
	if g.r.IntN(8) == 0 {
		src = netip.AddrPortFrom(dst.Addr(), pick(g, inSrcPort)) // same IP
	}
	in := Input{Destination: dst, Source: src}
	if g.r.IntN(4) == 0 {
		in.DirectSource = netip.AddrPortFrom(netip.MustParseAddr(pick(g, inSrc)), 9)
	}
	return in
}

const (
	propTables = 500
	propConns  = 40
	// TestNeedsIsSoundAndExact runs Match for every combination of detected
	// values (9 × 4 × 8) on each connection.
	needsTables = 200
	needsConns  = 15
)

// Match agrees with the step-by-step reading of Envoy's documentation, and
// every table NewTable accepts is unambiguous.
func TestMatchAgreesWithReference(t *testing.T) {
	t.Parallel()
	g := gen{rand.New(rand.NewPCG(1, 2))}
	var nChains, matched, total int
	for n := range propTables {
		chains, tbl := g.table(1 + g.r.IntN(10))
		nChains += len(chains)
		for range propConns {
			total++
			in := g.addrs()
			in.ServerName = pick(g, inNames)
			in.TransportProtocol = pick(g, inTP)
			in.ApplicationProtocols = pick(g, inALPN)
			got, ok := tbl.Match(in)
			want, cands := refMatch(chains, in)
			if cands > 1 {
				t.Fatalf("table %d: NewTable accepted an ambiguous table: %d chains match %+v\n%s", n, cands, in, dump(chains))
			}
			if !ok {
				got = -1
			} else {
				matched++
			}
			if got != want {
				t.Fatalf("table %d: Match(%+v) = %d, reference says %d\n%s", n, in, got, want, dump(chains))
			}
		}
	}
	t.Logf("%d tables of %.1f chains on average; %d of %d connections matched a chain",
		propTables, float64(nChains)/propTables, matched, total)
	if matched < total/5 || matched > total*4/5 {
		t.Errorf("weak generator: %d of %d connections matched", matched, total)
	}
}

// Needs is sound — a field it leaves out never changes Match, whatever the
// other detected fields are — and exact: a field it reports does change Match
// for some values. 0 means the destination is opaque.
func TestNeedsIsSoundAndExact(t *testing.T) {
	t.Parallel()
	g := gen{rand.New(rand.NewPCG(3, 4))}
	var opaque, detected int
	for n := range needsTables {
		chains, tbl := g.table(1 + g.r.IntN(10))
		for range needsConns {
			in := g.addrs()
			needs := tbl.Needs(in)
			// The outcome for every combination of detected values.
			res := make([][][]int, len(inNames))
			for i, name := range inNames {
				res[i] = make([][]int, len(inTP))
				for j, tp := range inTP {
					res[i][j] = make([]int, len(inALPN))
					for k, alpn := range inALPN {
						in := in
						in.ServerName, in.TransportProtocol, in.ApplicationProtocols = name, tp, alpn
						idx, ok := tbl.Match(in)
						if !ok {
							idx = -1
						}
						res[i][j][k] = idx
					}
				}
			}
			// A field matters when changing it alone changes the outcome.
			var matters filters.Field
			for i := range inNames {
				for j := range inTP {
					for k := range inALPN {
						if res[i][j][k] != res[0][j][k] {
							matters |= filters.FieldServerName
						}
						if res[i][j][k] != res[i][0][k] {
							matters |= filters.FieldTransportProtocol
						}
						if res[i][j][k] != res[i][j][0] {
							matters |= filters.FieldApplicationProtocols
						}
					}
				}
			}
			if missing := matters &^ needs; missing != 0 {
				t.Fatalf("table %d: Needs(%v) = %04b, but fields %04b change the chain\n%s", n, in, needs, missing, dump(chains))
			}
			if extra := needs &^ matters; extra != 0 {
				t.Fatalf("table %d: Needs(%v) = %04b, but fields %04b never change the chain\n%s", n, in, needs, extra, dump(chains))
			}
			if needs == 0 {
				opaque++
			} else {
				detected++
			}
		}
	}
	t.Logf("%d opaque and %d detection-dependent connections", opaque, detected)
	// The generator must produce both kinds of destination.
	if opaque < needsTables || detected < needsTables {
		t.Errorf("weak generator: %d opaque and %d detected connections", opaque, detected)
	}
}

func dump(chains []Criteria) string {
	var b strings.Builder
	for i, c := range chains {
		fmt.Fprintf(&b, "  %d: %+v\n", i, c)
	}
	return b.String()
}

func TestNeeds(t *testing.T) {
	t.Parallel()
	const (
		sn   = filters.FieldServerName
		tp   = filters.FieldTransportProtocol
		alpn = filters.FieldApplicationProtocols
	)
	tests := []struct {
		name   string
		chains []Criteria
		in     Input
		want   filters.Field
	}{
		{
			name:   "opaque port",
			chains: []Criteria{{DestinationPort: 3306}, {TransportProtocol: "tls", ServerNames: []string{"a.com"}}, {}},
			in:     conn("10.0.0.1:3306", client),
			want:   0,
		},
		{
			name:   "other port needs detection",
			chains: []Criteria{{DestinationPort: 3306}, {TransportProtocol: "tls", ServerNames: []string{"a.com"}}, {}},
			in:     conn("10.0.0.1:80", client),
			want:   sn | tp,
		},
		{
			name:   "opaque port with source criteria",
			chains: []Criteria{{DestinationPort: 3306, SourcePrefixRanges: pfxs("10.0.0.0/8")}, {DestinationPort: 3306, SourceType: SourceLocal}, {ApplicationProtocols: []string{"h2"}}},
			in:     conn("10.0.0.1:3306", client),
			want:   0,
		},
		{
			name:   "addresses only",
			chains: []Criteria{{PrefixRanges: pfxs("10.0.0.0/8")}, {SourcePorts: []uint32{5}}},
			in:     conn(dst80, client),
			want:   0,
		},
		{
			name:   "no chain at all",
			chains: []Criteria{{DestinationPort: 443}},
			in:     conn(dst80, client),
			want:   0,
		},
		{
			name:   "application protocols only",
			chains: []Criteria{{ApplicationProtocols: []string{"h2"}}, {}},
			in:     conn(dst80, client),
			want:   alpn,
		},
		{
			name:   "transport only",
			chains: []Criteria{{TransportProtocol: "tls"}},
			in:     conn(dst80, client),
			want:   tp,
		},
		{
			name:   "server name only",
			chains: []Criteria{{ServerNames: []string{"*.example.com"}}, {}},
			in:     conn(dst80, client),
			want:   sn,
		},
		{
			name:   "every branch fails on the source port",
			chains: []Criteria{{ServerNames: []string{"a.com"}, SourcePorts: []uint32{1}}, {TransportProtocol: "tls", SourcePorts: []uint32{2}}},
			in:     conn(dst80, "192.168.1.9:3"),
			want:   0,
		},
		{
			name:   "only one branch survives the source",
			chains: []Criteria{{ServerNames: []string{"a.com"}, SourcePrefixRanges: pfxs("10.0.0.0/8")}, {}},
			in:     conn(dst80, client),
			want:   sn,
		},
		{
			name:   "source type decides the leaf: local",
			chains: []Criteria{{ApplicationProtocols: []string{"h2"}, SourceType: SourceLocal, SourcePorts: []uint32{1000}}, {ApplicationProtocols: []string{"h2"}}},
			in:     conn(dst80, "127.0.0.1:3000"),
			want:   0,
		},
		{
			name:   "source type decides the leaf: external",
			chains: []Criteria{{ApplicationProtocols: []string{"h2"}, SourceType: SourceLocal, SourcePorts: []uint32{1000}}, {ApplicationProtocols: []string{"h2"}}},
			in:     conn(dst80, client),
			want:   alpn,
		},
		{
			name:   "source prefix decides the leaf",
			chains: []Criteria{{ApplicationProtocols: []string{"h2"}, SourcePrefixRanges: pfxs("10.0.0.0/8")}},
			in:     conn(dst80, client),
			want:   0,
		},
		{
			name:   "source port decides the leaf",
			chains: []Criteria{{ApplicationProtocols: []string{"h2"}, SourcePorts: []uint32{1}}, {SourcePorts: []uint32{2}}},
			in:     conn(dst80, "192.168.1.9:2"),
			want:   alpn,
		},
		{
			name:   "source port fails every leaf",
			chains: []Criteria{{ApplicationProtocols: []string{"h2"}, SourcePorts: []uint32{1}}, {SourcePorts: []uint32{2}}},
			in:     conn(dst80, "192.168.1.9:3"),
			want:   0,
		},
		{
			name: "nested levels",
			chains: []Criteria{
				{ServerNames: []string{"a.com"}, TransportProtocol: "tls", ApplicationProtocols: []string{"h2"}},
				{ServerNames: []string{"a.com"}, TransportProtocol: "tls"},
				{ServerNames: []string{"b.com"}},
			},
			in:   conn(dst80, client),
			want: sn | tp | alpn,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tbl, err := NewTable(tt.chains)
			if err != nil {
				t.Fatal(err)
			}
			if got := tbl.Needs(tt.in); got != tt.want {
				t.Errorf("Needs() = %04b, want %04b", got, tt.want)
			}
		})
	}
}
