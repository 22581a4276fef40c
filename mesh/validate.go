package mesh

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// FieldError is a validation error about one field, named by its path from
// the mesh root in the mesh file's own terms:
// "namespaces[1].services[0].ports[2].port". Sources that know where a field
// came from (a file line, a Kubernetes object) add that.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// dnsLabel is RFC 1123's label, as Kubernetes requires of names.
// ValidPortName reports whether name is an IANA service name, as
// Kubernetes' port names are (IANA_SVC_NAME): 1-15 lower-case letters,
// digits and '-', at least one letter, no leading, trailing or double '-'.
func ValidPortName(name string) bool {
	if len(name) == 0 || len(name) > 15 || name[0] == '-' || name[len(name)-1] == '-' || strings.Contains(name, "--") {
		return false
	}
	letter := false
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return false
		}
	}
	return letter
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// dnsSubdomain is RFC 1123's subdomain (workload names may contain dots).
var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// trustDomain is SPIFFE's trust-domain name: lower-case letters, digits,
// dots, dashes and underscores.
var trustDomain = regexp.MustCompile(`^[a-z0-9._-]+$`)

// Complete validates m, fills in defaults (namespaces of services and
// workloads, service host names, node ids, service accounts, the trust
// domain), links services to the workloads they select (Workload.Services)
// and derives identities (Workload.Identity, Service.Identities). It
// returns every problem found, joined, each a *FieldError. After it returns
// nil, m must not be modified.
func (m *Mesh) Complete() error {
	v := &validator{ips: map[netip.Addr]string{}, addrs: map[netip.Addr]string{}, nodes: map[string]string{}}
	if m.DetectTimeout < 0 {
		v.add("detect_timeout", "must not be negative, got %v", m.DetectTimeout)
	}
	if m.ClusterDomain == "" {
		m.ClusterDomain = DefaultClusterDomain
	} else if !dnsSubdomain.MatchString(m.ClusterDomain) {
		v.add("cluster_domain", "%q is not a DNS name", m.ClusterDomain)
	}
	if m.TrustDomain == "" {
		m.TrustDomain = DefaultTrustDomain
	} else if !trustDomain.MatchString(m.TrustDomain) || len(m.TrustDomain) > 255 {
		v.add("trust_domain", "%q is not a SPIFFE trust domain (lower-case letters, digits, '.', '-' and '_')", m.TrustDomain)
	}
	seenNS := map[string]int{}
	for i, ns := range m.Namespaces {
		path := fmt.Sprintf("namespaces[%d]", i)
		v.name(path+".name", ns.Name, dnsLabel)
		if j, dup := seenNS[ns.Name]; dup && ns.Name != "" {
			v.add(path+".name", "namespace %q is defined twice (also namespaces[%d])", ns.Name, j)
		}
		seenNS[ns.Name] = i
		v.services(m, ns, path)
		v.workloads(ns, path)
	}
	if len(v.errs) > 0 {
		return errors.Join(v.errs...)
	}
	for _, ns := range m.Namespaces {
		for _, w := range ns.Workloads {
			w.Services = nil
			for _, s := range ns.Services {
				if s.Selects(w) {
					w.Services = append(w.Services, s.Key())
				}
			}
			slices.Sort(w.Services)
			w.Identity = SPIFFEID(m.TrustDomain, w.Namespace, w.ServiceAccount)
		}
	}
	for _, ns := range m.Namespaces {
		for _, s := range ns.Services {
			s.Identities = nil
			for _, w := range ns.Workloads {
				if s.Selects(w) {
					s.Identities = append(s.Identities, w.Identity)
				}
			}
			slices.Sort(s.Identities)
			s.Identities = slices.Compact(s.Identities)
		}
	}
	m.workloadByKey = map[string]*Workload{}
	m.workloadByNodeID = map[string]*Workload{}
	for _, ns := range m.Namespaces {
		for _, w := range ns.Workloads {
			m.workloadByKey[w.Key()] = w
			m.workloadByNodeID[w.NodeID] = w
		}
	}
	return nil
}

type validator struct {
	errs  []error
	ips   map[netip.Addr]string // service cluster IP -> path
	addrs map[netip.Addr]string // workload address -> path
	nodes map[string]string     // node id -> path
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) name(path, name string, re *regexp.Regexp) {
	switch {
	case name == "":
		v.add(path, "must be set")
	case len(name) > 253 || !re.MatchString(name):
		v.add(path, "%q is not a valid name (lower-case letters, digits and '-', as in Kubernetes)", name)
	}
}

func (v *validator) services(m *Mesh, ns *Namespace, nsPath string) {
	seen := map[string]int{}
	for i, s := range ns.Services {
		path := fmt.Sprintf("%s.services[%d]", nsPath, i)
		s.Namespace = ns.Name
		v.name(path+".name", s.Name, dnsLabel)
		if j, dup := seen[s.Name]; dup && s.Name != "" {
			v.add(path+".name", "service %q is defined twice in namespace %q (also services[%d])", s.Name, ns.Name, j)
		}
		seen[s.Name] = i
		if s.Hostname == "" {
			s.Hostname = s.Name + "." + ns.Name + ".svc." + m.ClusterDomain
		} else if !dnsSubdomain.MatchString(s.Hostname) {
			v.add(path+".hostname", "%q is not a DNS name", s.Hostname)
		}
		for j, ip := range s.ClusterIPs {
			ipPath := fmt.Sprintf("%s.cluster_ips[%d]", path, j)
			if !ip.IsValid() {
				v.add(ipPath, "must be an IP address")
				continue
			}
			if prev, dup := v.ips[ip]; dup {
				v.add(ipPath, "%s is already the cluster IP of %s", ip, prev)
				continue
			}
			v.ips[ip] = s.Key()
		}
		if len(s.Ports) == 0 {
			v.add(path+".ports", "a service needs at least one port")
		}
		ports := map[uint16]int{}
		names := map[string]int{}
		for j, p := range s.Ports {
			pPath := fmt.Sprintf("%s.ports[%d]", path, j)
			v.port(pPath+".port", p.Port)
			if k, dup := ports[p.Port]; dup && p.Port != 0 {
				v.add(pPath+".port", "port %d is listed twice (also ports[%d])", p.Port, k)
			}
			ports[p.Port] = j
			if p.Name != "" {
				if k, dup := names[p.Name]; dup {
					v.add(pPath+".name", "port name %q is used twice (also ports[%d])", p.Name, k)
				}
				names[p.Name] = j
			}
			if p.TargetPortName != "" && !ValidPortName(p.TargetPortName) {
				v.add(pPath+".target_port", "%q is neither a port number nor a port name (at most 15 lower-case letters, digits and '-', with a letter)", p.TargetPortName)
			}
			if pr, ok := ParseProtocol(string(p.Protocol)); ok {
				s.Ports[j].Protocol = pr
			} else {
				v.add(pPath+".protocol", "unknown protocol %q (known: %s)", p.Protocol, ProtocolNames())
			}
		}
	}
}

func (v *validator) workloads(ns *Namespace, nsPath string) {
	seen := map[string]int{}
	for i, w := range ns.Workloads {
		path := fmt.Sprintf("%s.workloads[%d]", nsPath, i)
		w.Namespace = ns.Name
		v.name(path+".name", w.Name, dnsSubdomain)
		if j, dup := seen[w.Name]; dup && w.Name != "" {
			v.add(path+".name", "workload %q is defined twice in namespace %q (also workloads[%d])", w.Name, ns.Name, j)
		}
		seen[w.Name] = i
		for j, a := range w.Addresses {
			aPath := fmt.Sprintf("%s.addresses[%d]", path, j)
			if !a.IsValid() {
				v.add(aPath, "must be an IP address")
				continue
			}
			if prev, dup := v.addrs[a]; dup {
				v.add(aPath, "%s is already an address of %s", a, prev)
				continue
			}
			v.addrs[a] = w.Key()
		}
		if w.NodeID == "" {
			w.NodeID = w.Name + "." + ns.Name
		}
		if w.ServiceAccount == "" {
			w.ServiceAccount = DefaultServiceAccount
		} else {
			v.name(path+".service_account", w.ServiceAccount, dnsSubdomain)
		}
		if prev, dup := v.nodes[w.NodeID]; dup {
			v.add(path+".node_id", "node id %q is already the node id of %s", w.NodeID, prev)
		} else {
			v.nodes[w.NodeID] = w.Key()
		}
		ports := map[uint16]int{}
		for j, p := range w.Ports {
			pPath := fmt.Sprintf("%s.ports[%d]", path, j)
			v.port(pPath+".port", p.Port)
			if k, dup := ports[p.Port]; dup && p.Port != 0 {
				v.add(pPath+".port", "port %d is listed twice (also ports[%d])", p.Port, k)
			}
			ports[p.Port] = j
			if pr, ok := ParseProtocol(string(p.Protocol)); ok {
				w.Ports[j].Protocol = pr
			} else {
				v.add(pPath+".protocol", "unknown protocol %q (known: %s)", p.Protocol, ProtocolNames())
			}
			if p.Plaintext && len(p.AuthorizedClients) > 0 {
				v.add(pPath+".plaintext", "a port that accepts plaintext cannot also restrict its clients by identity (authorized_clients): plaintext clients have none")
			}
			for k, c := range p.AuthorizedClients {
				cPath := fmt.Sprintf("%s.authorized_clients[%d]", pPath, k)
				switch {
				case c.Identity != "" && (c.Namespace != "" || c.ServiceAccount != ""):
					v.add(cPath, "give identity, or namespace (and service_account), not both")
				case c.Identity != "":
					if !strings.HasPrefix(c.Identity, "spiffe://") || strings.ContainsAny(c.Identity, " \t\n") {
						v.add(cPath+".identity", "%q is not a SPIFFE ID (spiffe://<trust domain>/<path>)", c.Identity)
					}
				case c.Namespace == "":
					v.add(cPath, "must name an identity, or a namespace (and service_account)")
				default:
					v.name(cPath+".namespace", c.Namespace, dnsLabel)
					if c.ServiceAccount != "" {
						v.name(cPath+".service_account", c.ServiceAccount, dnsSubdomain)
					}
				}
			}
		}
	}
}

func (v *validator) port(path string, p uint16) {
	if p == 0 {
		v.add(path, "must be set (1-65535)")
	}
}
