package test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/internal/testcerts"
	"github.com/siftmesh/sift/xds"
)

// sdsListener is tcpListener with a TLS chain whose certificate is the SDS
// secret "server-cert", fetched over ADS.
func sdsListener(t *testing.T, name, cluster string) *listenerv3.Listener {
	l := tcpListener(name, cluster)
	ctx, err := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "server-cert", SdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: mtls.TransportSocketName,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx}}
	return l
}

func certSecret(name string, cert, key []byte) *tlsv3.Secret {
	ds := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: ds(cert), PrivateKey: ds(key)}}}
}

// TestSDSWarmingRotationAndNACK: a listener whose certificate comes over
// SDS warms until it arrives; rotating it under continuous traffic loses no
// connection and new handshakes see the new certificate at once; a bad
// secret is NACKed naming it while the last good one serves; config_dump
// shows no key.
func TestSDSWarmingRotationAndNACK(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	cp := startControlPlane(t, true)
	p := startProxy(t, xdsBootstrap(cp.addr, false, true), nil)
	backend := echo(t)
	base := func(secrets ...types.Resource) map[resourcev3.Type][]types.Resource {
		res := snapshotFor(sdsListener(t, "ingress", "web"), edsCluster("web"), loadAssignment("web", backend))
		res[resourcev3.SecretType] = secrets
		return res
	}

	cp.set("1", base())
	eventually(t, "LDS version 1 acknowledged", func() bool { return cp.sawVersion(xds.ListenerType, "1") })
	time.Sleep(200 * time.Millisecond)
	if p.Listeners().Get("ingress") != nil {
		t.Fatal("the listener serves before its certificate arrived (it must warm)")
	}

	v1 := ca.Issue("spiffe://mesh.local/v1")
	cp.set("2", base(certSecret("server-cert", v1.CertPEM, v1.KeyPEM)))
	eventually(t, "the listener to warm up", func() bool { return p.Listeners().Get("ingress") != nil })
	addr := p.addr(t, "ingress")

	// exchange makes one new TLS connection, echoes a line through the
	// proxy and returns the server certificate's identity.
	exchange := func() (string, error) {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			return "", err
		}
		return mtls.PeerIdentity(c.ConnectionState().PeerCertificates[0]), nil
	}
	if id, err := exchange(); err != nil || id != "spiffe://mesh.local/v1" {
		t.Fatalf("first exchange: %q, %v", id, err)
	}

	// A connection made before the rotation, used after it.
	long, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	longR := bufio.NewReader(long)

	var failures, done atomic.Int64
	var sawV2 atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				id, err := exchange()
				if err != nil {
					failures.Add(1)
					t.Errorf("exchange during rotation: %v", err)
					continue
				}
				done.Add(1)
				if id == "spiffe://mesh.local/v2" {
					sawV2.Store(true)
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	v2 := ca.Issue("spiffe://mesh.local/v2")
	cp.set("3", base(certSecret("server-cert", v2.CertPEM, v2.KeyPEM)))
	eventually(t, "new handshakes to see the rotated certificate", sawV2.Load)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failures.Load() != 0 || done.Load() == 0 {
		t.Fatalf("%d of %d exchanges failed during rotation", failures.Load(), failures.Load()+done.Load())
	}
	if id, err := exchange(); err != nil || id != "spiffe://mesh.local/v2" {
		t.Fatalf("after rotation: %q, %v", id, err)
	}
	long.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := long.Write([]byte("still here\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := longR.ReadString('\n'); err != nil || line != "still here\n" {
		t.Fatalf("the connection made before rotation: %q, %v", line, err)
	}

	// A secret whose key does not match its certificate is NACKed.
	other := ca.Issue("spiffe://mesh.local/other")
	cp.set("4", base(certSecret("server-cert", v2.CertPEM, other.KeyPEM)))
	select {
	case msg := <-cp.nacks:
		if !strings.Contains(msg, `secret "server-cert"`) || !strings.Contains(msg, "private key does not match") {
			t.Fatalf("NACK %q does not name the secret and the problem", msg)
		}
		if strings.Contains(msg, "PRIVATE KEY") {
			t.Fatalf("NACK quotes key material: %q", msg)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no NACK for a bad secret")
	}
	if id, err := exchange(); err != nil || id != "spiffe://mesh.local/v2" {
		t.Fatalf("after the NACK the last good certificate must serve: %q, %v", id, err)
	}

	dump, err := p.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	// inline_bytes print in base64, as in Envoy's dump.
	redacted := base64.StdEncoding.EncodeToString([]byte(mtls.Redacted))
	if !strings.Contains(string(dump), redacted) {
		t.Fatal("config_dump must show the secret's key as [redacted]")
	}
	for _, key := range [][]byte{v1.KeyPEM, v2.KeyPEM, other.KeyPEM} {
		if strings.Contains(string(dump), base64.StdEncoding.EncodeToString(key)) || strings.Contains(string(dump), "PRIVATE KEY") {
			t.Fatal("config_dump shows a private key")
		}
	}
	if !strings.Contains(string(dump), "dynamic_active_secrets") {
		t.Fatal("config_dump has no SDS secrets")
	}
}

// TestXDSOverMutualTLS: a bootstrap whose xDS cluster has an
// UpstreamTlsContext with certificate files makes the ADS stream mTLS; the
// control plane requires and verifies the proxy's client certificate.
func TestXDSOverMutualTLS(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	cpLeaf := ca.Issue("spiffe://mesh.local/ns/sift/sa/control", "control.mesh")
	proxyLeaf := ca.Issue("spiffe://mesh.local/ns/default/sa/proxy")
	var verifiedPeer atomic.Value
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cpLeaf.TLS()}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			verifiedPeer.Store(mtls.PeerIdentity(cs.PeerCertificates[0]))
			return nil
		},
	})
	cp := &controlPlane{t: t, cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil),
		nacks: make(chan string, 100), versions: map[string][]string{}, opts: []grpc.ServerOption{grpc.Creds(creds)}}
	cp.serve("127.0.0.1:0")

	dir := t.TempDir()
	files := map[string][]byte{"ca.pem": ca.CertPEM, "cert.pem": proxyLeaf.CertPEM, "key.pem": proxyLeaf.KeyPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tlsField := fmt.Sprintf(`transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, `+
		`sni: control.mesh, common_tls_context: {tls_certificates: [{certificate_chain: {filename: %s}, private_key: {filename: %s}}], `+
		`validation_context: {trusted_ca: {filename: %s}, match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "spiffe://mesh.local/ns/sift/sa/control"}}]}}}}`,
		filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem"))
	boot := strings.Replace(xdsBootstrap(cp.addr, false, true), staticCluster("xds", cp.addr), withFields(staticCluster("xds", cp.addr), tlsField), 1)
	if !strings.Contains(boot, "UpstreamTlsContext") {
		t.Fatal("bootstrap without the TLS xDS cluster")
	}
	p := startProxy(t, boot, nil)
	cp.set("1", snapshotFor(tcpListener("ingress", "web"), edsCluster("web"), loadAssignment("web", echo(t))))
	eventually(t, "the listener from the TLS control plane", func() bool { return p.Listeners().Get("ingress") != nil })
	if got, _ := verifiedPeer.Load().(string); got != "spiffe://mesh.local/ns/default/sa/proxy" {
		t.Fatalf("the control plane saw client identity %q", got)
	}
	dump, err := p.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(dump), "key.pem") {
		t.Fatal("config_dump shows the private key's file (Envoy redacts the whole sensitive field)")
	}
}

// TestSDSOverItsOwnStream: without ADS, secrets come on the SDS service of
// the listeners' server (sds_config names that api_config_source), in the
// state-of-the-world and the delta protocol alike.
func TestSDSOverItsOwnStream(t *testing.T) {
	t.Parallel()
	for _, delta := range []bool{false, true} {
		name := "sotw"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ca := testcerts.NewCA("mesh")
			cp := startControlPlane(t, false)
			p := startProxy(t, xdsBootstrap(cp.addr, delta, false), nil)
			apiType := corev3.ApiConfigSource_GRPC
			if delta {
				apiType = corev3.ApiConfigSource_DELTA_GRPC
			}
			l := sdsListener(t, "ingress", "web")
			ctx := &tlsv3.DownstreamTlsContext{}
			if err := l.FilterChains[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
				t.Fatal(err)
			}
			ctx.CommonTlsContext.TlsCertificateSdsSecretConfigs[0].SdsConfig = &corev3.ConfigSource{
				ResourceApiVersion: corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
					ApiType: apiType, TransportApiVersion: corev3.ApiVersion_V3,
					GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "xds"}}}},
				}}}
			a, err := anypb.New(ctx)
			if err != nil {
				t.Fatal(err)
			}
			l.FilterChains[0].GetTransportSocket().ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
			leaf := ca.Issue("spiffe://mesh.local/sds-stream")
			res := snapshotFor(l, edsCluster("web"), loadAssignment("web", echo(t)))
			res[resourcev3.SecretType] = []types.Resource{certSecret("server-cert", leaf.CertPEM, leaf.KeyPEM)}
			cp.set("1", res)
			eventually(t, "the listener to warm up with its SDS secret", func() bool { return p.Listeners().Get("ingress") != nil })
			c, err := tls.Dial("tcp", p.addr(t, "ingress"), &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if id := mtls.PeerIdentity(c.ConnectionState().PeerCertificates[0]); id != "spiffe://mesh.local/sds-stream" {
				t.Fatalf("server identity %q", id)
			}
		})
	}
}
