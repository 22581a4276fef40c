package inject

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestGolden(t *testing.T) {
	for _, name := range []string{"app", "list"} {
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			reports, err := Stream(bytes.NewReader(in), &out, name+".yaml", DefaultOptions())
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", name+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), out.String()); diff != "" {
				t.Errorf("output (-golden +got):\n%s", diff)
			}
			t.Logf("reports: %+v", reports)

			// Injecting the output again changes nothing.
			var again bytes.Buffer
			reports2, err := Stream(bytes.NewReader(out.Bytes()), &again, name+".golden.yaml", DefaultOptions())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(out.String(), again.String()); diff != "" {
				t.Errorf("injecting twice changed it (-once +twice):\n%s", diff)
			}
			for _, r := range reports2 {
				if r.Outcome == "injected" {
					t.Errorf("second pass injected %s %s again", r.Kind, r.Name)
				}
			}
		})
	}
}

func TestReports(t *testing.T) {
	in, _ := os.ReadFile("testdata/app.yaml")
	reports, err := Stream(bytes.NewReader(in), &bytes.Buffer{}, "app.yaml", DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	want := []Report{
		{Doc: 1, Kind: "Service", Outcome: "skipped (v1 Service)"},
		{Doc: 2, Kind: "Deployment", Name: "web", Outcome: "injected"},
		{Doc: 3, Kind: "Pod", Name: "debug", Outcome: "disabled by annotation"},
	}
	if diff := cmp.Diff(want, reports); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
}

func TestInjectedPodSpec(t *testing.T) {
	out, rep, err := Document([]byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, annotations: {config.linkerd.io/skip-outbound-ports: "5432"}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}, annotations: {config.linkerd.io/skip-inbound-ports: "22"}}
    spec: {containers: [{name: web, image: nginx}]}
`), Options{ProxyImage: "sift:1", InitImage: "sift:1", ControlPlane: "cp.sift:18000", ProxyUID: 2102, OpaquePorts: "3306"})
	if err != nil || rep.Outcome != "injected" {
		t.Fatalf("%v %+v", err, rep)
	}
	for _, want := range []string{
		"name: sift-init", "- --skip-inbound-ports\n        - \"22\"", "- --skip-outbound-ports\n        - \"5432\"", "- NET_ADMIN",
		"name: sift-proxy", "runAsUser: 2102", "config.linkerd.io/opaque-ports: \"3306\"", "sift.io/injected: \"true\"",
		"address: cp.sift, port_value: 18000", "fieldPath: metadata.name", "path: /ready",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("injected manifest lacks %q:\n%s", want, out)
		}
	}
}

func TestErrorsNameTheDocument(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"apiVersion: v1\nkind: ConfigMap\n---\napiVersion: apps/v1\nkind: Deployment\nspec: {replicas: many}\n",
			"in.yaml: document 2: Deployment: error unmarshaling JSON"},
		{"apiVersion: apps/v1\nkind: Deployment\nspec: {template: {spec: {containerz: []}}}\n", `in.yaml: document 1: Deployment: error unmarshaling JSON: while decoding JSON: json: unknown field "containerz"`},
		{"apiVersion: v1\nkind: Pod\nspec: {hostNetwork: true, containers: [{name: a}]}\n", "in.yaml: document 1: metadata: spec.hostNetwork: a pod on the host's network cannot get a sidecar"},
		{"apiVersion: apps/v1\nkind: Deployment\nspec: {template: {metadata: {annotations: {config.linkerd.io/skip-inbound-ports: \"22,x\"}}}}\n",
			"in.yaml: document 1: spec.template: metadata.annotations[config.linkerd.io/skip-inbound-ports]:"},
		{"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, spec: {hostNetwork: true}}\n", "in.yaml: document 1: items[0].metadata: spec.hostNetwork"},
		{"a: [\n", "in.yaml: document 1: not a Kubernetes object"},
	} {
		_, err := Stream(strings.NewReader(tt.in), &bytes.Buffer{}, "in.yaml", DefaultOptions())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Stream(%q) error = %v, want %q", tt.in, err, tt.want)
		}
	}
	if _, err := Stream(strings.NewReader(""), &bytes.Buffer{}, "x", Options{ProxyImage: "a", InitImage: "a", ControlPlane: "nohost", ProxyUID: 1}); err == nil {
		t.Error("a control plane without a port was accepted")
	}
}
