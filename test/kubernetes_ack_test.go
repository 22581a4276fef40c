package test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// kubeAppPod is a pod whose app container serves port `http` at httpPort;
// meshed adds the sift-proxy container `sift inject` adds.
func kubeAppPod(ns, name string, labels map[string]string, httpPort int32, meshed bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{Name: "app", Image: "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: httpPort}}}}},
	}
	if meshed {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sift-proxy", Image: "sift-proxy"})
	}
	return p
}

// Against a real kube-apiserver, with real sift-proxy processes: a meshed
// pod (running sift-proxy) that is Ready and in its EndpointSlice is left
// out of a peer's endpoints until its own proxy has connected and ACKed its
// inbound listener, while an unmeshed pod is served as soon as it is ready;
// and a Service's named targetPort resolves per pod from its container
// ports' names.
func TestKubernetesEndpointsWaitForProxyACK(t *testing.T) {
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
	must(c.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}}}, metav1.CreateOptions{}))
	must(c.CoreV1().Pods("shop").Create(ctx, kubeAppPod("shop", "client-0", map[string]string{"app": "client"}, 8080, true), metav1.CreateOptions{}))
	setPodStatus(t, c, "shop", "client-0", "10.244.0.20", true)

	// A long timeout: only the ACK can publish web-0 within the test.
	cp := startControlArgs(t, "--source", "kubernetes", "--kubeconfig", kubeconfig, "--debounce", "20ms",
		"--endpoint-ack-timeout", "1h", "--outbound-address", "127.0.0.1:0", "--inbound-address", "127.0.0.1:0")
	client := kubeProxy(t, cp.xds, "client-0.shop")
	webCluster := "outbound|80||web.shop.svc.cluster.local"
	waitEndpoints(t, client, webCluster) // the client is configured; web has no endpoint yet

	// Created after sift-control started: web-0 is meshed and serves `http`
	// on 9090, web-1 runs no proxy and serves it on 8080. Both are Ready.
	must(c.CoreV1().Pods("shop").Create(ctx, kubeAppPod("shop", "web-0", map[string]string{"app": "web"}, 9090, true), metav1.CreateOptions{}))
	must(c.CoreV1().Pods("shop").Create(ctx, kubeAppPod("shop", "web-1", map[string]string{"app": "web"}, 8080, false), metav1.CreateOptions{}))
	setPodStatus(t, c, "shop", "web-0", "10.244.0.10", true)
	setPodStatus(t, c, "shop", "web-1", "10.244.0.11", true)
	webPods := map[string]string{"web-0": "10.244.0.10", "web-1": "10.244.0.11"}
	must(c.DiscoveryV1().EndpointSlices("shop").Create(ctx, endpointSlice("shop", "web", 8080, webPods, map[string]bool{"web-0": true, "web-1": true}), metav1.CreateOptions{}))

	t.Run("a meshed pod whose proxy has not ACKed is no endpoint", func(t *testing.T) {
		eventually(t, "web-0 waiting for its proxy", func() bool {
			return strings.Contains(scrape(t, cp.admin), `sift_control_endpoints_waiting_for_ack{state="waiting"} 1`+"\n")
		})
		// From here until web-0's proxy ACKs, no configuration holds it.
		waitEndpoints(t, client, webCluster, "10.244.0.11:8080")
	})

	t.Run("its proxy starts and ACKs: it is published, at its named port", func(t *testing.T) {
		server := kubeProxy(t, cp.xds, "web-0.shop")
		waitEndpoints(t, client, webCluster, "10.244.0.10:9090", "10.244.0.11:8080")
		// Its own proxy serves the named port's number on its inbound side.
		eventually(t, "web-0's inbound cluster for 9090", func() bool {
			_, dump := endpointsDump(t, server)
			return strings.Contains(dump, `"inbound|9090||"`)
		})
		eventually(t, "the publication metric", func() bool {
			return strings.Contains(scrape(t, cp.admin), `sift_control_endpoints_published_total{reason="ack"} 1`+"\n")
		})
	})

	if strings.Contains(cp.logs(), "NACK") {
		t.Errorf("a proxy rejected sift-control's configuration:\n%s", cp.logs())
	}
}
