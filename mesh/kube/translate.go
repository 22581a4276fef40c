package kube

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/siftmesh/sift/mesh"
)

// Linkerd's annotations, read at namespace, workload (pod) and service level.
const (
	AnnotationOpaquePorts       = "config.linkerd.io/opaque-ports"
	AnnotationSkipInboundPorts  = "config.linkerd.io/skip-inbound-ports"
	AnnotationSkipOutboundPorts = "config.linkerd.io/skip-outbound-ports"
)

// Keys of the mesh-wide defaults ConfigMap. A missing key keeps Sift's
// default; a key that does not parse is reported and keeps the default too.
const (
	KeyOpaquePorts       = "opaque-ports"        // Linkerd port list; "" is no default opaque port
	KeyDetectTimeout     = "detect-timeout"      // Go duration, > 0
	KeyDetectGracePeriod = "detect-grace-period" // Go duration, >= 0 (0: no server-first race)
	KeyTrustDomain       = "trust-domain"
	KeyClusterDomain     = "cluster-domain"
	KeyMTLS              = "mtls" // "true" or "false"
)

// objects is one consistent view of the cluster, as listed from the
// informers' caches.
type objects struct {
	config     *corev1.ConfigMap // nil: absent
	namespaces []*corev1.Namespace
	services   []*corev1.Service
	pods       []*corev1.Pod
	slices     []*discoveryv1.EndpointSlice
}

// translate builds the mesh of objs. Problems with single objects (an
// annotation or a ConfigMap value that does not parse, a pod whose address
// another pod has) are returned as warnings, each naming the object and the
// field; the object or the field is left out and the rest of the mesh stands.
// The mesh is not completed (mesh.Complete is the caller's).
func translate(objs objects) (*mesh.Mesh, []string) {
	t := &translator{}
	m := &mesh.Mesh{}
	t.defaults(m, objs.config)

	byNS := map[string]*mesh.Namespace{}
	nsOf := func(name string) *mesh.Namespace {
		ns := byNS[name]
		if ns == nil {
			ns = &mesh.Namespace{Name: name}
			byNS[name] = ns
		}
		return ns
	}
	for _, o := range objs.namespaces {
		ns := nsOf(o.Name)
		where := "namespace " + o.Name
		ns.OpaquePorts = t.portAnnotation(where, o.Annotations, AnnotationOpaquePorts)
		ns.SkipInboundPorts = t.portAnnotation(where, o.Annotations, AnnotationSkipInboundPorts)
		ns.SkipOutboundPorts = t.portAnnotation(where, o.Annotations, AnnotationSkipOutboundPorts)
	}

	endpoints := readyEndpoints(objs.slices)
	workloads := map[string]*mesh.Workload{}
	addrs := map[netip.Addr]string{}
	for _, p := range sortedByKey(objs.pods) {
		w := t.workload(p, addrs)
		if w == nil {
			continue
		}
		workloads[w.Key()] = w
		nsOf(p.Namespace).Workloads = append(nsOf(p.Namespace).Workloads, w)
	}
	for _, o := range sortedByKey(objs.services) {
		s := t.service(o)
		if s == nil {
			continue
		}
		if eps, ok := endpoints[s.Key()]; ok {
			s.Endpoints = eps
		} else {
			// No EndpointSlice (yet): the selected pods that are Ready.
			s.Endpoints = []string{}
			for _, p := range objs.pods {
				if w := workloads[p.Namespace+"/"+p.Name]; w != nil && podReady(p) && s.Selects(w) {
					s.Endpoints = append(s.Endpoints, w.Key())
				}
			}
			slices.Sort(s.Endpoints)
		}
		nsOf(o.Namespace).Services = append(nsOf(o.Namespace).Services, s)
	}
	for _, ns := range byNS {
		m.Namespaces = append(m.Namespaces, ns)
	}
	slices.SortFunc(m.Namespaces, func(a, b *mesh.Namespace) int { return strings.Compare(a.Name, b.Name) })
	return m, t.warnings
}

type translator struct {
	warnings []string
}

func (t *translator) warn(format string, args ...any) {
	t.warnings = append(t.warnings, fmt.Sprintf(format, args...))
}

func (t *translator) defaults(m *mesh.Mesh, cm *corev1.ConfigMap) {
	if cm == nil {
		return
	}
	where := "configmap " + cm.Namespace + "/" + cm.Name
	if v, ok := cm.Data[KeyOpaquePorts]; ok {
		if ps, err := mesh.ParsePortSet(v); err != nil {
			t.warn("%s: %s: %v", where, KeyOpaquePorts, err)
		} else {
			m.DefaultOpaquePorts = &ps
		}
	}
	if v, ok := cm.Data[KeyDetectTimeout]; ok {
		if d, err := time.ParseDuration(strings.TrimSpace(v)); err != nil || d <= 0 {
			t.warn("%s: %s: %q is not a positive duration", where, KeyDetectTimeout, v)
		} else {
			m.DetectTimeout = d
		}
	}
	if v, ok := cm.Data[KeyDetectGracePeriod]; ok {
		if d, err := time.ParseDuration(strings.TrimSpace(v)); err != nil || d < 0 {
			t.warn("%s: %s: %q is not a duration >= 0", where, KeyDetectGracePeriod, v)
		} else {
			m.DetectGracePeriod = &d
		}
	}
	if v, ok := cm.Data[KeyTrustDomain]; ok {
		m.TrustDomain = strings.TrimSpace(v) // validated by mesh.Complete
	}
	if v, ok := cm.Data[KeyClusterDomain]; ok {
		m.ClusterDomain = strings.TrimSpace(v)
	}
	if v, ok := cm.Data[KeyMTLS]; ok {
		if b, err := strconv.ParseBool(strings.TrimSpace(v)); err != nil {
			t.warn("%s: %s: %q is not true or false", where, KeyMTLS, v)
		} else {
			m.MTLS = b
		}
	}
}

// portAnnotation parses a Linkerd port-list annotation; nil when absent or
// invalid (reported).
func (t *translator) portAnnotation(where string, annotations map[string]string, key string) *mesh.PortSet {
	v, ok := annotations[key]
	if !ok {
		return nil
	}
	ps, err := mesh.ParsePortSet(v)
	if err != nil {
		t.warn("%s: annotation %s: %v", where, key, err)
		return nil
	}
	return &ps
}

// workload translates a pod; nil for pods that have no address yet, have
// finished, share their node's network, or whose address an earlier pod
// (by key) already has.
func (t *translator) workload(p *corev1.Pod, seen map[netip.Addr]string) *mesh.Workload {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil {
		return nil
	}
	key := p.Namespace + "/" + p.Name
	where := "pod " + key
	w := &mesh.Workload{
		Name: p.Name, Namespace: p.Namespace, Labels: p.Labels,
		ServiceAccount: p.Spec.ServiceAccountName,
		Unmeshed:       !meshed(p),
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if ip.IP == "" {
			continue
		}
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			t.warn("%s: status.podIPs: %q is not an IP address", where, ip.IP)
			continue
		}
		if other, dup := seen[a]; dup {
			t.warn("%s: status.podIPs: %s is also the address of pod %s; pod left out", where, a, other)
			return nil
		}
		w.Addresses = append(w.Addresses, a)
	}
	if len(w.Addresses) == 0 {
		return nil
	}
	for _, a := range w.Addresses {
		seen[a] = key
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
				continue
			}
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			w.Ports = append(w.Ports, mesh.WorkloadPort{Name: cp.Name, Port: uint16(cp.ContainerPort)})
		}
	}
	slices.SortFunc(w.Ports, func(a, b mesh.WorkloadPort) int { return int(a.Port) - int(b.Port) })
	w.Ports = slices.CompactFunc(w.Ports, func(a, b mesh.WorkloadPort) bool { return a.Port == b.Port })
	w.OpaquePorts = t.portAnnotation(where, p.Annotations, AnnotationOpaquePorts)
	w.SkipInboundPorts = t.portAnnotation(where, p.Annotations, AnnotationSkipInboundPorts)
	w.SkipOutboundPorts = t.portAnnotation(where, p.Annotations, AnnotationSkipOutboundPorts)
	return w
}

// Markers of a pod that runs Sift's proxy, as `sift inject` writes them
// (package inject: ProxyContainer, AnnotationInjected).
const (
	proxyContainer     = "sift-proxy"
	annotationInjected = "sift.io/injected"
)

// meshed reports whether p runs Sift's proxy: a container (or a native
// sidecar init container) named sift-proxy, or the sift.io/injected
// annotation.
func meshed(p *corev1.Pod) bool {
	if p.Annotations[annotationInjected] == "true" {
		return true
	}
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, c := range cs {
			if c.Name == proxyContainer {
				return true
			}
		}
	}
	return false
}

// service translates a Service; nil for ExternalName services.
func (t *translator) service(o *corev1.Service) *mesh.Service {
	if o.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	where := "service " + o.Namespace + "/" + o.Name
	s := &mesh.Service{Name: o.Name, Namespace: o.Namespace, Selector: o.Spec.Selector}
	ips := o.Spec.ClusterIPs
	if len(ips) == 0 && o.Spec.ClusterIP != "" {
		ips = []string{o.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip == corev1.ClusterIPNone || ip == "" {
			continue
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			t.warn("%s: spec.clusterIPs: %q is not an IP address", where, ip)
			continue
		}
		s.ClusterIPs = append(s.ClusterIPs, a)
	}
	for i, p := range o.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		sp := mesh.ServicePort{Name: p.Name, Port: uint16(p.Port), Protocol: appProtocol(p.AppProtocol)}
		switch {
		case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "":
			// A named target port: resolved per pod from its container
			// ports' names (mesh.ServicePort.TargetFor), as kube-proxy does.
			if !mesh.ValidPortName(p.TargetPort.StrVal) {
				t.warn("%s: spec.ports[%d].targetPort: %q is not a port name; port left out", where, i, p.TargetPort.StrVal)
				continue
			}
			sp.TargetPortName = p.TargetPort.StrVal
		case p.TargetPort.IntValue() > 0 && p.TargetPort.IntValue() <= 65535:
			sp.TargetPort = uint16(p.TargetPort.IntValue())
		}
		s.Ports = append(s.Ports, sp)
	}
	s.OpaquePorts = t.portAnnotation(where, o.Annotations, AnnotationOpaquePorts)
	return s
}

// appProtocol maps a Service port's appProtocol (IANA names, Kubernetes'
// kubernetes.io/ names, Linkerd's) to a declared protocol; anything else is
// detected.
func appProtocol(p *string) mesh.Protocol {
	if p == nil {
		return mesh.ProtocolUnknown
	}
	switch strings.ToLower(*p) {
	case "http", "http/1", "http/1.1", "kubernetes.io/http":
		return mesh.ProtocolHTTP1
	case "http2", "h2c", "kubernetes.io/h2c":
		return mesh.ProtocolHTTP2
	case "grpc":
		return mesh.ProtocolGRPC
	case "https", "tls", "kubernetes.io/wss":
		return mesh.ProtocolTLS
	case "opaque", "linkerd.io/opaque":
		return mesh.ProtocolOpaque
	}
	return mesh.ProtocolUnknown
}

// readyEndpoints maps "namespace/service" to the keys of the pods its
// EndpointSlices list as ready (a nil ready condition counts as ready, as
// the API defines), for every service that has a slice.
func readyEndpoints(all []*discoveryv1.EndpointSlice) map[string][]string {
	out := map[string][]string{}
	for _, es := range all {
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		key := es.Namespace + "/" + svc
		eps := out[key]
		if eps == nil {
			eps = []string{}
		}
		for _, e := range es.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if e.TargetRef == nil || e.TargetRef.Kind != "Pod" || e.TargetRef.Name == "" {
				continue
			}
			ns := e.TargetRef.Namespace
			if ns == "" {
				ns = es.Namespace
			}
			eps = append(eps, ns+"/"+e.TargetRef.Name)
		}
		out[key] = eps
	}
	for k, eps := range out {
		slices.Sort(eps)
		out[k] = slices.Compact(eps)
	}
	return out
}

// podReady reports whether p's Ready condition is true.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

type keyed interface {
	GetNamespace() string
	GetName() string
}

func sortedByKey[T keyed](in []T) []T {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b T) int {
		if c := strings.Compare(a.GetNamespace(), b.GetNamespace()); c != 0 {
			return c
		}
		return strings.Compare(a.GetName(), b.GetName())
	})
	return out
}
