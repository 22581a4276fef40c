// Package inject adds Sift's sidecar to Kubernetes workloads, as `linkerd
// inject` does: the sift-proxy container and an init container that runs
// `sift iptables`, into the pod template of Deployments, StatefulSets,
// DaemonSets, ReplicaSets, Jobs and CronJobs, and into Pods — in
// multi-document YAML and in Lists. Other kinds pass through untouched.
//
// It honours the annotations Linkerd users already write —
// linkerd.io/inject: disabled (or sift.io/inject: disabled),
// config.linkerd.io/opaque-ports, config.linkerd.io/skip-inbound-ports and
// config.linkerd.io/skip-outbound-ports, on the workload or its pod
// template — and sets them from Options. Injecting twice changes nothing.
// The manifests are decoded into the Kubernetes API types and encoded again;
// nothing is edited as text.
package inject

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/siftmesh/sift/mesh"
	"github.com/siftmesh/sift/proxyinit"
)

// Annotations read and written.
const (
	AnnotationInject       = "linkerd.io/inject"
	AnnotationSiftInject   = "sift.io/inject"
	AnnotationOpaquePorts  = "config.linkerd.io/opaque-ports"
	AnnotationSkipInbound  = "config.linkerd.io/skip-inbound-ports"
	AnnotationSkipOutbound = "config.linkerd.io/skip-outbound-ports"
	// AnnotationInjected marks a pod template Sift injected.
	AnnotationInjected = "sift.io/injected"
)

// Container names.
const (
	ProxyContainer = "sift-proxy"
	InitContainer  = "sift-init"
)

// Options configure the sidecar.
type Options struct {
	// ProxyImage runs sift-proxy; InitImage runs `sift iptables` (both
	// binaries are in Sift's image).
	ProxyImage, InitImage string
	// ControlPlane is sift-control's xDS address (host:port).
	ControlPlane string
	// ProxyUID is the UID the proxy runs as (its traffic is not redirected).
	ProxyUID int64
	// OpaquePorts, SkipInboundPorts and SkipOutboundPorts, when not empty,
	// are set as the Linkerd annotations on every pod template (replacing
	// what the manifest says).
	OpaquePorts, SkipInboundPorts, SkipOutboundPorts string
}

// DefaultOptions are the defaults of `sift inject`.
func DefaultOptions() Options {
	return Options{ProxyImage: "ghcr.io/siftmesh/sift:latest", InitImage: "ghcr.io/siftmesh/sift:latest",
		ControlPlane: "sift-control.sift-system.svc.cluster.local:18000", ProxyUID: proxyinit.DefaultProxyUID}
}

// Report says what was done to one document.
type Report struct {
	Doc        int    // 1-based index in its source
	Kind, Name string // "" for a document without them
	// Outcome: "injected", "already injected", "disabled by annotation",
	// "skipped (kind)", or "" for an empty document.
	Outcome string
}

// Error is a problem with one document: the source, the document's 1-based
// index, the field path where known, and what was wrong.
type Error struct {
	Source string
	Doc    int
	Field  string
	Err    error
}

func (e *Error) Error() string {
	where := fmt.Sprintf("%s: document %d", e.Source, e.Doc)
	if e.Field != "" {
		where += ": " + e.Field
	}
	return where + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Stream injects every document of r (YAML or JSON, "---"-separated) and
// writes the results to w as YAML documents. source names r in errors. It
// stops at the first error; what was written before it stands.
func Stream(r io.Reader, w io.Writer, source string, opts Options) ([]Report, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	reader := utilyaml.NewYAMLReader(bufioReader(r))
	var reports []Report
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return reports, nil
		}
		if err != nil {
			return reports, &Error{Source: source, Doc: doc, Err: err}
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			doc--
			continue
		}
		out, rep, err := Document(raw, opts)
		rep.Doc = doc
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				e.Source, e.Doc = source, doc
				return reports, e
			}
			return reports, &Error{Source: source, Doc: doc, Err: err}
		}
		if len(reports) > 0 {
			io.WriteString(w, "---\n")
		}
		reports = append(reports, rep)
		if _, err := w.Write(out); err != nil {
			return reports, err
		}
	}
}

// Document injects one document and returns it as YAML. Kinds it does not
// know, and disabled or already injected workloads, come back as they were.
func Document(raw []byte, opts Options) ([]byte, Report, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(raw, &tm); err != nil {
		return nil, Report{}, &Error{Err: fmt.Errorf("not a Kubernetes object: %w", err)}
	}
	var obj any
	var meta *metav1.ObjectMeta
	var tmpl *corev1.PodTemplateSpec
	var pod *corev1.Pod
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/Deployment":
		o := &appsv1.Deployment{}
		obj, meta, tmpl = o, &o.ObjectMeta, &o.Spec.Template
	case "apps/v1/StatefulSet":
		o := &appsv1.StatefulSet{}
		obj, meta, tmpl = o, &o.ObjectMeta, &o.Spec.Template
	case "apps/v1/DaemonSet":
		o := &appsv1.DaemonSet{}
		obj, meta, tmpl = o, &o.ObjectMeta, &o.Spec.Template
	case "apps/v1/ReplicaSet":
		o := &appsv1.ReplicaSet{}
		obj, meta, tmpl = o, &o.ObjectMeta, &o.Spec.Template
	case "batch/v1/Job":
		o := &batchv1.Job{}
		obj, meta, tmpl = o, &o.ObjectMeta, &o.Spec.Template
	case "batch/v1/CronJob":
		o := &batchv1.CronJob{}
		obj, meta, tmpl = o, &o.ObjectMeta, &o.Spec.JobTemplate.Spec.Template
	case "v1/Pod":
		o := &corev1.Pod{}
		obj, meta, pod = o, &o.ObjectMeta, o
	case "v1/List":
		return list(raw, opts)
	default:
		return raw, Report{Kind: tm.Kind, Outcome: "skipped (" + kindName(tm) + ")"}, nil
	}
	if err := yaml.UnmarshalStrict(raw, obj); err != nil {
		return nil, Report{Kind: tm.Kind}, &Error{Err: fmt.Errorf("%s: %w", tm.Kind, err)}
	}
	rep := Report{Kind: tm.Kind, Name: meta.Name}
	var podMeta *metav1.ObjectMeta
	var spec *corev1.PodSpec
	field := "spec.template"
	if pod != nil {
		podMeta, spec, field = &pod.ObjectMeta, &pod.Spec, "metadata"
	} else {
		podMeta, spec = &tmpl.ObjectMeta, &tmpl.Spec
		if tm.Kind == "CronJob" {
			field = "spec.jobTemplate.spec.template"
		}
	}
	outcome, err := injectPod(meta, podMeta, spec, opts)
	if err != nil {
		return nil, rep, &Error{Field: field, Err: err}
	}
	rep.Outcome = outcome
	if outcome != "injected" {
		return raw, rep, nil
	}
	out, err := yaml.Marshal(obj)
	if err != nil {
		return nil, rep, &Error{Err: err}
	}
	return out, rep, nil
}

// list injects the items of a v1 List.
func list(raw []byte, opts Options) ([]byte, Report, error) {
	var l corev1.List
	if err := yaml.UnmarshalStrict(raw, &l); err != nil {
		return nil, Report{Kind: "List"}, &Error{Err: fmt.Errorf("List: %w", err)}
	}
	rep := Report{Kind: "List", Outcome: "skipped (nothing to inject)"}
	changed := false
	for i, item := range l.Items {
		out, r, err := Document(item.Raw, opts)
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				e.Field = strings.TrimSuffix(fmt.Sprintf("items[%d].%s", i, e.Field), ".")
				return nil, rep, e
			}
			return nil, rep, err
		}
		if r.Outcome == "injected" {
			js, err := yaml.YAMLToJSON(out)
			if err != nil {
				return nil, rep, &Error{Field: fmt.Sprintf("items[%d]", i), Err: err}
			}
			l.Items[i] = runtime.RawExtension{Raw: js}
			changed = true
			rep.Outcome = "injected"
		}
	}
	if !changed {
		return raw, rep, nil
	}
	out, err := yaml.Marshal(&l)
	return out, rep, err
}

// injectPod adds the sidecar to a pod spec; meta is the workload's (it may
// be podMeta itself, for a Pod).
func injectPod(meta, podMeta *metav1.ObjectMeta, spec *corev1.PodSpec, opts Options) (string, error) {
	for _, m := range []*metav1.ObjectMeta{meta, podMeta} {
		for _, key := range []string{AnnotationInject, AnnotationSiftInject} {
			if v := m.Annotations[key]; strings.EqualFold(v, "disabled") {
				return "disabled by annotation", nil
			}
		}
	}
	for _, c := range spec.Containers {
		if c.Name == ProxyContainer {
			return "already injected", nil
		}
	}
	if spec.HostNetwork {
		return "", errors.New("spec.hostNetwork: a pod on the host's network cannot get a sidecar (its iptables rules would be the node's)")
	}
	if podMeta.Annotations == nil {
		podMeta.Annotations = map[string]string{}
	}
	for key, v := range map[string]string{AnnotationOpaquePorts: opts.OpaquePorts, AnnotationSkipInbound: opts.SkipInboundPorts,
		AnnotationSkipOutbound: opts.SkipOutboundPorts} {
		if v != "" {
			podMeta.Annotations[key] = v
		}
	}
	// The workload's own annotations apply to its pods when the template
	// sets none (Linkerd's precedence: the more specific wins).
	for _, key := range []string{AnnotationOpaquePorts, AnnotationSkipInbound, AnnotationSkipOutbound} {
		if _, ok := podMeta.Annotations[key]; !ok && meta != podMeta && meta.Annotations[key] != "" {
			podMeta.Annotations[key] = meta.Annotations[key]
		}
	}
	for _, key := range []string{AnnotationOpaquePorts, AnnotationSkipInbound, AnnotationSkipOutbound} {
		if v, ok := podMeta.Annotations[key]; ok {
			if _, err := mesh.ParsePortSet(v); err != nil {
				return "", fmt.Errorf("metadata.annotations[%s]: %w", key, err)
			}
		}
	}
	podMeta.Annotations[AnnotationInjected] = "true"

	initArgs := []string{"iptables", "--proxy-uid", strconv.FormatInt(opts.ProxyUID, 10),
		"--inbound-port", strconv.Itoa(proxyinit.DefaultInboundPort), "--outbound-port", strconv.Itoa(proxyinit.DefaultOutboundPort)}
	if v := podMeta.Annotations[AnnotationSkipInbound]; v != "" {
		initArgs = append(initArgs, "--skip-inbound-ports", v)
	}
	if v := podMeta.Annotations[AnnotationSkipOutbound]; v != "" {
		initArgs = append(initArgs, "--skip-outbound-ports", v)
	}
	root, no, yes := int64(0), false, true
	spec.InitContainers = append([]corev1.Container{{
		Name: InitContainer, Image: opts.InitImage, Command: []string{"sift"}, Args: initArgs,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: &root, RunAsNonRoot: &no, AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes,
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}},
		},
	}}, spec.InitContainers...)

	uid := opts.ProxyUID
	spec.Containers = append(spec.Containers, corev1.Container{
		Name: ProxyContainer, Image: opts.ProxyImage, Command: []string{"sift-proxy"},
		Args: []string{"--config-yaml", bootstrapYAML(opts.ControlPlane), "--service-node", "$(SIFT_POD_NAME).$(SIFT_POD_NAMESPACE)",
			"--service-cluster", "$(SIFT_POD_NAMESPACE)", "--log-format", "json"},
		Env: []corev1.EnvVar{
			{Name: "SIFT_POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "SIFT_POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		},
		Ports: []corev1.ContainerPort{
			{Name: "sift-inbound", ContainerPort: proxyinit.DefaultInboundPort},
			{Name: "sift-admin", ContainerPort: 9901},
		},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstrFromInt(9901)}}},
		SecurityContext: &corev1.SecurityContext{RunAsUser: &uid, RunAsNonRoot: &yes, AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem: &yes, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
	})
	return "injected", nil
}

// bootstrapYAML is the proxy's bootstrap: ADS from sift-control, the admin
// server on 9901 (the readiness probe reads /ready).
func bootstrapYAML(controlPlane string) string {
	host, port, _ := strings.Cut(controlPlane, ":")
	return "admin: {address: {socket_address: {address: 0.0.0.0, port_value: 9901}}}\n" +
		"dynamic_resources:\n" +
		"  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: sift-control}}]}\n" +
		"  lds_config: {ads: {}, resource_api_version: V3}\n" +
		"  cds_config: {ads: {}, resource_api_version: V3}\n" +
		"static_resources:\n" +
		"  clusters:\n" +
		"  - {name: sift-control, type: STRICT_DNS, connect_timeout: 1s, typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: " +
		"{\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}, " +
		"load_assignment: {cluster_name: sift-control, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: " + host + ", port_value: " + port + "}}}}]}]}}\n"
}

func (o Options) validate() error {
	switch {
	case o.ProxyImage == "" || o.InitImage == "":
		return errors.New("inject: the proxy and init images must be set")
	case o.ProxyUID <= 0:
		return errors.New("inject: the proxy UID must be positive (not root: its traffic is told apart by UID)")
	}
	host, port, ok := strings.Cut(o.ControlPlane, ":")
	if n, err := strconv.Atoi(port); !ok || host == "" || err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("inject: control plane %q is not host:port", o.ControlPlane)
	}
	for name, v := range map[string]string{"opaque ports": o.OpaquePorts, "skip inbound ports": o.SkipInboundPorts, "skip outbound ports": o.SkipOutboundPorts} {
		if _, err := mesh.ParsePortSet(v); err != nil {
			return fmt.Errorf("inject: %s: %w", name, err)
		}
	}
	return nil
}

func kindName(tm metav1.TypeMeta) string {
	if tm.Kind == "" {
		return "no kind"
	}
	return tm.APIVersion + " " + tm.Kind
}

// stripComments drops YAML comment lines, to tell empty documents.
func stripComments(b []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l...)
			out = append(out, '\n')
		}
	}
	return out
}
