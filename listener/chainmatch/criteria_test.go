package chainmatch

import (
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func cidr(addr string, bits uint32) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: addr, PrefixLen: wrapperspb.UInt32(bits)}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func pfxs(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = pfx(s)
	}
	return out
}

// cmpPrefixes compares netip values by their text.
var cmpPrefixes = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func TestFromProto(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      *listenerv3.FilterChainMatch
		want    Criteria
		wantErr string
	}{
		{name: "nil matches everything", in: nil, want: Criteria{}},
		{name: "empty matches everything", in: &listenerv3.FilterChainMatch{}, want: Criteria{}},
		{
			name: "every field",
			in: &listenerv3.FilterChainMatch{
				DestinationPort:          wrapperspb.UInt32(443),
				PrefixRanges:             []*corev3.CidrRange{cidr("10.1.2.3", 8), cidr("2001:db8::1", 32)},
				ServerNames:              []string{"WWW.Example.com", "*.example.org"},
				TransportProtocol:        "tls",
				ApplicationProtocols:     []string{"h2", "http/1.1"},
				DirectSourcePrefixRanges: []*corev3.CidrRange{cidr("192.168.0.0", 16)},
				SourceType:               listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK,
				SourcePrefixRanges:       []*corev3.CidrRange{cidr("172.16.0.0", 12)},
				SourcePorts:              []uint32{1000, 2000},
			},
			want: Criteria{
				DestinationPort:          443,
				PrefixRanges:             pfxs("10.0.0.0/8", "2001:db8::/32"),
				ServerNames:              []string{"www.example.com", "*.example.org"},
				TransportProtocol:        "tls",
				ApplicationProtocols:     []string{"h2", "http/1.1"},
				DirectSourcePrefixRanges: pfxs("192.168.0.0/16"),
				SourceType:               SourceLocal,
				SourcePrefixRanges:       pfxs("172.16.0.0/12"),
				SourcePorts:              []uint32{1000, 2000},
			},
		},
		{
			name: "external source type",
			in:   &listenerv3.FilterChainMatch{SourceType: listenerv3.FilterChainMatch_EXTERNAL},
			want: Criteria{SourceType: SourceExternal},
		},
		{
			name: "unset prefix_len is 0",
			in:   &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{{AddressPrefix: "10.0.0.1"}}},
			want: Criteria{PrefixRanges: pfxs("0.0.0.0/0")},
		},
		{
			name: "ipv4 prefix_len above 32 is truncated as Envoy does",
			in:   &listenerv3.FilterChainMatch{SourcePrefixRanges: []*corev3.CidrRange{cidr("10.0.0.1", 40)}},
			want: Criteria{SourcePrefixRanges: pfxs("10.0.0.1/32")},
		},
		{
			name: "ipv4-mapped prefix stays ipv6",
			in:   &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("::ffff:10.0.0.0", 104)}},
			want: Criteria{PrefixRanges: pfxs("::ffff:10.0.0.0/104")},
		},
		{
			name: "empty server name is kept (Envoy treats it as no requirement)",
			in:   &listenerv3.FilterChainMatch{ServerNames: []string{""}},
			want: Criteria{ServerNames: []string{""}},
		},
		{
			name:    "address_suffix is unimplemented",
			in:      &listenerv3.FilterChainMatch{AddressSuffix: "::1"},
			wantErr: "chainmatch: address_suffix: not implemented (Envoy rejects it too)",
		},
		{
			name:    "suffix_len is unimplemented",
			in:      &listenerv3.FilterChainMatch{SuffixLen: wrapperspb.UInt32(0)},
			wantErr: "chainmatch: suffix_len: not implemented (Envoy rejects it too)",
		},
		{
			name:    "destination_port 0",
			in:      &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(0)},
			wantErr: "chainmatch: destination_port: 0 is outside [1, 65535]",
		},
		{
			name:    "destination_port too large",
			in:      &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(65536)},
			wantErr: "chainmatch: destination_port: 65536 is outside [1, 65535]",
		},
		{
			name:    "address is a hostname",
			in:      &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("10.0.0.0", 8), cidr("example.com", 8)}},
			wantErr: `chainmatch: prefix_ranges[1]: address_prefix "example.com" is not an IP address`,
		},
		{
			name:    "address with a length",
			in:      &listenerv3.FilterChainMatch{SourcePrefixRanges: []*corev3.CidrRange{cidr("10.0.0.0/8", 8)}},
			wantErr: `chainmatch: source_prefix_ranges[0]: address_prefix "10.0.0.0/8" is not an IP address`,
		},
		{
			name:    "address with a zone",
			in:      &listenerv3.FilterChainMatch{DirectSourcePrefixRanges: []*corev3.CidrRange{cidr("fe80::1%eth0", 64)}},
			wantErr: `chainmatch: direct_source_prefix_ranges[0]: address_prefix "fe80::1%eth0" is not an IP address`,
		},
		{
			name:    "empty address",
			in:      &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("", 0)}},
			wantErr: `chainmatch: prefix_ranges[0]: address_prefix "" is not an IP address`,
		},
		{
			name:    "nil cidr",
			in:      &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{nil}},
			wantErr: `chainmatch: prefix_ranges[0]: missing`,
		},
		{
			name:    "prefix_len above 128",
			in:      &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("2001:db8::", 129)}},
			wantErr: `chainmatch: prefix_ranges[0]: prefix_len 129 is above 128`,
		},
		{
			name:    "prefixes equal once masked",
			in:      &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("10.0.0.0", 8), cidr("10.9.9.9", 8)}},
			wantErr: `chainmatch: prefix_ranges[1]: 10.0.0.0/8 repeats prefix_ranges[0]`,
		},
		{
			name:    "undefined source_type",
			in:      &listenerv3.FilterChainMatch{SourceType: 7},
			wantErr: "chainmatch: source_type: undefined value 7",
		},
		{
			name:    "source port 0",
			in:      &listenerv3.FilterChainMatch{SourcePorts: []uint32{80, 0}},
			wantErr: "chainmatch: source_ports[1]: 0 is outside [1, 65535]",
		},
		{
			name:    "source port repeated",
			in:      &listenerv3.FilterChainMatch{SourcePorts: []uint32{80, 81, 80}},
			wantErr: "chainmatch: source_ports[2]: 80 repeats source_ports[0]",
		},
		{
			name:    "wildcard in a middle label",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"a.com", "www.*.com"}},
			wantErr: `chainmatch: server_names[1]: "www.*.com": wildcard only allowed as the first label`,
		},
		{
			name:    "wildcard in the last label",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"example.*"}},
			wantErr: `chainmatch: server_names[0]: "example.*": wildcard only allowed as the first label`,
		},
		{
			name:    "two wildcards",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"*.*.com"}},
			wantErr: `chainmatch: server_names[0]: "*.*.com": wildcard only allowed as the first label`,
		},
		{
			name:    "partial wildcard",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"*w.example.com"}},
			wantErr: `chainmatch: server_names[0]: "*w.example.com": partial wildcards are not supported: the first label must be exactly "*"`,
		},
		{
			name:    "partial wildcard at the end of the label",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"w*.example.com"}},
			wantErr: `chainmatch: server_names[0]: "w*.example.com": partial wildcards are not supported: the first label must be exactly "*"`,
		},
		{
			name:    "bare star",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"*"}},
			wantErr: `chainmatch: server_names[0]: "*": "*" is not supported: omit server_names to match any name`,
		},
		{
			name:    "star dot",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"*."}},
			wantErr: `chainmatch: server_names[0]: "*.": wildcard needs a domain after "*."`,
		},
		{
			name:    "server name repeated in another case",
			in:      &listenerv3.FilterChainMatch{ServerNames: []string{"a.example.com", "A.Example.com"}},
			wantErr: `chainmatch: server_names[1]: "A.Example.com" repeats server_names[0]`,
		},
		{
			name:    "application protocol repeated",
			in:      &listenerv3.FilterChainMatch{ApplicationProtocols: []string{"h2", "h2"}},
			wantErr: `chainmatch: application_protocols[1]: "h2" repeats application_protocols[0]`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := FromProto(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("FromProto() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromProto() error = %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpPrefixes); diff != "" {
				t.Errorf("FromProto() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewTableErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		chains  []Criteria
		wantErr string
	}{
		{
			name:    "identical empty chains",
			chains:  []Criteria{{}, {}},
			wantErr: "chainmatch: filter chains 0 and 1 have overlapping matching rules: both match any connection",
		},
		{
			name: "identical chains",
			chains: []Criteria{
				{DestinationPort: 443, ServerNames: []string{"a.com"}},
				{DestinationPort: 80},
				{DestinationPort: 443, ServerNames: []string{"a.com"}},
			},
			wantErr: `chainmatch: filter chains 0 and 2 have overlapping matching rules: both match destination_port 443, server_name "a.com"`,
		},
		{
			name: "lists that share a value",
			chains: []Criteria{
				{ServerNames: []string{"a.com", "b.com"}, ApplicationProtocols: []string{"h2"}},
				{ServerNames: []string{"c.com", "b.com"}, ApplicationProtocols: []string{"http/1.1", "h2"}},
			},
			wantErr: `chainmatch: filter chains 0 and 1 have overlapping matching rules: both match server_name "b.com", application_protocol "h2"`,
		},
		{
			name: "server names differing in case",
			chains: []Criteria{
				{ServerNames: []string{"*.Example.com"}},
				{ServerNames: []string{"*.example.COM"}},
			},
			wantErr: `chainmatch: filter chains 0 and 1 have overlapping matching rules: both match server_name "*.example.com"`,
		},
		{
			name: "prefixes equal once masked",
			chains: []Criteria{
				{PrefixRanges: pfxs("10.0.0.1/8"), SourcePorts: []uint32{5}},
				{PrefixRanges: pfxs("10.9.9.9/8"), SourcePorts: []uint32{5}},
			},
			wantErr: `chainmatch: filter chains 0 and 1 have overlapping matching rules: both match prefix_range 10.0.0.0/8, source_port 5`,
		},
		{
			name: "every field",
			chains: []Criteria{{
				DestinationPort: 1, PrefixRanges: pfxs("10.0.0.0/8"), ServerNames: []string{"a"}, TransportProtocol: "tls",
				ApplicationProtocols: []string{"h2"}, DirectSourcePrefixRanges: pfxs("10.1.0.0/16"), SourceType: SourceExternal,
				SourcePrefixRanges: pfxs("::1/128"), SourcePorts: []uint32{9},
			}, {
				DestinationPort: 1, PrefixRanges: pfxs("10.0.0.0/8"), ServerNames: []string{"a"}, TransportProtocol: "tls",
				ApplicationProtocols: []string{"h2"}, DirectSourcePrefixRanges: pfxs("10.1.0.0/16"), SourceType: SourceExternal,
				SourcePrefixRanges: pfxs("::1/128"), SourcePorts: []uint32{9},
			}},
			wantErr: `chainmatch: filter chains 0 and 1 have overlapping matching rules: both match destination_port 1, prefix_range 10.0.0.0/8, ` +
				`server_name "a", transport_protocol "tls", application_protocol "h2", direct_source_prefix_range 10.1.0.0/16, ` +
				`source_type EXTERNAL, source_prefix_range ::1/128, source_port 9`,
		},
		{
			name:    "invalid criteria name the chain",
			chains:  []Criteria{{}, {ServerNames: []string{"a.*.com"}}},
			wantErr: `chainmatch: filter chain 1: server_names[0]: "a.*.com": wildcard only allowed as the first label`,
		},
		{
			name:    "invalid prefix",
			chains:  []Criteria{{SourcePrefixRanges: []netip.Prefix{{}}}},
			wantErr: `chainmatch: filter chain 0: source_prefix_ranges[0]: invalid prefix`,
		},
		{
			name:    "destination port out of range",
			chains:  []Criteria{{DestinationPort: 1 << 16}},
			wantErr: `chainmatch: filter chain 0: destination_port: 65536 is outside [1, 65535]`,
		},
		{
			name:    "undefined source type",
			chains:  []Criteria{{SourceType: 3}},
			wantErr: `chainmatch: filter chain 0: source_type: undefined value 3`,
		},
		{
			name:    "repeated value within a chain",
			chains:  []Criteria{{SourcePorts: []uint32{7, 7}}},
			wantErr: `chainmatch: filter chain 0: source_ports[1]: 7 repeats source_ports[0]`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewTable(tt.chains)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("NewTable() error = %v\nwant %s", err, tt.wantErr)
			}
		})
	}
}

func TestNewTableAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		chains []Criteria
	}{
		{name: "no chains", chains: nil},
		{name: "differ only in source port", chains: []Criteria{{SourcePorts: []uint32{1}}, {SourcePorts: []uint32{2}}, {}}},
		{name: "exact and wildcard of the same name", chains: []Criteria{{ServerNames: []string{"a.com"}}, {ServerNames: []string{"*.a.com"}}}},
		{name: "nested prefixes", chains: []Criteria{{PrefixRanges: pfxs("10.0.0.0/8")}, {PrefixRanges: pfxs("10.0.0.0/16")}, {}}},
		{name: "source types", chains: []Criteria{{SourceType: SourceAny}, {SourceType: SourceLocal}, {SourceType: SourceExternal}}},
		{name: "transport protocols", chains: []Criteria{{TransportProtocol: "tls"}, {TransportProtocol: "raw_buffer"}, {}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NewTable(tt.chains); err != nil {
				t.Fatalf("NewTable() error = %v", err)
			}
		})
	}
}

func TestNewTableDoesNotModifyCriteria(t *testing.T) {
	t.Parallel()
	chains := []Criteria{{ServerNames: []string{"A.COM"}, PrefixRanges: pfxs("10.1.2.3/8")}}
	if _, err := NewTable(chains); err != nil {
		t.Fatal(err)
	}
	if got := chains[0].ServerNames[0] + " " + chains[0].PrefixRanges[0].String(); got != "A.COM 10.1.2.3/8" {
		t.Errorf("NewTable modified its input: %s", got)
	}
}
