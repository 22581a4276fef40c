package main

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/siftmesh/sift/mesh"
	"github.com/siftmesh/sift/proxyinit"
)

const iptablesExamples = `
Examples:
  # In a pod's init container (as root, in the pod's network namespace):
  sift iptables --proxy-uid 2102 --skip-inbound-ports 22 --skip-outbound-ports 5432,6379

  # Print the commands instead of running them:
  sift iptables --dry-run --skip-outbound-subnets 169.254.169.254/32

  # Take the rules out again:
  sift iptables --remove
`

var iptablesAbout = "Usage: sift iptables [flags]\n\nWrites the NAT rules that send a workload's TCP through its sidecar proxy, in their own\nchains (" + proxyinit.InboundChain + ", " + proxyinit.OutboundChain + "): running it again replaces them."

func runIptables(args []string, stdout, stderr io.Writer) int {
	fs := flags("iptables", iptablesAbout, iptablesExamples, stderr)
	inbound := fs.Uint("inbound-port", proxyinit.DefaultInboundPort, "the proxy's inbound port: inbound TCP is redirected to it")
	outbound := fs.Uint("outbound-port", proxyinit.DefaultOutboundPort, "the proxy's outbound port: outbound TCP is redirected to it")
	uid := fs.Int("proxy-uid", proxyinit.DefaultProxyUID, "the UID the proxy runs as: its own connections are left alone (-1: none)")
	gid := fs.Int("proxy-gid", -1, "the GID the proxy runs as: its own connections are left alone (-1: none)")
	skipIn := fs.String("skip-inbound-ports", "", `inbound ports left alone: "22,8000-8100"`)
	skipOut := fs.String("skip-outbound-ports", "", `outbound destination ports left alone: "5432,6379"`)
	subnets := fs.String("skip-outbound-subnets", "", `outbound destinations left alone: "10.0.0.0/8,fd00::/8"`)
	ipv6 := fs.Bool("ipv6", false, "also write the rules for IPv6 (ip6tables)")
	mode := fs.String("iptables-mode", "auto", "auto (the iptables on PATH), legacy (iptables-legacy) or nft (iptables-nft)")
	remove := fs.Bool("remove", false, "remove the rules instead")
	dryRun := fs.Bool("dry-run", false, "print the commands instead of running them")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	fail := failer("iptables", stderr)
	cfg := proxyinit.Config{InboundPort: uint16(*inbound), OutboundPort: uint16(*outbound), ProxyUID: *uid, ProxyGID: *gid}
	if *inbound == 0 || *inbound > 65535 || *outbound == 0 || *outbound > 65535 {
		return fail("--inbound-port and --outbound-port must be ports (1-65535)")
	}
	var err error
	if cfg.SkipInboundPorts, err = mesh.ParsePortSet(*skipIn); err != nil {
		return fail("--skip-inbound-ports: %v", err)
	}
	if cfg.SkipOutboundPorts, err = mesh.ParsePortSet(*skipOut); err != nil {
		return fail("--skip-outbound-ports: %v", err)
	}
	for _, s := range strings.Split(*subnets, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fail("--skip-outbound-subnets: %q is not a subnet (10.0.0.0/8)", s)
		}
		cfg.SkipOutboundSubnets = append(cfg.SkipOutboundSubnets, p)
	}
	binaries := map[string][2]string{"auto": {"iptables", "ip6tables"}, "legacy": {"iptables-legacy", "ip6tables-legacy"},
		"nft": {"iptables-nft", "ip6tables-nft"}}
	pair, ok := binaries[*mode]
	if !ok {
		return fail("--iptables-mode: %q is not one of auto, legacy, nft", *mode)
	}
	families := []struct {
		binary string
		ipv6   bool
	}{{pair[0], false}}
	if *ipv6 {
		families = append(families, struct {
			binary string
			ipv6   bool
		}{pair[1], true})
	}
	for _, f := range families {
		plan, err := proxyinit.NewPlan(cfg, f.ipv6)
		if err != nil {
			return fail("%v", err)
		}
		switch {
		case *dryRun && *remove:
			fmt.Fprintf(stdout, "%s -t nat -D PREROUTING -j %s\n%s -t nat -D OUTPUT -j %s\n%s -t nat -F %s\n%s -t nat -X %s\n%s -t nat -F %s\n%s -t nat -X %s\n",
				f.binary, proxyinit.InboundChain, f.binary, proxyinit.OutboundChain, f.binary, proxyinit.InboundChain,
				f.binary, proxyinit.InboundChain, f.binary, proxyinit.OutboundChain, f.binary, proxyinit.OutboundChain)
		case *dryRun:
			fmt.Fprint(stdout, proxyinit.Script(f.binary, plan))
		case *remove:
			if err := proxyinit.Remove(execRunner, f.binary); err != nil {
				return fail("%v", err)
			}
		default:
			if err := proxyinit.Apply(execRunner, f.binary, plan); err != nil {
				return fail("%v", err)
			}
		}
	}
	return 0
}

// execRunner runs an iptables command; its error carries the command's
// stderr.
func execRunner(argv []string) error {
	var stderr bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
