package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/google/go-cmp/cmp"
	opaqueupstreamv1 "github.com/siftmesh/sift/api/sift/extensions/upstreams/opaque_transport/v1"
	opaqueinboundv1 "github.com/siftmesh/sift/api/sift/filters/network/opaque_transport/v1"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/siftmesh/sift/controlplane/ca"
	"github.com/siftmesh/sift/mesh/file"
)

const securityMesh = `namespaces:
- name: shop
  workloads:
  - {name: web-0, service_account: web, ports: [{port: 8080}]}
  - {name: db-0, service_account: db, ports: [{port: 5432}]}
`

// secureControlPlane is a Controller with the CA as Security and
// Authenticator, served by a real go-control-plane server over TLS on
// 127.0.0.1:0.
type secureControlPlane struct {
	ca    *ca.CA
	clock *ca.ManualClock
	addr  string
	ctl   *Controller
}

func startSecureControlPlane(t *testing.T) *secureControlPlane {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshPath, []byte(securityMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := file.Open(meshPath, file.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	clock := ca.NewManualClock(time.Now())
	authority, err := ca.Open(ca.Options{Dir: filepath.Join(dir, "ca"), Clock: clock, Logger: log, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	sec := &ca.Security{CA: authority, Logger: log}
	opts := DefaultOptions()
	opts.Security = sec
	ctl, err := New(Config{Source: src, Options: opts, Logger: log, Authenticator: sec})
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := authority.ServerTLSConfig([]string{"sift-control"})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	Register(gs, ctl.NewServer(ctx))
	stop := make(chan struct{})
	done := make(chan struct{}, 3)
	go func() { gs.Serve(lis); done <- struct{}{} }()
	go func() { ctl.Run(ctx); done <- struct{}{} }()
	go func() { authority.Run(stop); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		close(stop)
		gs.Stop()
		for range 3 {
			<-done
		}
	})
	return &secureControlPlane{ca: authority, clock: clock, addr: lis.Addr().String(), ctl: ctl}
}

// dial connects over TLS trusting pool, with sift-control as server name.
func dial(t *testing.T, addr string, pool *x509.CertPool) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "sift-control"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func node(id, token string) *corev3.Node {
	n := &corev3.Node{Id: id}
	if token != "" {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{ca.NodeTokenMetadataKey: structpb.NewStringValue(token)}}
	}
	return n
}

// recvWithin receives one message or fails after limit.
func recvWithin[T any](t *testing.T, recv func() (T, error), limit time.Duration) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() { v, err := recv(); ch <- result{v, err} }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(limit):
		t.Fatalf("nothing received within %v", limit)
	}
	var zero T
	return zero, nil
}

// certificateOf returns the SPIFFE ID and serial of the tls_certificate
// secret in resp.
func certificateOf(t *testing.T, resp *discoveryv3.DiscoveryResponse) (string, string) {
	t.Helper()
	for _, a := range resp.GetResources() {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		if s.GetName() != ca.CertificateSecretName {
			continue
		}
		tc := s.GetTlsCertificate()
		pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf.URIs[0].String(), pair.Leaf.SerialNumber.String()
	}
	t.Fatalf("no %s secret in the response", ca.CertificateSecretName)
	return "", ""
}

func TestSDSServesEachNodeOnlyItsOwnSecret(t *testing.T) {
	t.Parallel()
	cp := startSecureControlPlane(t)
	cc := dial(t, cp.addr, cp.ca.Pool())
	webToken, dbToken := cp.ca.NodeToken("web-0.shop"), cp.ca.NodeToken("db-0.shop")
	tests := []struct {
		name     string
		node     *corev3.Node
		wantID   string
		wantCode codes.Code
	}{
		{name: "web with its token", node: node("web-0.shop", webToken), wantID: "spiffe://cluster.local/ns/shop/sa/web"},
		{name: "db with its token", node: node("db-0.shop", dbToken), wantID: "spiffe://cluster.local/ns/shop/sa/db"},
		{name: "no token", node: node("web-0.shop", ""), wantCode: codes.PermissionDenied},
		{name: "wrong token", node: node("web-0.shop", "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), wantCode: codes.PermissionDenied},
		{name: "web's token claiming db's node", node: node("db-0.shop", webToken), wantCode: codes.PermissionDenied},
		{name: "no node", node: nil, wantCode: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, flavor := range []string{"ads", "sds", "delta-ads"} {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var (
					id  string
					err error
				)
				switch flavor {
				case "ads", "sds":
					var st interface {
						Send(*discoveryv3.DiscoveryRequest) error
						Recv() (*discoveryv3.DiscoveryResponse, error)
					}
					if flavor == "ads" {
						st, err = discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
					} else {
						st, err = secretservice.NewSecretDiscoveryServiceClient(cc).StreamSecrets(ctx)
					}
					if err != nil {
						t.Fatal(err)
					}
					if err := st.Send(&discoveryv3.DiscoveryRequest{Node: tt.node, TypeUrl: resource.SecretType, ResourceNames: []string{ca.CertificateSecretName, ca.TrustBundleSecretName}}); err != nil {
						t.Fatal(err)
					}
					var resp *discoveryv3.DiscoveryResponse
					if resp, err = recvWithin(t, st.Recv, 10*time.Second); err == nil {
						id, _ = certificateOf(t, resp)
					}
				case "delta-ads":
					st, dialErr := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
					if dialErr != nil {
						t.Fatal(dialErr)
					}
					if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: tt.node, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{ca.CertificateSecretName}}); err != nil {
						t.Fatal(err)
					}
					var resp *discoveryv3.DeltaDiscoveryResponse
					if resp, err = recvWithin(t, st.Recv, 10*time.Second); err == nil {
						id, _ = certificateOf(t, &discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{resp.GetResources()[0].GetResource()}})
					}
				}
				if tt.wantCode != codes.OK {
					if status.Code(err) != tt.wantCode {
						t.Errorf("%s: err = %v, want %v", flavor, err, tt.wantCode)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", flavor, err)
				}
				if id != tt.wantID {
					t.Errorf("%s: certificate for %q, want %q", flavor, id, tt.wantID)
				}
			}
		})
	}
}

// TestSDSNodeSwitchMidStream: a stream authenticated as one node cannot
// name another node later without that node's token.
func TestSDSNodeSwitchMidStream(t *testing.T) {
	t.Parallel()
	cp := startSecureControlPlane(t)
	cc := dial(t, cp.addr, cp.ca.Pool())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	webToken := cp.ca.NodeToken("web-0.shop")
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node("web-0.shop", webToken), TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := recvWithin(t, st.Recv, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node("db-0.shop", webToken), TypeUrl: resource.SecretType, ResourceNames: []string{ca.CertificateSecretName}}); err != nil {
		t.Fatal(err)
	}
	if _, err := recvWithin(t, st.Recv, 10*time.Second); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after switching node: err = %v, want PermissionDenied", err)
	}
}

// TestXDSOverTLSNeedsTheRoot: a client that trusts another root cannot
// connect.
func TestXDSOverTLSNeedsTheRoot(t *testing.T) {
	t.Parallel()
	cp := startSecureControlPlane(t)
	other, err := ca.Open(ca.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cc := dial(t, cp.addr, other.Pool())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err == nil {
		err = st.Send(&discoveryv3.DiscoveryRequest{Node: node("web-0.shop", cp.ca.NodeToken("web-0.shop")), TypeUrl: resource.SecretType})
		if err == nil {
			_, err = st.Recv()
		}
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable (TLS verification failure)", err)
	}
}

// TestRenewalIsPushed: at 70 % of the lifetime the node receives a new
// certificate in a new snapshot version on its open stream.
func TestRenewalIsPushed(t *testing.T) {
	t.Parallel()
	cp := startSecureControlPlane(t)
	cc := dial(t, cp.addr, cp.ca.Pool())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := node("web-0.shop", cp.ca.NodeToken("web-0.shop"))
	req := &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.SecretType, ResourceNames: []string{ca.CertificateSecretName, ca.TrustBundleSecretName}}
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
	first, err := recvWithin(t, st.Recv, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, serial1 := certificateOf(t, first)
	ack := &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: req.ResourceNames, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}
	if err := st.Send(ack); err != nil {
		t.Fatal(err)
	}
	for cp.clock.Waiters() == 0 { // the CA's Run is waiting for the renewal time
		time.Sleep(time.Millisecond)
	}
	cp.clock.Advance(time.Duration(0.7*float64(ca.DefaultLeafTTL)) + time.Second)
	second, err := recvWithin(t, st.Recv, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id, serial2 := certificateOf(t, second)
	if serial2 == serial1 || second.GetVersionInfo() == first.GetVersionInfo() {
		t.Errorf("after renewal: serial %s (was %s), version %s (was %s)", serial2, serial1, second.GetVersionInfo(), first.GetVersionInfo())
	}
	if id != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("renewed certificate for %q", id)
	}
}

// TestMTLSFlagAttachesSockets: with mtls: true in the mesh file, outbound
// clusters carry the UpstreamTlsContext for the service's identities and
// inbound chains the DownstreamTlsContext; without it, only the secrets are
// in the snapshot.
func TestMTLSFlagAttachesSockets(t *testing.T) {
	t.Parallel()
	authority, err := ca.Open(ca.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Security = &ca.Security{CA: authority}
	const meshYAML = `trust_domain: prod.example
namespaces:
- name: shop
  services:
  - {name: web, cluster_ips: [10.96.0.10], selector: {app: web}, ports: [{port: 80, target_port: 8080}]}
  workloads:
  - {name: web-0, service_account: web, labels: {app: web}}
  - {name: client}
`
	for _, mtls := range []bool{false, true} {
		y := meshYAML
		if mtls {
			y = "mtls: true\n" + y
		}
		m := loadMesh(t, y)
		r := Generate(m, m.WorkloadByNodeID("web-0.shop"), opts)
		if len(r.Secrets) != 2 {
			t.Errorf("mtls=%v: %d secrets, want 2", mtls, len(r.Secrets))
		}
		var upstream, alpn []string
		for _, c := range r.Clusters {
			ts := c.GetTransportSocket()
			if c.GetName() != OutboundClusterName("web.shop.svc.cluster.local", 80) && c.GetName() != OpaqueClusterName("web.shop.svc.cluster.local", 80) {
				if ts != nil {
					t.Errorf("mtls=%v: local cluster %s has a transport socket", mtls, c.GetName())
				}
				continue
			}
			if (ts != nil) != mtls {
				t.Fatalf("mtls=%v: cluster %s transport socket %v", mtls, c.GetName(), ts)
			}
			if ts == nil {
				continue
			}
			var up tlsv3.UpstreamTlsContext
			if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
				t.Fatal(err)
			}
			for _, san := range up.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
				upstream = append(upstream, san.GetMatcher().GetExact())
			}
			alpn = append(alpn, c.GetName()+"="+strings.Join(up.GetCommonTlsContext().GetAlpnProtocols(), ","))
			if up.GetSni() != "web.shop.svc.cluster.local" {
				t.Errorf("sni = %q", up.GetSni())
			}
		}
		if mtls && (len(upstream) != 2 || upstream[0] != "spiffe://prod.example/ns/shop/sa/web" || upstream[1] != upstream[0]) {
			t.Errorf("upstream SAN matchers = %v, want web's identity on both clusters", upstream)
		}
		// The HTTP cluster configures no ALPN: each pool offers its own
		// protocol, so the client's is kept between proxies.
		if want := "outbound|80|opaque|web.shop.svc.cluster.local=sift.opaque/1 outbound|80||web.shop.svc.cluster.local="; mtls && strings.Join(alpn, " ") != want {
			t.Errorf("ALPN = %v, want %s", alpn, want)
		}
		inboundChains := 0
		for _, l := range r.Listeners {
			if l.GetName() != InboundListenerName {
				continue
			}
			for _, fc := range l.GetFilterChains() {
				inboundChains++
				ts := fc.GetTransportSocket()
				if (ts != nil) != mtls {
					t.Fatalf("mtls=%v: inbound chain %s transport socket %v", mtls, fc.GetName(), ts)
				}
				if ts == nil {
					continue
				}
				var down tlsv3.DownstreamTlsContext
				if err := ts.GetTypedConfig().UnmarshalTo(&down); err != nil {
					t.Fatal(err)
				}
				prefix := down.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()[0].GetMatcher().GetPrefix()
				if !down.GetRequireClientCertificate().GetValue() || prefix != "spiffe://prod.example/" {
					t.Errorf("inbound: require_client_certificate %v, SAN prefix %q", down.GetRequireClientCertificate(), prefix)
				}
			}
		}
		if inboundChains == 0 {
			t.Fatal("no inbound chain generated")
		}
	}
}

// TestMTLSTopology: with mTLS, detected HTTP goes to the endpoints' own
// port over mTLS, everything opaque to their inbound port with the
// opaque-transport header naming the target port; the inbound side has an
// mTLS HTTP chain per HTTP port and the opaque-transport chain.
func TestMTLSTopology(t *testing.T) {
	t.Parallel()
	authority, err := ca.Open(ca.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Security = &ca.Security{CA: authority}
	m := loadMesh(t, `mtls: true
namespaces:
- name: shop
  services:
  - {name: web, cluster_ips: [10.96.0.10], selector: {app: shop}, ports: [{port: 80, target_port: 8080}]}
  - {name: pg, cluster_ips: [10.96.0.20], selector: {app: shop}, ports: [{port: 5432}]}
  workloads:
  - {name: app-0, addresses: [10.77.0.10], labels: {app: shop}}
  - {name: client, addresses: [10.77.0.2]}
`)
	client := Generate(m, m.WorkloadByNodeID("client.shop"), opts)
	chains := map[string]string{} // chain name → cluster of its tcp_proxy ("" for HTTP)
	for _, l := range client.Listeners {
		for _, fc := range l.GetFilterChains() {
			var tp tcpproxyv3.TcpProxy
			if fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&tp) == nil {
				chains[fc.GetName()] = tp.GetCluster()
			} else {
				chains[fc.GetName()] = ""
			}
		}
	}
	for name, want := range map[string]string{
		"opaque|web.shop.svc.cluster.local:80|10.96.0.10":  "outbound|80|opaque|web.shop.svc.cluster.local",
		"tls|web.shop.svc.cluster.local:80|10.96.0.10":     "outbound|80|opaque|web.shop.svc.cluster.local",
		"http|web.shop.svc.cluster.local:80|10.96.0.10":    "",
		"opaque|pg.shop.svc.cluster.local:5432|10.96.0.20": "outbound|5432|opaque|pg.shop.svc.cluster.local",
	} {
		if got, ok := chains[name]; !ok || got != want {
			t.Errorf("outbound chain %s → %q (present %v), want %q", name, got, ok, want)
		}
	}
	for _, cla := range client.Endpoints {
		if cla.GetClusterName() != "outbound|5432|opaque|pg.shop.svc.cluster.local" {
			continue
		}
		if got := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); got != 4143 {
			t.Errorf("opaque endpoints at port %d, want the inbound port 4143", got)
		}
	}
	for _, c := range client.Clusters {
		if c.GetName() != "outbound|80|opaque|web.shop.svc.cluster.local" {
			continue
		}
		var ot opaqueupstreamv1.OpaqueTransport
		if err := c.GetTypedExtensionProtocolOptions()[opaqueTransportOptionsName].UnmarshalTo(&ot); err != nil || ot.GetPort() != 8080 {
			t.Errorf("opaque transport options %v (%v), want port 8080", &ot, err)
		}
	}

	app := Generate(m, m.WorkloadByNodeID("app-0.shop"), opts)
	var inbound []string
	for _, l := range app.Listeners {
		if l.GetName() != InboundListenerName {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			inbound = append(inbound, fc.GetName()+" "+fc.GetFilterChainMatch().GetTransportProtocol()+" "+
				strings.Join(fc.GetFilterChainMatch().GetApplicationProtocols(), ","))
			if fc.GetTransportSocket() == nil {
				t.Errorf("inbound chain %s has no transport socket", fc.GetName())
			}
			var in opaqueinboundv1.Inbound
			if fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&in) == nil {
				if got := fmt.Sprint(in.GetAllowedPorts()); got != "[5432 8080]" {
					t.Errorf("opaque transport allowed ports %s, want [5432 8080]", got)
				}
			}
		}
	}
	want := []string{"http|inbound:8080 tls ", "opaque-transport|inbound:4143 tls sift.opaque/1"}
	if diff := cmp.Diff(want, inbound); diff != "" {
		t.Errorf("inbound chains (-want +got):\n%s", diff)
	}
}

// TestProxiesWithoutFollowsSecretACKs: the controller knows which proxies
// acknowledged which secrets — what a CA rotation waits for — from real
// SDS streams over ADS, state of the world and delta: a proxy that asked
// but has not ACKed, or NACKed, is waiting; one that ACKed is not.
func TestProxiesWithoutFollowsSecretACKs(t *testing.T) {
	t.Parallel()
	cp := startSecureControlPlane(t)
	cc := dial(t, cp.addr, cp.ca.Pool())
	state := cp.ca.SecurityState()
	waitFor := func(t *testing.T, id string, want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := false
			for _, w := range cp.ctl.ProxiesWithout(state) {
				got = got || w == id
			}
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s waiting = %v, want %v (waiting: %v)", id, got, want, cp.ctl.ProxiesWithout(state))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	names := []string{ca.CertificateSecretName, ca.TrustBundleSecretName}
	t.Run("sotw", func(t *testing.T) {
		id := "web-0.shop"
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := node(id, cp.ca.NodeToken(id))
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
		resp, err := recvWithin(t, st.Recv, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, id, true) // asked, not yet acknowledged
		nack := &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.SecretType, ResourceNames: names,
			ResponseNonce: resp.GetNonce(), ErrorDetail: status.New(codes.InvalidArgument, "refused").Proto()}
		if err := st.Send(nack); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		waitFor(t, id, true) // a NACK acknowledges nothing
		ack := &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.SecretType, ResourceNames: names,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if err := st.Send(ack); err != nil {
			t.Fatal(err)
		}
		waitFor(t, id, false)
	})
	t.Run("delta", func(t *testing.T) {
		id := "db-0.shop"
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := node(id, cp.ca.NodeToken(id))
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: resource.SecretType, ResourceNamesSubscribe: names}); err != nil {
			t.Fatal(err)
		}
		resp, err := recvWithin(t, st.Recv, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, id, true)
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: resource.SecretType, ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, id, false)
	})
}
