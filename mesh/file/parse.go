// Package file is the mesh Source that reads a YAML mesh file and watches it
// for edits. The schema is documented in README.md beside this file; every
// validation error names the file, the line and the field:
//
//	mesh.yaml:14:15: namespaces[0].services[1].ports[0].port: port 70000 is out of range (1-65535)
package file

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/siftmesh/sift/mesh"
)

// Error is one problem in a mesh file.
type Error struct {
	File         string
	Line, Column int
	// Field is the path of the field from the document root, e.g.
	// "namespaces[0].workloads[2].addresses[0]".
	Field string
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s: %s", e.File, e.Line, e.Column, e.Field, e.Msg)
}

// Parse reads a mesh file's contents (name is used in errors), validates it
// and returns the complete mesh. The error joins every problem found, each an
// *Error.
func Parse(name string, data []byte) (*mesh.Mesh, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(name, err)
	}
	if len(doc.Content) == 0 {
		// An empty file is far more often a truncated write than an
		// intended empty mesh; an empty mesh is "namespaces: []".
		return nil, &Error{File: name, Line: 1, Column: 1, Msg: "the file is empty (write `namespaces: []` for an empty mesh)"}
	}
	p := &parser{file: name, nodes: map[string]*yaml.Node{}}
	m := p.document(doc.Content[0])
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	if err := m.Complete(); err != nil {
		return nil, p.locate(err, doc.Content[0])
	}
	return m, nil
}

// yamlError turns yaml.v3's "yaml: line 3: ..." into an *Error.
func yamlError(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, tail, ok := strings.Cut(rest, ": "); ok {
			if l, convErr := strconv.Atoi(n); convErr == nil {
				line, msg = l, tail
			}
		}
	}
	return &Error{File: name, Line: line, Column: 1, Msg: "invalid YAML: " + msg}
}

// locate gives each mesh.FieldError of err the position of its field, or of
// the nearest enclosing field that is in the file.
func (p *parser) locate(err error, root *yaml.Node) error {
	var errs []error
	for _, e := range unjoin(err) {
		var fe *mesh.FieldError
		if !errors.As(e, &fe) {
			errs = append(errs, &Error{File: p.file, Line: root.Line, Column: root.Column, Msg: e.Error()})
			continue
		}
		n := root
		for path := fe.Path; path != ""; path = parent(path) {
			if found, ok := p.nodes[path]; ok {
				n = found
				break
			}
		}
		errs = append(errs, &Error{File: p.file, Line: n.Line, Column: n.Column, Field: fe.Path, Msg: fe.Msg})
	}
	return errors.Join(errs...)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// parent strips the last ".field" or "[i]" of a path.
func parent(path string) string {
	if i := strings.LastIndexAny(path, ".["); i >= 0 {
		return path[:i]
	}
	return ""
}

type parser struct {
	file  string
	nodes map[string]*yaml.Node // field path -> its value node
	errs  []error
}

func (p *parser) errorf(n *yaml.Node, path, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: n.Line, Column: n.Column, Field: path, Msg: fmt.Sprintf(format, args...)})
}

// fields walks mapping n, calling the handler of each key; unknown and
// duplicate keys are errors.
func (p *parser) fields(n *yaml.Node, path string, handlers map[string]func(v *yaml.Node, path string)) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, path, "must be a mapping, got %s", kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		fieldPath := k.Value
		if path != "" {
			fieldPath = path + "." + k.Value
		}
		h, ok := handlers[k.Value]
		if !ok {
			known := make([]string, 0, len(handlers))
			for name := range handlers {
				known = append(known, name)
			}
			slices.Sort(known)
			p.errorf(k, fieldPath, "unknown field (known: %s)", strings.Join(known, ", "))
			continue
		}
		if seen[k.Value] {
			p.errorf(k, fieldPath, "field is set twice")
			continue
		}
		seen[k.Value] = true
		p.nodes[fieldPath] = v
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			continue // "field:" with no value is the same as leaving it out
		}
		h(v, fieldPath)
	}
}

// seq calls each for every item of sequence n.
func (p *parser) seq(n *yaml.Node, path string, each func(item *yaml.Node, path string)) {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, path, "must be a list, got %s", kindName(n))
		return
	}
	for i, item := range n.Content {
		itemPath := fmt.Sprintf("%s[%d]", path, i)
		p.nodes[itemPath] = item
		each(item, itemPath)
	}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	return fmt.Sprintf("%q", n.Value)
}

func (p *parser) str(n *yaml.Node, path string) string {
	if n.Kind != yaml.ScalarNode {
		p.errorf(n, path, "must be a string, got %s", kindName(n))
		return ""
	}
	return n.Value
}

func (p *parser) boolean(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		p.errorf(n, path, "must be true or false, got %s", kindName(n))
		return false
	}
	b, err := strconv.ParseBool(strings.ToLower(n.Value))
	if err != nil {
		p.errorf(n, path, "must be true or false, got %q", n.Value)
	}
	return b
}

func (p *parser) port(n *yaml.Node, path string) uint16 {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		p.errorf(n, path, "must be a port number, got %s", kindName(n))
		return 0
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || v < 1 || v > 65535 {
		p.errorf(n, path, "port %s is out of range (1-65535)", n.Value)
		return 0
	}
	return uint16(v)
}

// portSet reads Linkerd's annotation syntax ("25,587,4000-4100"), a single
// port, or a list of ports and ranges ([25, "4000-4100"]).
func (p *parser) portSet(n *yaml.Node, path string) *mesh.PortSet {
	var (
		set mesh.PortSet
		err error
	)
	switch n.Kind {
	case yaml.ScalarNode:
		set, err = mesh.ParsePortSet(n.Value)
	case yaml.SequenceNode:
		items := make([]string, 0, len(n.Content))
		for i, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				p.errorf(item, fmt.Sprintf("%s[%d]", path, i), "must be a port or a range like 4000-4100, got %s", kindName(item))
				return nil
			}
			items = append(items, item.Value)
		}
		set, err = mesh.PortSetOf(items...)
	default:
		p.errorf(n, path, "must be a port list like \"25,587,4000-4100\", got %s", kindName(n))
		return nil
	}
	if err != nil {
		p.errorf(n, path, "%v", err)
		return nil
	}
	return &set
}

func (p *parser) ips(n *yaml.Node, path string) []netip.Addr {
	var out []netip.Addr
	p.seq(n, path, func(item *yaml.Node, path string) {
		s := p.str(item, path)
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			p.errorf(item, path, "%q is not an IP address", s)
			out = append(out, netip.Addr{}) // keeps indexes aligned; reported once
			return
		}
		out = append(out, a.Unmap())
	})
	return out
}

func (p *parser) labels(n *yaml.Node, path string) map[string]string {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, path, "must be a mapping of label names to values, got %s", kindName(n))
		return nil
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		out[k.Value] = p.str(v, path+"."+k.Value)
	}
	return out
}

func (p *parser) protocol(n *yaml.Node, path string) mesh.Protocol {
	s := p.str(n, path)
	proto, ok := mesh.ParseProtocol(s)
	if !ok {
		p.errorf(n, path, "unknown protocol %q (known: %s)", s, mesh.ProtocolNames())
	}
	return proto
}

func (p *parser) document(n *yaml.Node) *mesh.Mesh {
	m := &mesh.Mesh{}
	p.fields(n, "", map[string]func(*yaml.Node, string){
		"default_opaque_ports": func(v *yaml.Node, path string) { m.DefaultOpaquePorts = p.portSet(v, path) },
		"detect_timeout": func(v *yaml.Node, path string) {
			s := p.str(v, path)
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				p.errorf(v, path, "%q is not a positive duration like 10s or 500ms", s)
				return
			}
			m.DetectTimeout = d
		},
		"detect_grace_period": func(v *yaml.Node, path string) {
			s := p.str(v, path)
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 {
				p.errorf(v, path, "%q is not a duration like 50ms (0s turns the server-first race off)", s)
				return
			}
			m.DetectGracePeriod = &d
		},
		"cluster_domain": func(v *yaml.Node, path string) { m.ClusterDomain = p.str(v, path) },
		"trust_domain":   func(v *yaml.Node, path string) { m.TrustDomain = p.str(v, path) },
		"mtls":           func(v *yaml.Node, path string) { m.MTLS = p.boolean(v, path) },
		"namespaces": func(v *yaml.Node, path string) {
			p.seq(v, path, func(item *yaml.Node, path string) {
				m.Namespaces = append(m.Namespaces, p.namespace(item, path))
			})
		},
	})
	return m
}

func (p *parser) namespace(n *yaml.Node, path string) *mesh.Namespace {
	ns := &mesh.Namespace{}
	p.fields(n, path, map[string]func(*yaml.Node, string){
		"name":                func(v *yaml.Node, path string) { ns.Name = p.str(v, path) },
		"opaque_ports":        func(v *yaml.Node, path string) { ns.OpaquePorts = p.portSet(v, path) },
		"skip_inbound_ports":  func(v *yaml.Node, path string) { ns.SkipInboundPorts = p.portSet(v, path) },
		"skip_outbound_ports": func(v *yaml.Node, path string) { ns.SkipOutboundPorts = p.portSet(v, path) },
		"services": func(v *yaml.Node, path string) {
			p.seq(v, path, func(item *yaml.Node, path string) { ns.Services = append(ns.Services, p.service(item, path)) })
		},
		"workloads": func(v *yaml.Node, path string) {
			p.seq(v, path, func(item *yaml.Node, path string) { ns.Workloads = append(ns.Workloads, p.workload(item, path)) })
		},
	})
	return ns
}

func (p *parser) service(n *yaml.Node, path string) *mesh.Service {
	s := &mesh.Service{}
	p.fields(n, path, map[string]func(*yaml.Node, string){
		"name":         func(v *yaml.Node, path string) { s.Name = p.str(v, path) },
		"cluster_ips":  func(v *yaml.Node, path string) { s.ClusterIPs = p.ips(v, path) },
		"hostname":     func(v *yaml.Node, path string) { s.Hostname = p.str(v, path) },
		"selector":     func(v *yaml.Node, path string) { s.Selector = p.labels(v, path) },
		"opaque_ports": func(v *yaml.Node, path string) { s.OpaquePorts = p.portSet(v, path) },
		"ports": func(v *yaml.Node, path string) {
			p.seq(v, path, func(item *yaml.Node, path string) {
				var sp mesh.ServicePort
				p.fields(item, path, map[string]func(*yaml.Node, string){
					"name": func(v *yaml.Node, path string) { sp.Name = p.str(v, path) },
					"port": func(v *yaml.Node, path string) { sp.Port = p.port(v, path) },
					"target_port": func(v *yaml.Node, path string) {
						// A number, or the name of the workloads' port (Kubernetes' named targetPort).
						if v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
							sp.TargetPortName = v.Value
						} else {
							sp.TargetPort = p.port(v, path)
						}
					},
					"protocol": func(v *yaml.Node, path string) { sp.Protocol = p.protocol(v, path) },
				})
				s.Ports = append(s.Ports, sp)
			})
		},
	})
	return s
}

func (p *parser) workload(n *yaml.Node, path string) *mesh.Workload {
	w := &mesh.Workload{}
	p.fields(n, path, map[string]func(*yaml.Node, string){
		"name":                func(v *yaml.Node, path string) { w.Name = p.str(v, path) },
		"addresses":           func(v *yaml.Node, path string) { w.Addresses = p.ips(v, path) },
		"service_account":     func(v *yaml.Node, path string) { w.ServiceAccount = p.str(v, path) },
		"labels":              func(v *yaml.Node, path string) { w.Labels = p.labels(v, path) },
		"node_id":             func(v *yaml.Node, path string) { w.NodeID = p.str(v, path) },
		"meshed":              func(v *yaml.Node, path string) { w.Unmeshed = !p.boolean(v, path) },
		"opaque_ports":        func(v *yaml.Node, path string) { w.OpaquePorts = p.portSet(v, path) },
		"skip_inbound_ports":  func(v *yaml.Node, path string) { w.SkipInboundPorts = p.portSet(v, path) },
		"skip_outbound_ports": func(v *yaml.Node, path string) { w.SkipOutboundPorts = p.portSet(v, path) },
		"ports": func(v *yaml.Node, path string) {
			p.seq(v, path, func(item *yaml.Node, path string) {
				var wp mesh.WorkloadPort
				p.fields(item, path, map[string]func(*yaml.Node, string){
					"name":      func(v *yaml.Node, path string) { wp.Name = p.str(v, path) },
					"port":      func(v *yaml.Node, path string) { wp.Port = p.port(v, path) },
					"protocol":  func(v *yaml.Node, path string) { wp.Protocol = p.protocol(v, path) },
					"plaintext": func(v *yaml.Node, path string) { wp.Plaintext = p.boolean(v, path) },
					"authorized_clients": func(v *yaml.Node, path string) {
						p.seq(v, path, func(item *yaml.Node, path string) {
							var c mesh.ClientMatch
							p.fields(item, path, map[string]func(*yaml.Node, string){
								"identity":        func(v *yaml.Node, path string) { c.Identity = p.str(v, path) },
								"namespace":       func(v *yaml.Node, path string) { c.Namespace = p.str(v, path) },
								"service_account": func(v *yaml.Node, path string) { c.ServiceAccount = p.str(v, path) },
							})
							wp.AuthorizedClients = append(wp.AuthorizedClients, c)
						})
					},
				})
				w.Ports = append(w.Ports, wp)
			})
		},
	})
	return w
}
