// Package rbac is Envoy's network RBAC filter
// (envoy.filters.network.rbac): it allows or denies each connection of its
// filter chain by who the client is — the identity its TLS certificate
// proved (authenticated.principal_name, a SPIFFE ID in a mesh) or its
// address — and by where it connected (destination_port, the SNI). Place it
// before the chain's terminal filter, on a chain with a TLS transport
// socket when principals name identities.
//
// Semantics (Envoy's RBAC): a policy matches when any of its permissions
// and any of its principals match; with action ALLOW the connection is
// allowed when some policy matches, with DENY it is denied when some policy
// matches, LOG allows everything. Without rules every connection is
// allowed. Envoy's default enforcement_type ONE_TIME_ON_FIRST_BYTE decides
// on the first byte; Sift decides when the connection is admitted (after the
// TLS handshake, before any byte reaches the upstream) from the same inputs,
// so a server-speaks-first upstream is never even reached by a denied client.
package rbac

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/internal/pbcheck"
)

func init() {
	filters.RegisterConnectionFilter(&netrbacv3.RBAC{}, func(cfg proto.Message, bc filters.BuildContext) (filters.ConnectionFilter, error) {
		f, err := New(cfg.(*netrbacv3.RBAC), bc.Logger)
		if err != nil {
			return nil, fmt.Errorf("rbac: %w", err)
		}
		return f, nil
	})
}

var policy = pbcheck.Policy{
	"envoy.extensions.filters.network.rbac.v3.RBAC": pbcheck.Fields("rules, stat_prefix, enforcement_type"),
	"envoy.config.rbac.v3.RBAC":                     pbcheck.Fields("action, policies"),
	"envoy.config.rbac.v3.Policy":                   pbcheck.Fields("permissions, principals"),
	"envoy.config.rbac.v3.Permission": pbcheck.Fields("and_rules, or_rules, any, not_rule, destination_port, " +
		"destination_port_range, destination_ip, requested_server_name"),
	"envoy.config.rbac.v3.Permission.Set": pbcheck.Fields("rules"),
	"envoy.config.rbac.v3.Principal": pbcheck.Fields("and_ids, or_ids, any, not_id, authenticated, " +
		"direct_remote_ip, remote_ip"),
	"envoy.config.rbac.v3.Principal.Set":           pbcheck.Fields("ids"),
	"envoy.config.rbac.v3.Principal.Authenticated": pbcheck.Fields("principal_name"),
	"envoy.type.matcher.v3.StringMatcher":          pbcheck.Fields("exact, prefix, suffix, safe_regex, contains, ignore_case"),
	"envoy.type.matcher.v3.RegexMatcher":           pbcheck.Fields("google_re2, regex"),
	"envoy.config.core.v3.CidrRange":               pbcheck.Fields("address_prefix, prefix_len"),
}

// Filter is a built network RBAC filter. Safe for concurrent use.
type Filter struct {
	action   rbacv3.RBAC_Action
	enforce  bool // rules set
	policies []namedPolicy
	log      *slog.Logger

	// Allowed and Denied count this filter's connections (Envoy's
	// rbac.allowed/denied); counts are the stat prefix's, process-wide.
	Allowed, Denied atomic.Uint64
	counts          *Counts
}

type namedPolicy struct {
	name        string
	permissions []matcher
	principals  []matcher
}

// matcher is a compiled Permission or Principal.
type matcher func(*filters.ConnInfo) bool

var _ filters.ConnectionFilter = (*Filter)(nil)

// New validates cfg and compiles its rules.
func New(cfg *netrbacv3.RBAC, log *slog.Logger) (*Filter, error) {
	if err := policy.Check(cfg); err != nil {
		return nil, err
	}
	if cfg.GetStatPrefix() == "" {
		return nil, errors.New("stat_prefix: must be set")
	}
	if cfg.GetEnforcementType() != netrbacv3.RBAC_ONE_TIME_ON_FIRST_BYTE {
		return nil, fmt.Errorf("enforcement_type: %s is not supported by Sift (ONE_TIME_ON_FIRST_BYTE)", cfg.GetEnforcementType())
	}
	if log == nil {
		log = slog.Default()
	}
	f := &Filter{log: log, counts: CountsFor(cfg.GetStatPrefix())}
	rules := cfg.GetRules()
	if rules == nil {
		return f, nil
	}
	f.enforce, f.action = true, rules.GetAction()
	names := make([]string, 0, len(rules.GetPolicies()))
	for n := range rules.GetPolicies() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := rules.GetPolicies()[n]
		field := fmt.Sprintf("rules.policies[%s]", n)
		np := namedPolicy{name: n}
		for i, perm := range p.GetPermissions() {
			m, err := permission(perm, fmt.Sprintf("%s.permissions[%d]", field, i))
			if err != nil {
				return nil, err
			}
			np.permissions = append(np.permissions, m)
		}
		for i, pr := range p.GetPrincipals() {
			m, err := principal(pr, fmt.Sprintf("%s.principals[%d]", field, i))
			if err != nil {
				return nil, err
			}
			np.principals = append(np.principals, m)
		}
		if len(np.permissions) == 0 || len(np.principals) == 0 {
			return nil, fmt.Errorf("%s: permissions and principals must each have at least one entry", field)
		}
		f.policies = append(f.policies, np)
	}
	return f, nil
}

// Allow decides for one connection and names the matched policy ("" none).
func (f *Filter) Allow(info *filters.ConnInfo) (bool, string) {
	if !f.enforce {
		return true, ""
	}
	matched := ""
	for _, p := range f.policies {
		if anyMatch(p.permissions, info) && anyMatch(p.principals, info) {
			matched = p.name
			break
		}
	}
	switch f.action {
	case rbacv3.RBAC_ALLOW:
		return matched != "", matched
	case rbacv3.RBAC_DENY:
		return matched == "", matched
	}
	return true, matched // LOG
}

// Admit implements filters.ConnectionFilter: a denied connection is closed
// (by the listener), counted and logged with the peer's identity.
func (f *Filter) Admit(_ context.Context, d *filters.Downstream) (func(), bool) {
	ok, policy := f.Allow(d.Info)
	if !ok {
		f.Denied.Add(1)
		f.counts.Denied.Add(1)
		f.log.Info("rbac: connection denied", "remote", d.Info.RemoteAddr, "peer_identity", d.Info.PeerIdentity,
			"tls", d.Info.TLS, "local", d.Info.LocalAddr, "policy", policy)
		return nil, false
	}
	f.Allowed.Add(1)
	f.counts.Allowed.Add(1)
	return func() {}, true
}

func anyMatch(ms []matcher, info *filters.ConnInfo) bool {
	for _, m := range ms {
		if m(info) {
			return true
		}
	}
	return false
}

func allMatch(ms []matcher, info *filters.ConnInfo) bool {
	for _, m := range ms {
		if !m(info) {
			return false
		}
	}
	return true
}

// combine builds each rule of an and/or set (field is the list's path) and
// matches all of them (and) or any.
func combine[R any](rules []R, field string, and bool, build func(R, string) (matcher, error)) (matcher, error) {
	ms := make([]matcher, len(rules))
	for i, r := range rules {
		m, err := build(r, fmt.Sprintf("%s[%d]", field, i))
		if err != nil {
			return nil, err
		}
		ms[i] = m
	}
	if and {
		return func(i *filters.ConnInfo) bool { return allMatch(ms, i) }, nil
	}
	return func(i *filters.ConnInfo) bool { return anyMatch(ms, i) }, nil
}

func permission(p *rbacv3.Permission, field string) (matcher, error) {
	set := func(rules []*rbacv3.Permission, name string, and bool) (matcher, error) {
		return combine(rules, field+"."+name+".rules", and, permission)
	}
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		if !r.Any {
			return nil, fmt.Errorf("%s.any: must be true", field)
		}
		return func(*filters.ConnInfo) bool { return true }, nil
	case *rbacv3.Permission_AndRules:
		return set(r.AndRules.GetRules(), "and_rules", true)
	case *rbacv3.Permission_OrRules:
		return set(r.OrRules.GetRules(), "or_rules", false)
	case *rbacv3.Permission_NotRule:
		m, err := permission(r.NotRule, field+".not_rule")
		if err != nil {
			return nil, err
		}
		return func(i *filters.ConnInfo) bool { return !m(i) }, nil
	case *rbacv3.Permission_DestinationPort:
		port := r.DestinationPort
		return func(i *filters.ConnInfo) bool { return uint32(i.LocalAddr.Port()) == port }, nil
	case *rbacv3.Permission_DestinationPortRange:
		lo, hi := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		if lo > hi {
			return nil, fmt.Errorf("%s.destination_port_range: start %d above end %d", field, lo, hi)
		}
		return func(i *filters.ConnInfo) bool { p := int32(i.LocalAddr.Port()); return p >= lo && p < hi }, nil
	case *rbacv3.Permission_DestinationIp:
		pfx, err := cidr(r.DestinationIp, field+".destination_ip")
		if err != nil {
			return nil, err
		}
		return func(i *filters.ConnInfo) bool { return pfx.Contains(i.LocalAddr.Addr()) }, nil
	case *rbacv3.Permission_RequestedServerName:
		m, err := mtls.NewStringMatcher(r.RequestedServerName, field+".requested_server_name")
		if err != nil {
			return nil, err
		}
		return func(i *filters.ConnInfo) bool { return m.Match(i.ServerName) }, nil
	}
	return nil, fmt.Errorf("%s: a rule must be set", field)
}

func principal(p *rbacv3.Principal, field string) (matcher, error) {
	set := func(ids []*rbacv3.Principal, name string, and bool) (matcher, error) {
		return combine(ids, field+"."+name+".ids", and, principal)
	}
	switch r := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		if !r.Any {
			return nil, fmt.Errorf("%s.any: must be true", field)
		}
		return func(*filters.ConnInfo) bool { return true }, nil
	case *rbacv3.Principal_AndIds:
		return set(r.AndIds.GetIds(), "and_ids", true)
	case *rbacv3.Principal_OrIds:
		return set(r.OrIds.GetIds(), "or_ids", false)
	case *rbacv3.Principal_NotId:
		m, err := principal(r.NotId, field+".not_id")
		if err != nil {
			return nil, err
		}
		return func(i *filters.ConnInfo) bool { return !m(i) }, nil
	case *rbacv3.Principal_Authenticated_:
		if r.Authenticated.GetPrincipalName() == nil {
			// Any client the TLS configuration let in.
			return func(i *filters.ConnInfo) bool { return i.TLS }, nil
		}
		m, err := mtls.NewStringMatcher(r.Authenticated.GetPrincipalName(), field+".authenticated.principal_name")
		if err != nil {
			return nil, err
		}
		return func(i *filters.ConnInfo) bool { return i.PeerIdentity != "" && m.Match(i.PeerIdentity) }, nil
	case *rbacv3.Principal_DirectRemoteIp:
		pfx, err := cidr(r.DirectRemoteIp, field+".direct_remote_ip")
		if err != nil {
			return nil, err
		}
		return func(i *filters.ConnInfo) bool { return pfx.Contains(i.RemoteAddr.Addr()) }, nil
	case *rbacv3.Principal_RemoteIp:
		// Without PROXY protocol the remote address is the direct one.
		pfx, err := cidr(r.RemoteIp, field+".remote_ip")
		if err != nil {
			return nil, err
		}
		return func(i *filters.ConnInfo) bool { return pfx.Contains(i.RemoteAddr.Addr()) }, nil
	}
	return nil, fmt.Errorf("%s: an identifier must be set", field)
}

func cidr(c *corev3.CidrRange, field string) (netip.Prefix, error) {
	ip, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s.address_prefix: %q is not an IP address", field, c.GetAddressPrefix())
	}
	bits := ip.BitLen()
	if l := c.GetPrefixLen(); l != nil {
		bits = int(l.GetValue())
	}
	pfx, err := ip.Unmap().Prefix(min(bits, ip.Unmap().BitLen()))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s.prefix_len: %w", field, err)
	}
	return pfx, nil
}
