package proxyinit

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/siftmesh/sift/mesh"
)

func TestNewPlan(t *testing.T) {
	t.Parallel()
	many := mesh.MustParsePortSet("1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31,100-200")
	tests := []struct {
		name    string
		cfg     Config
		ipv6    bool
		wantIn  []string
		wantOut []string
		wantErr string
	}{
		{
			name:    "defaults",
			cfg:     Config{InboundPort: 4143, OutboundPort: 4140, ProxyUID: 2102, ProxyGID: -1},
			wantIn:  []string{"-p tcp -m comment --comment sift: inbound to the proxy -j REDIRECT --to-ports 4143"},
			wantOut: []string{"-m owner --uid-owner 2102 -m comment --comment sift: the proxy's own traffic -j RETURN", "-o lo -m comment --comment sift: loopback -j RETURN", "-p tcp -m comment --comment sift: outbound to the proxy -j REDIRECT --to-ports 4140"},
		},
		{
			name: "skips, gid, subnets of this family only",
			cfg: Config{InboundPort: 4143, OutboundPort: 4140, ProxyUID: -1, ProxyGID: 3000,
				SkipInboundPorts: mesh.MustParsePortSet("22,8000-8100"), SkipOutboundPorts: mesh.MustParsePortSet("5432"),
				SkipOutboundSubnets: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8"), netip.MustParsePrefix("fd00::/8")}},
			wantIn: []string{"-p tcp -m multiport --dports 22,8000:8100 -m comment --comment sift: skip inbound ports -j RETURN",
				"-p tcp -m comment --comment sift: inbound to the proxy -j REDIRECT --to-ports 4143"},
			wantOut: []string{"-m owner --gid-owner 3000 -m comment --comment sift: the proxy's own traffic -j RETURN", "-o lo -m comment --comment sift: loopback -j RETURN",
				"-p tcp -m multiport --dports 5432 -m comment --comment sift: skip outbound ports -j RETURN",
				"-d 10.0.0.0/8 -m comment --comment sift: skip outbound subnet -j RETURN",
				"-p tcp -m comment --comment sift: outbound to the proxy -j REDIRECT --to-ports 4140"},
		},
		{
			name: "ipv6 takes the ipv6 subnets",
			cfg: Config{InboundPort: 4143, OutboundPort: 4140, ProxyUID: 0, ProxyGID: -1,
				SkipOutboundSubnets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}},
			ipv6:   true,
			wantIn: []string{"-p tcp -m comment --comment sift: inbound to the proxy -j REDIRECT --to-ports 4143"},
			wantOut: []string{"-m owner --uid-owner 0 -m comment --comment sift: the proxy's own traffic -j RETURN", "-o lo -m comment --comment sift: loopback -j RETURN",
				"-d fd00::/8 -m comment --comment sift: skip outbound subnet -j RETURN",
				"-p tcp -m comment --comment sift: outbound to the proxy -j REDIRECT --to-ports 4140"},
		},
		{
			name: "multiport takes 15 ports a rule",
			cfg:  Config{InboundPort: 4143, OutboundPort: 4140, ProxyUID: 1, ProxyGID: -1, SkipInboundPorts: many},
			wantIn: []string{"-p tcp -m multiport --dports 1,3,5,7,9,11,13,15,17,19,21,23,25,27,29 -m comment --comment sift: skip inbound ports -j RETURN",
				"-p tcp -m multiport --dports 31,100:200 -m comment --comment sift: skip inbound ports -j RETURN",
				"-p tcp -m comment --comment sift: inbound to the proxy -j REDIRECT --to-ports 4143"},
			wantOut: []string{"-m owner --uid-owner 1 -m comment --comment sift: the proxy's own traffic -j RETURN", "-o lo -m comment --comment sift: loopback -j RETURN",
				"-p tcp -m comment --comment sift: outbound to the proxy -j REDIRECT --to-ports 4140"},
		},
		{name: "no owner", cfg: Config{InboundPort: 4143, OutboundPort: 4140, ProxyUID: -1, ProxyGID: -1}, wantErr: "give the proxy's UID or GID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := NewPlan(tt.cfg, tt.ipv6)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewPlan() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			join := func(rs [][]string) []string {
				var out []string
				for _, r := range rs {
					out = append(out, strings.Join(r, " "))
				}
				return out
			}
			if diff := cmp.Diff(tt.wantIn, join(p.Inbound)); diff != "" {
				t.Errorf("inbound (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantOut, join(p.Outbound)); diff != "" {
				t.Errorf("outbound (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeTables is an in-memory nat table that answers the commands Apply and
// Remove run, to check their logic; the real thing is tested in network
// namespaces (cmd/sift).
type fakeTables struct {
	chains map[string][]string
	log    []string
}

func (f *fakeTables) run(argv []string) error {
	f.log = append(f.log, strings.Join(argv[3:], " "))
	op, chain, rule := argv[3], argv[4], strings.Join(argv[5:], " ")
	_, exists := f.chains[chain]
	switch op {
	case "-L":
		if !exists {
			return errors.New("no chain")
		}
	case "-N":
		if exists {
			return errors.New("exists")
		}
		f.chains[chain] = nil
	case "-F":
		f.chains[chain] = nil
	case "-X":
		delete(f.chains, chain)
	case "-A":
		f.chains[chain] = append(f.chains[chain], rule)
	case "-C":
		for _, r := range f.chains[chain] {
			if r == rule {
				return nil
			}
		}
		return errors.New("no rule")
	case "-D":
		for i, r := range f.chains[chain] {
			if r == rule {
				f.chains[chain] = append(f.chains[chain][:i], f.chains[chain][i+1:]...)
				return nil
			}
		}
		return errors.New("no rule")
	}
	return nil
}

func TestApplyIsIdempotentAndRemoveUndoes(t *testing.T) {
	t.Parallel()
	f := &fakeTables{chains: map[string][]string{"PREROUTING": {"-j KEEP"}, "OUTPUT": nil}}
	p, err := NewPlan(Config{InboundPort: 4143, OutboundPort: 4140, ProxyUID: 2102, ProxyGID: -1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(f.run, "iptables", p); err != nil {
		t.Fatal(err)
	}
	first := clone(f.chains)
	if err := Apply(f.run, "iptables", p); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, f.chains); diff != "" {
		t.Errorf("a second Apply changed the tables (-first +second):\n%s", diff)
	}
	if got := f.chains["PREROUTING"]; len(got) != 2 || got[1] != "-j "+InboundChain {
		t.Errorf("PREROUTING = %q", got)
	}
	if err := Remove(f.run, "iptables"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string][]string{"PREROUTING": {"-j KEEP"}, "OUTPUT": {}}, f.chains, cmp.Comparer(func(a, b []string) bool { return strings.Join(a, "|") == strings.Join(b, "|") })); diff != "" {
		t.Errorf("after Remove (-want +got):\n%s", diff)
	}
	if err := Remove(f.run, "iptables"); err != nil {
		t.Errorf("a second Remove: %v", err)
	}
}

func clone(m map[string][]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		out[k] = append([]string(nil), v...)
	}
	return out
}
