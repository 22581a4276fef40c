package file

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/siftmesh/sift/mesh"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const valid = `detect_timeout: 3s
namespaces:
- name: shop
  opaque_ports: "4000-4100"
  services:
  - name: web
    cluster_ips: [10.96.0.10]
    selector: {app: web}
    ports:
    - {name: http, port: 80, target_port: 8080, protocol: HTTP/1}
  workloads:
  - name: web-0
    addresses: [10.0.0.10]
    labels: {app: web}
    service_account: web
    opaque_ports: [7100, "7200-7300"]
`

func TestParseValid(t *testing.T) {
	t.Parallel()
	m, err := Parse("mesh.yaml", []byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if m.Detection() != 3*time.Second {
		t.Errorf("Detection() = %v", m.Detection())
	}
	w := m.WorkloadByNodeID("web-0.shop")
	if w == nil {
		t.Fatal("workload web-0.shop not found by its default node id")
	}
	if diff := cmp.Diff([]string{"shop/web"}, w.Services); diff != "" {
		t.Errorf("Services (-want +got):\n%s", diff)
	}
	if got := m.WorkloadOpaquePorts(w).String(); got != "7100,7200-7300" {
		t.Errorf("workload opaque ports = %q", got)
	}
	if got := m.ServiceOpaquePorts(m.Service("shop/web")).String(); got != "4000-4100" {
		t.Errorf("service opaque ports = %q (namespace list expected)", got)
	}
}

func TestParseExample(t *testing.T) {
	t.Parallel()
	m, err := Load("../../examples/mesh/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	mysql := m.Service("data/mysql")
	if got := m.ServicePortTreatment(mysql, mysql.Ports[0]); got != mesh.Opaque {
		t.Errorf("mysql:3306 is %v, want opaque by the default list", got)
	}
}

// TestParseErrors: every error names the file, the line and column, and the
// field's path.
func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{name: "empty file", yaml: "", want: []string{"m.yaml:1:1: the file is empty (write `namespaces: []` for an empty mesh)"}},
		{name: "bad yaml", yaml: "namespaces: [\n", want: []string{"m.yaml:1:1: invalid YAML: did not find expected node content"}},
		{name: "unknown top-level field", yaml: "namespace: []\n",
			want: []string{"m.yaml:1:1: namespace: unknown field (known: cluster_domain, default_opaque_ports, detect_grace_period, detect_timeout, mtls, namespaces, trust_domain)"}},
		{name: "port out of range", yaml: `namespaces:
- name: a
  services:
  - name: s
    ports:
    - port: 70000
`, want: []string{"m.yaml:6:13: namespaces[0].services[0].ports[0].port: port 70000 is out of range (1-65535)"}},
		{name: "target port neither number nor name", yaml: `namespaces:
- name: a
  services:
  - name: s
    ports:
    - {port: 80, target_port: Web_Port}
`, want: []string{`m.yaml:6:31: namespaces[0].services[0].ports[0].target_port: "Web_Port" is neither a port number nor a port name (at most 15 lower-case letters, digits and '-', with a letter)`}},
		{name: "bad opaque range and protocol", yaml: `namespaces:
- name: a
  opaque_ports: "4100-4000"
  workloads:
  - name: w
    ports: [{port: 80, protocol: smtp}]
`, want: []string{
			`m.yaml:3:17: namespaces[0].opaque_ports: "4100-4000": range ends before it starts`,
			`m.yaml:6:34: namespaces[0].workloads[0].ports[0].protocol: unknown protocol "smtp" (known: unknown, HTTP/1, HTTP/2, gRPC, opaque, TLS)`,
		}},
		{name: "bad address and duration", yaml: `detect_timeout: soon
namespaces:
- name: a
  workloads:
  - name: w
    addresses: [10.0.0.300]
`, want: []string{
			`m.yaml:1:17: detect_timeout: "soon" is not a positive duration like 10s or 500ms`,
			`m.yaml:6:17: namespaces[0].workloads[0].addresses[0]: "10.0.0.300" is not an IP address`,
		}},
		{name: "negative grace period", yaml: "detect_grace_period: -1s\nnamespaces: []\n", want: []string{
			`m.yaml:1:22: detect_grace_period: "-1s" is not a duration like 50ms (0s turns the server-first race off)`,
		}},
		{name: "semantic errors point at the field", yaml: `namespaces:
- name: a
  services:
  - name: s
    cluster_ips: [10.96.0.1]
    ports: [{port: 80}]
  - name: t
    cluster_ips: [10.96.0.1]
    ports: [{port: 81}]
  - ports: [{port: 82}]
`, want: []string{
			"m.yaml:8:19: namespaces[0].services[1].cluster_ips[0]: 10.96.0.1 is already the cluster IP of a/s",
			"m.yaml:10:5: namespaces[0].services[2].name: must be set",
		}},
		{name: "bad mtls value", yaml: `mtls: sometimes
namespaces: []
`, want: []string{
			`m.yaml:1:7: mtls: must be true or false, got "sometimes"`,
		}},
		{name: "bad trust domain and service account", yaml: `trust_domain: Example.COM
namespaces:
- name: a
  workloads:
  - {name: w, service_account: "Not OK"}
`, want: []string{
			`m.yaml:1:15: trust_domain: "Example.COM" is not a SPIFFE trust domain (lower-case letters, digits, '.', '-' and '_')`,
			`m.yaml:5:32: namespaces[0].workloads[0].service_account: "Not OK" is not a valid name (lower-case letters, digits and '-', as in Kubernetes)`,
		}},
		{name: "wrong kind", yaml: "namespaces: {a: b}\n",
			want: []string{"m.yaml:1:13: namespaces: must be a list, got a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("m.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			var got []string
			for _, e := range unjoin(err) {
				var fe *Error
				if !errors.As(e, &fe) {
					t.Errorf("%v is not a *file.Error", e)
				}
				got = append(got, e.Error())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

// waitUpdate waits for a Watch notification, failing after limit.
func waitUpdate(t *testing.T, ch <-chan struct{}, limit time.Duration) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(limit):
		t.Fatalf("no mesh update within %v", limit)
	}
}

func TestSourceWatchesEdits(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte(valid), 0o600); err != nil {
		t.Fatal(err)
	}
	reloads := make(chan error, 10)
	src, err := Open(path, Options{Interval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		OnReload: func(err error) { reloads <- err }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx) }()
	defer func() { cancel(); <-done }()
	updates := src.Watch(ctx)
	first := src.Snapshot()

	// A valid edit is pushed within a second.
	edited := strings.Replace(valid, "detect_timeout: 3s", "detect_timeout: 4s", 1)
	if err := writeAtomic(path, []byte(edited)); err != nil {
		t.Fatal(err)
	}
	waitUpdate(t, updates, time.Second)
	if got := src.Snapshot().Detection(); got != 4*time.Second {
		t.Fatalf("after the edit Detection() = %v, want 4s", got)
	}
	if err := <-reloads; err != nil {
		t.Fatalf("reload error %v", err)
	}
	second := src.Snapshot()

	// A broken edit is reported and changes nothing.
	if err := writeAtomic(path, []byte(edited+"  - name: BROKEN\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-reloads:
		if err == nil || !strings.Contains(err.Error(), "mesh.yaml:17:11: namespaces[0].workloads[1].name") {
			t.Fatalf("reload error = %v, want one naming mesh.yaml:17:11 and the field", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the broken edit was not reported")
	}
	select {
	case <-updates:
		t.Fatal("a broken edit notified watchers")
	default:
	}
	if src.Snapshot() != second || second == first {
		t.Fatal("the broken edit replaced the mesh")
	}

	// Fixing it is picked up again.
	if err := writeAtomic(path, []byte(valid)); err != nil {
		t.Fatal(err)
	}
	waitUpdate(t, updates, time.Second)
	if got := src.Snapshot().Detection(); got != 3*time.Second {
		t.Fatalf("after the fix Detection() = %v, want 3s", got)
	}
}

func TestOpenRejectsInvalid(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := writeAtomic(path, []byte("namespaces: [{name: x, bogus: 1}]\n")); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, Options{})
	if err == nil || !strings.HasPrefix(err.Error(), path+":1:24: namespaces[0].bogus: unknown field") {
		t.Fatalf("err = %v", err)
	}
}

// writeAtomic replaces path's content at once, as editors that save by
// rename do: the poller never reads a half-written file.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
