package test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The control plane at scale (issue 15; docs/kubernetes.md, "Scale"): a real
// kube-apiserver holding services×podsPer pods, the real sift-control
// watching it, and `clients` real ADS clients (gRPC, state of the world, as
// Envoy subscribes: CDS and LDS, then EDS and RDS for what they name), each
// ACKing what it receives and counting its bytes. Each change below is
// measured twice: with incremental pushes (the default) and with
// --full-push (every proxy sent its whole configuration on every change).
//
// `make bench-control` runs it at 1 000 services, 10 000 pods and 1 000
// clients and writes bench/results/control-scale.md; `make test` runs it
// small and checks what does not depend on time: which proxies and types a
// change reaches, and that incremental pushes send fewer bytes.
type scaleSize struct {
	services, podsPer, clients int
	debounce, quiet            time.Duration
}

func TestControlScale(t *testing.T) {
	t.Parallel()
	report := os.Getenv("SIFT_CONTROL_SCALE_REPORT")
	size := scaleSize{services: 30, podsPer: 4, clients: 20, debounce: 100 * time.Millisecond, quiet: 300 * time.Millisecond}
	if report != "" {
		size = scaleSize{services: 1000, podsPer: 10, clients: 1000, debounce: 100 * time.Millisecond, quiet: 2 * time.Second}
	}
	c, kubeconfig := startKubeQuick(t)
	cl := &scaleCluster{c: c, size: size}
	start := time.Now()
	cl.create(t)
	createTime := time.Since(start)

	var results []modeResult
	for _, full := range []bool{false, true} {
		results = append(results, cl.measure(t, kubeconfig, full))
	}
	inc, full := results[0], results[1]
	for i, ch := range inc.changes {
		fc := full.changes[i]
		// Load-independent expectations.
		if fc.nodes != size.clients {
			t.Errorf("full push, %s: %d proxies pushed, want all %d", ch.name, fc.nodes, size.clients)
		}
		if ch.bytes >= fc.bytes {
			t.Errorf("%s: incremental pushed %d bytes, full push %d", ch.name, ch.bytes, fc.bytes)
		}
		if ch.name == changePodAnnotated || ch.name == changePodAnnotationRemoved {
			if ch.nodes != 1 {
				t.Errorf("%s: %d proxies pushed, want 1 (the pod's own)", ch.name, ch.nodes)
			}
		} else if ch.nodes != size.clients {
			t.Errorf("%s: %d proxies pushed, want all %d (every proxy routes to every service)", ch.name, ch.nodes, size.clients)
		}
		if (ch.name == changePodAdded || ch.name == changePodRemoved) && !slices.Equal(ch.types, []string{"EDS"}) {
			t.Errorf("%s: pushed types %v, want only EDS", ch.name, ch.types)
		}
	}
	if report != "" {
		writeScaleReport(t, report, size, createTime, results)
	}
}

// Changes, in the order made; each pair leaves the cluster as it was.
const (
	changePodAdded             = "pod added to a service"
	changePodRemoved           = "pod removed from a service"
	changeServiceAnnotated     = "service opaque-ports annotation set"
	changeServiceUnannotated   = "service opaque-ports annotation removed"
	changeDefaults             = "defaults ConfigMap: detect-timeout 10s → 5s"
	changeDefaultsBack         = "defaults ConfigMap: detect-timeout 5s → 10s"
	changePodAnnotated         = "pod opaque-ports annotation set (a connected pod)"
	changePodAnnotationRemoved = "pod opaque-ports annotation removed"
)

// startKubeQuick is startKube with a client that is not rate-limited (the
// cluster is thousands of objects).
func startKubeQuick(t *testing.T) (*kubernetes.Clientset, string) {
	t.Helper()
	env := newKubeEnv(t)
	// envtest's default range, a /24, holds 254 services.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.0.0.0/16")
	return startKubeEnv(t, env, func(cfg *rest.Config) { cfg.QPS, cfg.Burst = 5000, 10000 })
}

type scaleCluster struct {
	c    *kubernetes.Clientset
	size scaleSize
}

func scaleNS(i int) string        { return fmt.Sprintf("ns%d", i%10) }
func scaleService(i int) string   { return fmt.Sprintf("svc%d", i) }
func scalePod(i, j int) string    { return fmt.Sprintf("svc%d-%d", i, j) }
func scaleNodeID(i, j int) string { return scalePod(i, j) + "." + scaleNS(i) }
func scalePodIP(i, j, per int) string {
	k := i*per + j
	return fmt.Sprintf("10.%d.%d.%d", 100+k/62500, k/250%250, k%250+1)
}

// scaleParallel runs f(0..n-1) on 32 workers, failing the test on the first error.
func scaleParallel(t *testing.T, n int, f func(i int) error) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

func (cl *scaleCluster) pod(i, j int, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: scaleNS(i), Name: scalePod(i, j), Labels: map[string]string{"app": scaleService(i)}, Annotations: annotations},
		Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{Name: "app", Image: "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
}

// createPod creates pod j of service i with the status a kubelet would
// write (its IP, ready).
func (cl *scaleCluster) createPod(ctx context.Context, i, j int) error {
	p, err := cl.c.CoreV1().Pods(scaleNS(i)).Create(ctx, cl.pod(i, j, nil), metav1.CreateOptions{})
	if err != nil {
		return err
	}
	ip := scalePodIP(i, j, cl.size.podsPer+1)
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	_, err = cl.c.CoreV1().Pods(scaleNS(i)).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	return err
}

// slice is what the EndpointSlice controller would write for service i
// with pods 0..pods-1, all ready.
func (cl *scaleCluster) slice(i, pods int) *discoveryv1.EndpointSlice {
	port := int32(8080)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: scaleNS(i), Name: scaleService(i) + "-sift", Labels: map[string]string{discoveryv1.LabelServiceName: scaleService(i)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: &port}},
	}
	ready := true
	for j := range pods {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{scalePodIP(i, j, cl.size.podsPer+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: scaleNS(i), Name: scalePod(i, j)}})
	}
	return es
}

func (cl *scaleCluster) create(t *testing.T) {
	ctx := context.Background()
	applyManifest(t, cl.c, "../examples/kubernetes/sift-control.yaml")
	if _, err := cl.c.CoreV1().ConfigMaps("sift-system").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sift-config"},
		Data: map[string]string{"detect-timeout": "10s"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	scaleParallel(t, 10, func(n int) error {
		_, err := cl.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scaleNS(n)}}, metav1.CreateOptions{})
		return err
	})
	scaleParallel(t, cl.size.services, func(i int) error {
		_, err := cl.c.CoreV1().Services(scaleNS(i)).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: scaleService(i)},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": scaleService(i)},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		_, err = cl.c.DiscoveryV1().EndpointSlices(scaleNS(i)).Create(ctx, cl.slice(i, cl.size.podsPer), metav1.CreateOptions{})
		return err
	})
	scaleParallel(t, cl.size.services*cl.size.podsPer, func(k int) error {
		return cl.createPod(ctx, k/cl.size.podsPer, k%cl.size.podsPer)
	})
}

// change makes the named change in the cluster.
func (cl *scaleCluster) change(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	const svc = 7 // a service with a connected client (svc7-0)
	ns, per := scaleNS(svc), cl.size.podsPer
	var err error
	switch name {
	case changePodAdded:
		if err = cl.createPod(ctx, svc, per); err == nil {
			_, err = cl.c.DiscoveryV1().EndpointSlices(ns).Update(ctx, cl.withVersion(t, cl.slice(svc, per+1)), metav1.UpdateOptions{})
		}
	case changePodRemoved:
		if err = cl.c.CoreV1().Pods(ns).Delete(ctx, scalePod(svc, per), metav1.DeleteOptions{}); err == nil {
			_, err = cl.c.DiscoveryV1().EndpointSlices(ns).Update(ctx, cl.withVersion(t, cl.slice(svc, per)), metav1.UpdateOptions{})
		}
	case changeServiceAnnotated, changeServiceUnannotated:
		s, gerr := cl.c.CoreV1().Services(ns).Get(ctx, scaleService(svc), metav1.GetOptions{})
		if gerr != nil {
			t.Fatal(gerr)
		}
		s.Annotations = nil
		if name == changeServiceAnnotated {
			s.Annotations = map[string]string{"config.linkerd.io/opaque-ports": "80"}
		}
		_, err = cl.c.CoreV1().Services(ns).Update(ctx, s, metav1.UpdateOptions{})
	case changeDefaults, changeDefaultsBack:
		timeout := "5s"
		if name == changeDefaultsBack {
			timeout = "10s"
		}
		_, err = cl.c.CoreV1().ConfigMaps("sift-system").Update(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sift-config"},
			Data: map[string]string{"detect-timeout": timeout}}, metav1.UpdateOptions{})
	case changePodAnnotated, changePodAnnotationRemoved:
		p, gerr := cl.c.CoreV1().Pods(ns).Get(ctx, scalePod(svc, 0), metav1.GetOptions{})
		if gerr != nil {
			t.Fatal(gerr)
		}
		p.Annotations = nil
		if name == changePodAnnotated {
			p.Annotations = map[string]string{"config.linkerd.io/opaque-ports": "8080"}
		}
		_, err = cl.c.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
	default:
		t.Fatalf("unknown change %q", name)
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func (cl *scaleCluster) withVersion(t *testing.T, es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	cur, err := cl.c.DiscoveryV1().EndpointSlices(es.Namespace).Get(context.Background(), es.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.ResourceVersion = cur.ResourceVersion
	return es
}

// modeResult is one sift-control run's figures.
type modeResult struct {
	full bool
	// initial: the whole configuration of every client, and how long
	// from the first client's connection until every client ACKed it.
	initialBytes int64
	initialTime  time.Duration
	// sift-control's memory after the initial push, and its peak.
	rss, heap, peakRSS int64
	changes            []changeResult
}

type changeResult struct {
	name       string
	nodes      int      // clients that were sent anything
	types      []string // what they were sent (CDS, LDS, EDS, RDS, SDS)
	bytes      int64    // proto.Size of every response
	responses  int
	p50, max   time.Duration // change → the client's last ACK, over the clients pushed
	controlCPU time.Duration // sift-control's user+system CPU
}

func (cl *scaleCluster) measure(t *testing.T, kubeconfig string, full bool) modeResult {
	args := []string{"--source", "kubernetes", "--kubeconfig", kubeconfig, "--debounce", cl.size.debounce.String(),
		"--outbound-address", "127.0.0.1:0", "--inbound-address", "127.0.0.1:0", "-l", "info"}
	if full {
		args = append(args, "--full-push")
	}
	cp := startControlArgs(t, args...)
	defer func() {
		cp.cmd.Process.Kill()
		<-cp.exited
	}()
	res := modeResult{full: full}
	fleet := &scaleFleet{}
	begin := time.Now()
	for i := range cl.size.clients {
		fleet.clients = append(fleet.clients, startScaleClient(t, cp.xds, scaleNodeID(i, 0), fleet))
	}
	fleet.wait(t, func() bool {
		for _, c := range fleet.clients {
			if !c.complete() {
				return false
			}
		}
		return true
	}, 10*time.Minute)
	fleet.settle(t, cp.admin, 0, cl.size.quiet)
	for _, c := range fleet.clients {
		s := c.take()
		res.initialBytes += s.bytes
		res.initialTime = max(res.initialTime, s.lastAck.Sub(begin))
	}
	pid := cp.cmd.Process.Pid
	res.rss, res.peakRSS = procMemory(t, pid)
	res.heap = metricValue(t, cp.admin, "go_memstats_heap_inuse_bytes")

	for _, name := range []string{changePodAdded, changePodRemoved, changeServiceAnnotated, changeServiceUnannotated,
		changeDefaults, changeDefaultsBack, changePodAnnotated, changePodAnnotationRemoved} {
		for _, c := range fleet.clients {
			c.take() // forget what came before
		}
		pushed := metricSum(t, cp.admin, "sift_control_xds_pushes_total")
		cpu0 := procCPU(t, pid)
		applied := followBuilds(cp)
		t0 := time.Now()
		cl.change(t, name)
		// The debounce (100 ms) is longer than it takes to get here: the
		// first build logged from now on has every write.
		applied.offset = len(cp.logs())
		applied.next(t, 5*time.Minute)
		fleet.settle(t, cp.admin, pushed, cl.size.quiet)
		ch := changeResult{name: name, controlCPU: procCPU(t, pid) - cpu0}
		var acks []time.Duration
		types := map[string]bool{}
		for _, c := range fleet.clients {
			s := c.take()
			if s.responses == 0 {
				continue
			}
			ch.nodes++
			ch.bytes += s.bytes
			ch.responses += s.responses
			acks = append(acks, s.lastAck.Sub(t0))
			for typ := range s.types {
				types[typ] = true
			}
		}
		for typ := range types {
			ch.types = append(ch.types, typ)
		}
		slices.Sort(ch.types)
		if len(acks) > 0 {
			slices.Sort(acks)
			ch.p50, ch.max = acks[len(acks)/2], acks[len(acks)-1]
		}
		res.changes = append(res.changes, ch)
		t.Logf("full=%t %s: %d nodes, %v, %d bytes, ACKed p50 %v max %v, control CPU %v", full, name, ch.nodes, ch.types, ch.bytes, ch.p50, ch.max, ch.controlCPU)
	}
	_, res.peakRSS = procMemory(t, pid)
	for _, c := range fleet.clients {
		if err := c.err(); err != nil {
			t.Errorf("client %s: %v", c.node, err)
		}
		c.close()
	}
	return res
}

// scaleFleet is the clients of one run and when any of them last heard
// from sift-control.
type scaleFleet struct {
	clients  []*scaleClient
	activity atomic.Int64 // unix nanos of the last response
}

func (f *scaleFleet) wait(t *testing.T, cond func() bool, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("the clients did not get their configuration")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settle returns once the clients have received every response
// sift-control counts as sent since its counter was pushed (its pushes
// metric), and neither count has moved for d.
func (f *scaleFleet) settle(t *testing.T, admin string, pushed int64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Minute)
	var last string
	stable := time.Now()
	for {
		sent := metricSum(t, admin, "sift_control_xds_pushes_total") - pushed
		var received int64
		for _, c := range f.clients {
			received += c.received()
		}
		now := fmt.Sprint(sent, received)
		if now != last {
			last, stable = now, time.Now()
		} else if sent == received && time.Since(stable) >= d {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sift-control sent %d responses, the clients received %d", sent, received)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// buildLog follows sift-control's log for its builds of the snapshots
// ("snapshots built", once per mesh applied).
type buildLog struct {
	cp     *controlProcess
	offset int
}

func followBuilds(cp *controlProcess) *buildLog {
	return &buildLog{cp: cp, offset: len(cp.logs())}
}

// next waits for the next build logged after the last one seen.
func (b *buildLog) next(t *testing.T, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		logs := b.cp.logs()
		if i := strings.Index(logs[b.offset:], `msg="snapshots built"`); i >= 0 {
			b.offset += i + 1
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("sift-control logged no new build of the snapshots")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scaleClient is one ADS client subscribing as Envoy does and ACKing every
// response; it counts what it receives.
type scaleClient struct {
	node  string
	fleet *scaleFleet
	conn  *grpc.ClientConn
	st    discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient

	mu sync.Mutex
	// names subscribed to, per type (nil: wildcard), and the last
	// version and nonce received per type.
	names          map[string][]string
	version, nonce map[string]string
	seen           map[string]bool // types received at least once
	chains         string          // the names of the listeners' chains, as last decoded
	stats          clientStats
	failure        error

	closeOnce sync.Once
	close_    func()
}

// close ends the stream and waits for the receive loop.
func (c *scaleClient) close() { c.closeOnce.Do(c.close_) }

type clientStats struct {
	responses int
	bytes     int64
	types     map[string]bool
	lastAck   time.Time
}

var shortTypes = map[string]string{resource.ClusterType: "CDS", resource.ListenerType: "LDS", resource.EndpointType: "EDS",
	resource.RouteType: "RDS", resource.SecretType: "SDS"}

func startScaleClient(t *testing.T, addr, node string, fleet *scaleFleet) *scaleClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
		// As proxies' bootstraps do (connection_keepalive, 10 s): then
		// sift-control never pings, and a client too busy to answer in
		// time on this loaded machine is not cut off.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 10 * time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &scaleClient{node: node, fleet: fleet, conn: conn, st: st, names: map[string][]string{},
		version: map[string]string{}, nonce: map[string]string{}, seen: map[string]bool{}}
	done := make(chan struct{})
	c.close_ = func() {
		cancel()
		conn.Close()
		<-done
	}
	t.Cleanup(c.close)
	n := &corev3.Node{Id: node, Cluster: "scale"}
	for _, typ := range []string{resource.ClusterType, resource.ListenerType} {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		defer close(done)
		c.receive()
	}()
	return c
}

func (c *scaleClient) receive() {
	for {
		resp, err := c.st.Recv()
		if err != nil {
			c.mu.Lock()
			if c.failure == nil && !strings.Contains(err.Error(), "context canceled") {
				c.failure = err
			}
			c.mu.Unlock()
			return
		}
		c.fleet.activity.Store(time.Now().UnixNano())
		typ := resp.GetTypeUrl()
		// As Envoy: a cluster or listener update may subscribe to other
		// load assignments or routes, asked for before the ACK.
		var sub string
		var subNames []string
		switch typ {
		case resource.ClusterType:
			sub, subNames = resource.EndpointType, edsNames(resp)
		case resource.ListenerType:
			// Decoding a listener of thousands of chains is most of a
			// client's work: done again only when its chains' names change.
			if key := chainNames(resp); key != c.chains {
				c.chains = key
				sub, subNames = resource.RouteType, rdsNames(resp)
			}
		}
		c.mu.Lock()
		if sub != "" && (!slices.Equal(subNames, c.names[sub]) || c.names[sub] == nil) {
			c.names[sub] = subNames
			c.send(&discoveryv3.DiscoveryRequest{TypeUrl: sub, ResourceNames: subNames, VersionInfo: c.version[sub], ResponseNonce: c.nonce[sub]})
		}
		c.version[typ], c.nonce[typ] = resp.GetVersionInfo(), resp.GetNonce()
		c.seen[typ] = true
		c.send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: c.names[typ], VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
		c.stats.responses++
		c.stats.bytes += int64(proto.Size(resp))
		if c.stats.types == nil {
			c.stats.types = map[string]bool{}
		}
		c.stats.types[shortTypes[typ]] = true
		c.stats.lastAck = time.Now()
		c.mu.Unlock()
		c.fleet.activity.Store(time.Now().UnixNano())
	}
}

// send sends req; c.mu held (the only sender is the receive loop).
func (c *scaleClient) send(req *discoveryv3.DiscoveryRequest) {
	if err := c.st.Send(req); err != nil && c.failure == nil {
		c.failure = err
	}
}

// complete reports whether the client has received every type it
// subscribes to (its whole configuration).
func (c *scaleClient) complete() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[resource.ClusterType] && c.seen[resource.ListenerType] &&
		(c.names[resource.EndpointType] == nil || c.seen[resource.EndpointType]) &&
		(c.names[resource.RouteType] == nil || c.seen[resource.RouteType])
}

// received is the number of responses since the last take.
func (c *scaleClient) received() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(c.stats.responses)
}

// take returns the statistics since the last take and resets them.
func (c *scaleClient) take() clientStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	c.stats = clientStats{}
	return s
}

func (c *scaleClient) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failure
}

// edsNames are the load assignments the clusters of resp ask for.
func edsNames(resp *discoveryv3.DiscoveryResponse) []string {
	names := []string{}
	for _, a := range resp.GetResources() {
		var cl clusterv3.Cluster
		if err := a.UnmarshalTo(&cl); err != nil {
			continue
		}
		if cl.GetType() == clusterv3.Cluster_EDS {
			name := cl.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = cl.GetName()
			}
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// rdsNames are the route configurations the listeners of resp ask for.
func rdsNames(resp *discoveryv3.DiscoveryResponse) []string {
	names := []string{}
	for _, a := range resp.GetResources() {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&hcm) == nil && hcm.GetRds() != nil {
					names = append(names, hcm.GetRds().GetRouteConfigName())
				}
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// chainNames lists the names of the filter chains of resp's listeners
// (Listener field 3, FilterChain field 7), reading only those fields.
func chainNames(resp *discoveryv3.DiscoveryResponse) string {
	var b strings.Builder
	for _, a := range resp.GetResources() {
		protoFields(a.GetValue(), 3, func(chain []byte) {
			protoFields(chain, 7, func(name []byte) {
				b.Write(name)
				b.WriteByte('\n')
			})
		})
		b.WriteByte(0)
	}
	return b.String()
}

// protoFields calls f with the bytes of every length-delimited field num of msg.
func protoFields(msg []byte, num protowire.Number, f func([]byte)) {
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			return
		}
		msg = msg[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(msg)
			if l < 0 {
				return
			}
			f(v)
			msg = msg[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(n, typ, msg)
		if l < 0 {
			return
		}
		msg = msg[l:]
	}
}

// procMemory returns a process's resident set size and its peak, in bytes.
func procMemory(t *testing.T, pid int) (rss, peak int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return rss, peak
}

// procCPU returns a process's user and system CPU time so far.
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// metricValue reads one unlabelled metric from sift-control's /metrics.
func metricValue(t *testing.T, admin, name string) int64 {
	v, n := scrapeSum(t, admin, name+" ")
	if n == 0 {
		t.Fatalf("no metric %s", name)
	}
	return v
}

// metricSum is the sum of a metric's series (0 when it has none yet).
func metricSum(t *testing.T, admin, name string) int64 {
	v, _ := scrapeSum(t, admin, name+"{")
	return v
}

// scrapeSum sums the values of sift-control's /metrics lines starting with prefix.
func scrapeSum(t *testing.T, admin, prefix string) (sum int64, lines int) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		sum += int64(f)
		lines++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum, lines
}

func mebibytes(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func roundDuration(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func writeScaleReport(t *testing.T, path string, size scaleSize, createTime time.Duration, results []modeResult) {
	var b strings.Builder
	fmt.Fprintf(&b, "# sift-control at scale: incremental vs full-snapshot pushes\n\n")
	fmt.Fprintf(&b, "`make bench-control` (test/control_scale_test.go), %s, %d CPUs (shared with other work: times are noisy; bytes and counts are not).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU())
	fmt.Fprintf(&b, "A real kube-apiserver (envtest) with %d services in 10 namespaces, %d pods (%d per service, ready, in EndpointSlices), "+
		"created in %s; the real sift-control (`--source kubernetes --debounce %s`) watching it; %d ADS clients over gRPC (node ids of pods, one per service), "+
		"each subscribing as Envoy does (CDS and LDS, then EDS and RDS), ACKing every response and counting `proto.Size` of each. "+
		"Each change is measured from the API write to the last ACK of every client that was sent anything.\n\n",
		size.services, size.services*size.podsPer, size.podsPer, roundDuration(createTime), size.debounce, size.clients)
	fmt.Fprintf(&b, "| | incremental | full push |\n|---|---|---|\n")
	inc, full := results[0], results[1]
	fmt.Fprintf(&b, "| initial configuration, all clients | %s | %s |\n", mebibytes(inc.initialBytes), mebibytes(full.initialBytes))
	fmt.Fprintf(&b, "| initial: first connect → all ACKed | %s | %s |\n", roundDuration(inc.initialTime), roundDuration(full.initialTime))
	fmt.Fprintf(&b, "| sift-control RSS after the initial push | %s | %s |\n", mebibytes(inc.rss), mebibytes(full.rss))
	fmt.Fprintf(&b, "| sift-control heap in use after it | %s | %s |\n", mebibytes(inc.heap), mebibytes(full.heap))
	fmt.Fprintf(&b, "| sift-control peak RSS (whole run) | %s | %s |\n\n", mebibytes(inc.peakRSS), mebibytes(full.peakRSS))
	fmt.Fprintf(&b, "| change | mode | nodes pushed | types | bytes pushed | responses | all ACKed p50 | max | sift-control CPU |\n|---|---|---|---|---|---|---|---|---|\n")
	for i := range inc.changes {
		for _, r := range results {
			ch := r.changes[i]
			mode := "incremental"
			if r.full {
				mode = "full push"
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %d | %s | %s | %s |\n", ch.name, mode, ch.nodes, strings.Join(ch.types, " "),
				mebibytes(ch.bytes), ch.responses, roundDuration(ch.p50), roundDuration(ch.max), roundDuration(ch.controlCPU))
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
