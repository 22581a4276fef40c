package upstream

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// dnsLookupTimeout bounds one name's lookup in a refresh round.
const dnsLookupTimeout = 5 * time.Second

// dnsResolver runs a STRICT_DNS cluster's resolution (Envoy's
// arch_overview/upstream/service_discovery, "Strict DNS"): every name in
// load_assignment is resolved every dns_refresh_rate, and every address
// returned becomes an endpoint with its lb_endpoint's weight and health
// status. A name whose lookup fails keeps its last good addresses; a name that
// does not exist, or has no address of the wanted family (NXDOMAIN, NODATA),
// resolves to no address, as in Envoy. After a round with a failure the next
// round comes after dns_failure_refresh_rate (base_interval, doubling up to
// max_interval, reset by a good round) instead; Envoy keeps one timer per
// name, Sift one per cluster. dns_jitter adds a random delay to each wait.
//
// dns_lookup_family: V4_ONLY and V6_ONLY query A or AAAA; ALL queries both
// and takes every address; AUTO (the default) takes the AAAA answer and falls
// back to A when it has no address or fails, V4_PREFERRED the other way round.
//
// respect_dns_ttl is accepted but Go's resolver does not expose TTLs: Sift
// always refreshes every dns_refresh_rate.
type dnsResolver struct {
	c       *Cluster
	r       *net.Resolver
	cfg     dnsConfig
	targets []endpointSpec
	log     *slog.Logger

	// Owned by run's goroutine.
	last    [][]netip.Addr // per target, the last good addresses
	failing []bool         // per target, whether its last lookup failed (to log changes only)

	// refresh asks for a round now; the channel sent is closed when it is done.
	refresh chan chan struct{}
}

func newDNSResolver(c *Cluster, r *net.Resolver, log *slog.Logger) *dnsResolver {
	return &dnsResolver{
		c:       c,
		r:       r,
		cfg:     c.cfg.dns,
		targets: c.cfg.endpoints,
		log:     log,
		last:    make([][]netip.Addr, len(c.cfg.endpoints)),
		failing: make([]bool, len(c.cfg.endpoints)),
		refresh: make(chan chan struct{}),
	}
}

func (d *dnsResolver) run(ctx context.Context) {
	defer d.c.wg.Done()
	var done []chan struct{}
	defer func() {
		for _, ch := range done {
			close(ch)
		}
	}()
	failures := 0
	for {
		ok := d.round(ctx)
		for _, ch := range done {
			close(ch)
		}
		done = done[:0]
		if ctx.Err() != nil {
			return
		}
		wait := d.cfg.refresh
		if ok {
			failures = 0
		} else {
			wait = backoff(d.cfg.failureBase, d.cfg.failureMax, failures)
			failures++
		}
		if d.cfg.jitter > 0 {
			wait += rand.N(d.cfg.jitter)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case ch := <-d.refresh:
			t.Stop()
			done = append(done, ch)
		}
	}
}

// backoff returns base doubled n times, at most max.
func backoff(base, max time.Duration, n int) time.Duration {
	d := base
	for range n {
		if d >= max/2 {
			return max
		}
		d *= 2
	}
	return min(d, max)
}

// round resolves every name once, concurrently, and installs the endpoint
// set. It reports whether every lookup succeeded.
func (d *dnsResolver) round(ctx context.Context) bool {
	addrs := make([][]netip.Addr, len(d.targets))
	errs := make([]error, len(d.targets))
	var wg sync.WaitGroup
	for i, t := range d.targets {
		wg.Go(func() {
			lctx, cancel := context.WithTimeout(ctx, dnsLookupTimeout)
			defer cancel()
			addrs[i], errs[i] = lookup(lctx, d.r, t.host, d.cfg.family)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return false // closed: leave the endpoint set alone
	}
	ok := true
	for i, t := range d.targets {
		if errs[i] != nil {
			ok = false
			if !d.failing[i] {
				d.log.Warn("upstream: DNS resolution failed, keeping the last addresses",
					"cluster", d.c.cfg.name, "name", t.host, "endpoint", t.path, "kept", len(d.last[i]), "error", errs[i])
			}
			d.failing[i] = true
			continue
		}
		if d.failing[i] {
			d.log.Info("upstream: DNS resolution recovered", "cluster", d.c.cfg.name, "name", t.host, "addresses", len(addrs[i]))
		}
		d.failing[i] = false
		d.last[i] = addrs[i]
	}
	var eps []resolvedEndpoint
	for i, t := range d.targets {
		hostname := t.hostname
		if hostname == "" {
			hostname = t.host
		}
		for _, a := range d.last[i] {
			eps = append(eps, t.resolved(a.String(), hostname))
		}
	}
	d.c.setEndpoints(eps)
	return ok
}

// lookup resolves host for one dns_lookup_family. Addresses come back
// sorted and without duplicates; a name that does not exist or has no
// address of the family is no error and no address.
func lookup(ctx context.Context, r *net.Resolver, host string, family clusterv3.Cluster_DnsLookupFamily) ([]netip.Addr, error) {
	switch family {
	case clusterv3.Cluster_V4_ONLY:
		return lookupNet(ctx, r, "ip4", host)
	case clusterv3.Cluster_V6_ONLY:
		return lookupNet(ctx, r, "ip6", host)
	case clusterv3.Cluster_ALL:
		return lookupNet(ctx, r, "ip", host)
	case clusterv3.Cluster_V4_PREFERRED:
		return lookupFallback(ctx, r, host, "ip4", "ip6")
	default: // AUTO
		return lookupFallback(ctx, r, host, "ip6", "ip4")
	}
}

func lookupFallback(ctx context.Context, r *net.Resolver, host, first, second string) ([]netip.Addr, error) {
	addrs, err := lookupNet(ctx, r, first, host)
	if err == nil && len(addrs) > 0 {
		return addrs, nil
	}
	addrs2, err2 := lookupNet(ctx, r, second, host)
	if err2 != nil && err != nil {
		return nil, err
	}
	return addrs2, err2
}

func lookupNet(ctx context.Context, r *net.Resolver, network, host string) ([]netip.Addr, error) {
	addrs, err := r.LookupNetIP(ctx, network, host)
	if err != nil {
		if dnsErr, ok := errors.AsType[*net.DNSError](err); ok && dnsErr.IsNotFound {
			return nil, nil
		}
		return nil, err
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs), nil
}

// refreshNow runs a resolution round now and waits for it: a test hook.
func (d *dnsResolver) refreshNow(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case d.refresh <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
