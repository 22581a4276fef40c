// Package proxyinit writes the NAT rules that send a workload's TCP through
// its sidecar proxy, as Linkerd's proxy-init does: outbound connections to
// the proxy's outbound port (4140), inbound connections to its inbound port
// (4143). It leaves alone the proxy's own traffic (by UID and/or GID),
// loopback, the skip ports in either direction and the outbound subnets to
// skip. The rules live in their own chains of the nat table, so applying
// them again replaces them (idempotent) and Remove takes them all out.
//
// Plan is pure (table-tested); Apply and Remove run iptables (or
// ip6tables; the legacy or nft flavour) through a Runner.
package proxyinit

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/siftmesh/sift/mesh"
)

// The chains the rules live in (nat table).
const (
	InboundChain  = "SIFT_PROXY_INIT_REDIRECT"
	OutboundChain = "SIFT_PROXY_INIT_OUTPUT"
)

// Defaults, as Linkerd's.
const (
	DefaultInboundPort  = 4143
	DefaultOutboundPort = 4140
	DefaultProxyUID     = 2102
)

// Config is what to redirect.
type Config struct {
	InboundPort, OutboundPort uint16
	// ProxyUID and ProxyGID identify the proxy's own traffic, never
	// redirected; -1: not used (at least one must be set).
	ProxyUID, ProxyGID int
	// SkipInboundPorts and SkipOutboundPorts are destination ports left
	// alone.
	SkipInboundPorts, SkipOutboundPorts mesh.PortSet
	// SkipOutboundSubnets are destinations left alone; only those of the
	// family being planned apply.
	SkipOutboundSubnets []netip.Prefix
}

// Plan is the rules of each chain, as iptables arguments after
// "-t nat -A <chain>".
type Plan struct {
	Inbound, Outbound [][]string
}

// multiportMax is how many ports one multiport match takes (a range counts
// twice).
const multiportMax = 15

// NewPlan returns the rules for cfg in one address family (ipv6: for
// ip6tables). It fails for a config that would redirect the proxy's own
// traffic to itself.
func NewPlan(cfg Config, ipv6 bool) (Plan, error) {
	if cfg.ProxyUID < 0 && cfg.ProxyGID < 0 {
		return Plan{}, fmt.Errorf("proxyinit: give the proxy's UID or GID: its own connections must not be redirected to itself")
	}
	if cfg.InboundPort == 0 || cfg.OutboundPort == 0 {
		return Plan{}, fmt.Errorf("proxyinit: the inbound and outbound ports must be set")
	}
	var p Plan
	for _, ports := range multiport(cfg.SkipInboundPorts) {
		p.Inbound = append(p.Inbound, []string{"-p", "tcp", "-m", "multiport", "--dports", ports, "-m", "comment", "--comment", "sift: skip inbound ports", "-j", "RETURN"})
	}
	p.Inbound = append(p.Inbound, []string{"-p", "tcp", "-m", "comment", "--comment", "sift: inbound to the proxy", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(cfg.InboundPort))})

	if cfg.ProxyUID >= 0 {
		p.Outbound = append(p.Outbound, []string{"-m", "owner", "--uid-owner", strconv.Itoa(cfg.ProxyUID), "-m", "comment", "--comment", "sift: the proxy's own traffic", "-j", "RETURN"})
	}
	if cfg.ProxyGID >= 0 {
		p.Outbound = append(p.Outbound, []string{"-m", "owner", "--gid-owner", strconv.Itoa(cfg.ProxyGID), "-m", "comment", "--comment", "sift: the proxy's own traffic", "-j", "RETURN"})
	}
	p.Outbound = append(p.Outbound, []string{"-o", "lo", "-m", "comment", "--comment", "sift: loopback", "-j", "RETURN"})
	for _, ports := range multiport(cfg.SkipOutboundPorts) {
		p.Outbound = append(p.Outbound, []string{"-p", "tcp", "-m", "multiport", "--dports", ports, "-m", "comment", "--comment", "sift: skip outbound ports", "-j", "RETURN"})
	}
	for _, s := range cfg.SkipOutboundSubnets {
		if s.Addr().Is6() != ipv6 {
			continue
		}
		p.Outbound = append(p.Outbound, []string{"-d", s.Masked().String(), "-m", "comment", "--comment", "sift: skip outbound subnet", "-j", "RETURN"})
	}
	p.Outbound = append(p.Outbound, []string{"-p", "tcp", "-m", "comment", "--comment", "sift: outbound to the proxy", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(cfg.OutboundPort))})
	return p, nil
}

// multiport splits a port set into multiport lists of at most 15 ports.
func multiport(s mesh.PortSet) []string {
	var out []string
	var cur []string
	n := 0
	for _, r := range s.Ranges() {
		item, cost := strconv.Itoa(int(r.First)), 1
		if r.Last != r.First {
			item, cost = fmt.Sprintf("%d:%d", r.First, r.Last), 2
		}
		if n+cost > multiportMax {
			out = append(out, strings.Join(cur, ","))
			cur, n = nil, 0
		}
		cur = append(cur, item)
		n += cost
	}
	if len(cur) > 0 {
		out = append(out, strings.Join(cur, ","))
	}
	return out
}

// Runner runs one iptables command (argv[0] is the binary) and returns its
// error; Apply and Remove use it to probe (-C, -L) too.
type Runner func(argv []string) error

// Apply installs plan with binary (iptables, ip6tables, iptables-legacy,
// iptables-nft, …): each chain is created, or flushed when it exists, and
// filled; the jumps from PREROUTING and OUTPUT are added when missing.
// Running it again replaces the rules: the result is the same.
func Apply(run Runner, binary string, plan Plan) error {
	for _, c := range []struct {
		name  string
		rules [][]string
		from  string
	}{{InboundChain, plan.Inbound, "PREROUTING"}, {OutboundChain, plan.Outbound, "OUTPUT"}} {
		if run([]string{binary, "-t", "nat", "-n", "-L", c.name}) == nil {
			if err := run([]string{binary, "-t", "nat", "-F", c.name}); err != nil {
				return fmt.Errorf("proxyinit: flushing %s: %w", c.name, err)
			}
		} else if err := run([]string{binary, "-t", "nat", "-N", c.name}); err != nil {
			return fmt.Errorf("proxyinit: creating %s: %w", c.name, err)
		}
		for _, r := range c.rules {
			if err := run(append([]string{binary, "-t", "nat", "-A", c.name}, r...)); err != nil {
				return fmt.Errorf("proxyinit: %s: %w", c.name, err)
			}
		}
		if run([]string{binary, "-t", "nat", "-C", c.from, "-j", c.name}) != nil {
			if err := run([]string{binary, "-t", "nat", "-A", c.from, "-j", c.name}); err != nil {
				return fmt.Errorf("proxyinit: jump from %s: %w", c.from, err)
			}
		}
	}
	return nil
}

// Remove takes out what Apply installed; what is not there is skipped.
func Remove(run Runner, binary string) error {
	for _, c := range []struct{ name, from string }{{InboundChain, "PREROUTING"}, {OutboundChain, "OUTPUT"}} {
		for run([]string{binary, "-t", "nat", "-C", c.from, "-j", c.name}) == nil {
			if err := run([]string{binary, "-t", "nat", "-D", c.from, "-j", c.name}); err != nil {
				return fmt.Errorf("proxyinit: removing the jump from %s: %w", c.from, err)
			}
		}
		if run([]string{binary, "-t", "nat", "-n", "-L", c.name}) == nil {
			if err := run([]string{binary, "-t", "nat", "-F", c.name}); err != nil {
				return fmt.Errorf("proxyinit: flushing %s: %w", c.name, err)
			}
			if err := run([]string{binary, "-t", "nat", "-X", c.name}); err != nil {
				return fmt.Errorf("proxyinit: deleting %s: %w", c.name, err)
			}
		}
	}
	return nil
}

// Script renders what Apply runs on a machine without the chains, one
// shell command per line, for a dry run.
func Script(binary string, plan Plan) string {
	var b strings.Builder
	for _, c := range []struct {
		name  string
		rules [][]string
		from  string
	}{{InboundChain, plan.Inbound, "PREROUTING"}, {OutboundChain, plan.Outbound, "OUTPUT"}} {
		fmt.Fprintf(&b, "%s -t nat -N %s\n", binary, c.name)
		for _, r := range c.rules {
			fmt.Fprintf(&b, "%s -t nat -A %s %s\n", binary, c.name, shellJoin(r))
		}
		fmt.Fprintf(&b, "%s -t nat -A %s -j %s\n", binary, c.from, c.name)
	}
	return b.String()
}

func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " '\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
