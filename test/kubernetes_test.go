package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

// kubeAssets returns the directory holding kube-apiserver and etcd
// (test/k8stools/build.sh): $KUBEBUILDER_ASSETS, else the script's default.
// Without them the test is skipped, unless SIFT_K8S_REQUIRED is set (CI).
func kubeAssets(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "sift-k8s-bin")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			msg := fmt.Sprintf("no %s in %s: run test/k8stools/build.sh (and set KUBEBUILDER_ASSETS to what it prints)", bin, dir)
			if os.Getenv("SIFT_K8S_REQUIRED") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

// controlUser is the user name of sift-control's service account in
// examples/kubernetes/sift-control.yaml, as the API server authenticates it.
const controlUser = "system:serviceaccount:sift-system:sift-control"

// startKube starts a real kube-apiserver and etcd (no kubelet, no
// controllers: tests write Pod status and EndpointSlices themselves) and
// returns an admin client and a kubeconfig file for sift-control, which
// authenticates as controlUser with no group: it may do only what
// examples/kubernetes' RBAC grants it (applyManifest).
func startKube(t *testing.T) (*kubernetes.Clientset, string) {
	t.Helper()
	return startKubeEnv(t, newKubeEnv(t), nil)
}

// newKubeEnv is the envtest environment every test starts from: the
// binaries test/k8stools builds, and time for a loaded machine to start
// kube-apiserver (envtest's default is 20 s).
func newKubeEnv(t *testing.T) *envtest.Environment {
	return &envtest.Environment{BinaryAssetsDirectory: kubeAssets(t), ControlPlaneStartTimeout: 3 * time.Minute}
}

// startKubeEnv starts env and returns startKube's results; tune, when set,
// adjusts the admin client's configuration.
func startKubeEnv(t *testing.T, env *envtest.Environment, tune func(*rest.Config)) (*kubernetes.Clientset, string) {
	t.Helper()
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("envtest stop: %v", err)
		}
	})
	if tune != nil {
		tune(cfg)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	user, err := env.AddUser(envtest.User{Name: controlUser}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return client, path
}

// applyManifest creates the namespaces, service accounts and RBAC objects
// of a manifest file (the rest is the test's to create).
func applyManifest(t *testing.T, c *kubernetes.Clientset, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, doc := range strings.Split(string(data), "\n---\n") {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		decode := func(into any) {
			if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
				t.Fatalf("%s: document %d (%s): %v", path, i, head.Kind, err)
			}
		}
		switch head.Kind {
		case "Namespace":
			var o corev1.Namespace
			decode(&o)
			_, err = c.CoreV1().Namespaces().Create(ctx, &o, metav1.CreateOptions{})
		case "ServiceAccount":
			var o corev1.ServiceAccount
			decode(&o)
			_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "ClusterRole":
			var o rbacv1.ClusterRole
			decode(&o)
			_, err = c.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			decode(&o)
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
		case "Role":
			var o rbacv1.Role
			decode(&o)
			_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "RoleBinding":
			var o rbacv1.RoleBinding
			decode(&o)
			_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		default:
			continue
		}
		if err != nil {
			t.Fatalf("%s: document %d (%s): %v", path, i, head.Kind, err)
		}
	}
}

// kubeProxy is a real sift-proxy process fetching its configuration from
// sift-control as node id.
func kubeProxy(t *testing.T, xds, id string) *runningProxy {
	t.Helper()
	api := "{api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}"
	boot := writeBootstrap(t, fmt.Sprintf(`node: {id: %s, cluster: test}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
dynamic_resources:
  ads_config: %s
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
`, id, api)+staticCluster("xds", xds), nil)
	return startProcess(t, []string{siftProxyBinary(t), "-c", boot, "--log-format", "json", "-l", "debug"}, "admin")
}

// endpointsDump returns the proxy's EDS state from /config_dump: cluster
// name → "ip:port" endpoints, sorted as served.
func endpointsDump(t *testing.T, p *runningProxy) (map[string][]string, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + p.addrs["admin"] + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Configs []struct {
			Type    string `json:"@type"`
			Dynamic []struct {
				EndpointConfig struct {
					ClusterName string `json:"cluster_name"`
					Endpoints   []struct {
						LbEndpoints []struct {
							Endpoint struct {
								Address struct {
									SocketAddress struct {
										Address   string `json:"address"`
										PortValue int    `json:"port_value"`
									} `json:"socket_address"`
								} `json:"address"`
							} `json:"endpoint"`
						} `json:"lb_endpoints"`
					} `json:"endpoints"`
				} `json:"endpoint_config"`
			} `json:"dynamic_endpoint_configs"`
		} `json:"configs"`
	}
	if err := json.Unmarshal(raw, &dump); err != nil {
		t.Fatalf("config_dump: %v", err)
	}
	out := map[string][]string{}
	for _, c := range dump.Configs {
		for _, d := range c.Dynamic {
			eps := []string{}
			for _, l := range d.EndpointConfig.Endpoints {
				for _, e := range l.LbEndpoints {
					sa := e.Endpoint.Address.SocketAddress
					eps = append(eps, fmt.Sprintf("%s:%d", sa.Address, sa.PortValue))
				}
			}
			out[d.EndpointConfig.ClusterName] = eps
		}
	}
	return out, string(raw)
}

// waitEndpoints waits until the proxy serves exactly want for cluster.
func waitEndpoints(t *testing.T, p *runningProxy, cluster string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		eps, _ := endpointsDump(t, p)
		if got, ok := eps[cluster]; ok && strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster %s: endpoints %v, want %v", cluster, eps[cluster], want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func kubePod(ns, name string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{Name: "app", Image: "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
}

// setPodStatus writes what a kubelet would: the pod's IP and readiness.
func setPodStatus(t *testing.T, c *kubernetes.Clientset, ns, name, ip string, ready bool) {
	t.Helper()
	ctx := context.Background()
	p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}}
	if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// endpointSlice is what the EndpointSlice controller would write for
// service: one endpoint per pod, with its readiness.
func endpointSlice(ns, service string, port int32, pods map[string]string, ready map[string]bool) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: service + "-sift", Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: &port}},
	}
	for name, ip := range pods {
		r := ready[name]
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &r},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name}})
	}
	return es
}

var snapshotSet = regexp.MustCompile(`msg="snapshot set" node=(\S+)`)

// snapshotsSet counts sift-control's "snapshot set" log lines per node.
func snapshotsSet(logs string) map[string]int {
	out := map[string]int{}
	for _, m := range snapshotSet.FindAllStringSubmatch(logs, -1) {
		out[m[1]]++
	}
	return out
}

// sift-control, with examples/kubernetes' read-only RBAC, watches a real
// kube-apiserver: Services, Pods (status
// written here, as a kubelet would), EndpointSlices, annotations and the
// defaults ConfigMap become the xDS that real sift-proxy processes receive
// and serve; a change reaches only the proxies it affects.
func TestKubernetesSource(t *testing.T) {
	t.Parallel()
	c, kubeconfig := startKube(t)
	ctx := context.Background()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}))
	applyManifest(t, c, "../examples/kubernetes/sift-control.yaml")
	must(c.CoreV1().ConfigMaps("sift-system").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sift-config"},
		Data: map[string]string{"opaque-ports": "6379", "detect-timeout": "2s"}}, metav1.CreateOptions{}))
	web, err := c.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), AppProtocol: new("http")}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*corev1.Pod{
		kubePod("shop", "web-0", map[string]string{"app": "web"}, nil),
		kubePod("shop", "web-1", map[string]string{"app": "web"}, nil),
		kubePod("shop", "client-0", map[string]string{"app": "client"}, nil),
	} {
		must(c.CoreV1().Pods("shop").Create(ctx, p, metav1.CreateOptions{}))
	}
	setPodStatus(t, c, "shop", "web-0", "10.244.0.10", true)
	setPodStatus(t, c, "shop", "web-1", "10.244.0.11", false)
	setPodStatus(t, c, "shop", "client-0", "10.244.0.20", true)
	webPods := map[string]string{"web-0": "10.244.0.10", "web-1": "10.244.0.11"}
	must(c.DiscoveryV1().EndpointSlices("shop").Create(ctx, endpointSlice("shop", "web", 8080, webPods, map[string]bool{"web-0": true}), metav1.CreateOptions{}))

	cp := startControlArgs(t, "--source", "kubernetes", "--kubeconfig", kubeconfig, "--debounce", "20ms",
		"--outbound-address", "127.0.0.1:0", "--inbound-address", "127.0.0.1:0")
	client := kubeProxy(t, cp.xds, "client-0.shop")
	server := kubeProxy(t, cp.xds, "web-0.shop")
	host := "web.shop.svc.cluster.local"
	webCluster := "outbound|80||" + host
	if web.Spec.ClusterIP == "" {
		t.Fatal("the API server assigned web no cluster IP")
	}

	t.Run("only ready endpoints are served", func(t *testing.T) {
		waitEndpoints(t, client, webCluster, "10.244.0.10:8080")
	})

	t.Run("a pod turning ready in its EndpointSlice is served", func(t *testing.T) {
		es := endpointSlice("shop", "web", 8080, webPods, map[string]bool{"web-0": true, "web-1": true})
		cur, err := c.DiscoveryV1().EndpointSlices("shop").Get(ctx, "web-sift", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		es.ResourceVersion = cur.ResourceVersion
		must(c.DiscoveryV1().EndpointSlices("shop").Update(ctx, es, metav1.UpdateOptions{}))
		waitEndpoints(t, client, webCluster, "10.244.0.10:8080", "10.244.0.11:8080")
		waitEndpoints(t, server, webCluster, "10.244.0.10:8080", "10.244.0.11:8080")
	})

	t.Run("a workload annotation reaches only its own proxy", func(t *testing.T) {
		before := snapshotsSet(cp.logs())
		patch := []byte(`{"metadata":{"annotations":{"config.linkerd.io/skip-inbound-ports":"8080"}}}`)
		must(c.CoreV1().Pods("shop").Patch(ctx, "web-0", types.MergePatchType, patch, metav1.PatchOptions{}))
		eventually(t, "web-0's new snapshot", func() bool { return snapshotsSet(cp.logs())["web-0.shop"] > before["web-0.shop"] })
		// The client's snapshot is set only if its configuration changed:
		// it did not. (A later change would have to pass through the same
		// debounced rebuild, so checking now is not racing a pending push.)
		if after := snapshotsSet(cp.logs()); after["client-0.shop"] != before["client-0.shop"] {
			t.Errorf("client-0.shop got a new snapshot for web-0's annotation (%d → %d)", before["client-0.shop"], after["client-0.shop"])
		}
	})

	t.Run("a deleted pod leaves the endpoints", func(t *testing.T) {
		must(nil, c.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
		// The EndpointSlice still names web-1 (no controller here to update
		// it): the pod is gone, so it is no endpoint.
		eventually(t, "web-1 gone", func() bool {
			eps, _ := endpointsDump(t, client)
			return !strings.Contains(strings.Join(eps[webCluster], ","), "10.244.0.11")
		})
	})

	t.Run("a service's opaque-ports annotation turns the port opaque for clients", func(t *testing.T) {
		// The outbound listener's chain for the cluster IP: HTTP (declared by
		// appProtocol), then opaque (the annotation wins, as in Linkerd).
		chain := func(kind string) string { return fmt.Sprintf("%q", kind+"|"+host+":80|"+web.Spec.ClusterIP) }
		if _, dump := endpointsDump(t, client); !strings.Contains(dump, chain("http")) || strings.Contains(dump, chain("opaque")) {
			t.Fatalf("want chain %s and no %s before the annotation", chain("http"), chain("opaque"))
		}
		patch := []byte(`{"metadata":{"annotations":{"config.linkerd.io/opaque-ports":"80"}}}`)
		must(c.CoreV1().Services("shop").Patch(ctx, "web", types.MergePatchType, patch, metav1.PatchOptions{}))
		eventually(t, "the opaque chain", func() bool {
			_, dump := endpointsDump(t, client)
			return strings.Contains(dump, chain("opaque")) && !strings.Contains(dump, chain("http"))
		})
	})

	if strings.Contains(cp.logs(), "NACK") {
		t.Errorf("a proxy rejected sift-control's configuration:\n%s", cp.logs())
	}
}
