package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/siftmesh/sift/internal/reactor"
	"github.com/siftmesh/sift/internal/testcerts"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

func certOf(l *testcerts.Leaf) *tlsv3.TlsCertificate {
	return &tlsv3.TlsCertificate{CertificateChain: inline(l.CertPEM), PrivateKey: inline(l.KeyPEM)}
}

func socket(t *testing.T, m proto.Message) *corev3.TransportSocket {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.TransportSocket{Name: TransportSocketName, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

func spiffeSAN(id string) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}}
}

// serve accepts connections on a real socket and handshakes each with srv,
// reporting the identity (or the error) and echoing on success.
func serve(t *testing.T, srv *Server) (addr string, results chan error, ids chan Identity) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results, ids = make(chan error, 16), make(chan Identity, 16)
	done := make(chan struct{})
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); <-done; conns.Wait() })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			tc, id, err := srv.Handshake(ctx, c)
			cancel()
			results <- err
			if err != nil {
				c.Close()
				continue
			}
			ids <- id
			conns.Add(1)
			go func() {
				defer conns.Done()
				io.Copy(tc, tc)
				tc.Close()
			}()
		}
	}()
	return ln.Addr().String(), results, ids
}

func TestServerRequiresClientCertificate(t *testing.T) {
	t.Parallel()
	ca, other := testcerts.NewCA("mesh"), testcerts.NewCA("other")
	serverLeaf := ca.Issue("spiffe://mesh.local/ns/default/sa/server")
	store := NewStore(StoreOptions{})
	defer store.Close()
	srv, err := store.DecodeServer(socket(t, &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates:       []*tlsv3.TlsCertificate{certOf(serverLeaf)},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(ca.CertPEM)}},
			AlpnProtocols:         []string{"h2", "http/1.1"},
		},
	}))
	if err != nil {
		t.Fatal(err)
	}
	addr, results, ids := serve(t, srv)

	good := ca.Issue("spiffe://mesh.local/ns/default/sa/client").TLS()
	wrong := other.Issue("spiffe://mesh.local/ns/default/sa/client").TLS()
	tests := []struct {
		name    string
		certs   []tls.Certificate
		plain   bool
		wantErr string // in the server's handshake error; "" = success
	}{
		{name: "good client", certs: []tls.Certificate{good}},
		{name: "no client certificate", wantErr: "client didn't provide a certificate"},
		{name: "client certificate from another CA", certs: []tls.Certificate{wrong}, wantErr: "certificate signed by unknown authority"},
		{name: "plaintext", plain: true, wantErr: "first record does not look like a TLS handshake"},
	}
	for _, tt := range tests { // sequential: one server, results in order
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.plain {
				c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			} else {
				tc := tls.Client(c, &tls.Config{RootCAs: ca.Pool(), ServerName: "ignored", InsecureSkipVerify: true,
					Certificates: tt.certs, NextProtos: []string{"h2"}})
				tc.Handshake()
				// TLS 1.3: the server's verdict on the client certificate
				// arrives with the first read.
				tc.Write([]byte("ping"))
				buf := make([]byte, 4)
				_, rerr := io.ReadFull(tc, buf)
				if tt.wantErr == "" && rerr != nil {
					t.Fatalf("echo over TLS: %v", rerr)
				}
			}
			err = <-results
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				id := <-ids
				want := Identity{Peer: "spiffe://mesh.local/ns/default/sa/client", Local: "spiffe://mesh.local/ns/default/sa/server", ALPN: "h2"}
				if diff := cmp.Diff(want, id); diff != "" {
					t.Errorf("identity (-want +got):\n%s", diff)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("handshake error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestClientVerifiesSPIFFESAN(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	store := NewStore(StoreOptions{})
	defer store.Close()
	srv, err := store.DecodeServer(socket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificates: []*tlsv3.TlsCertificate{certOf(ca.Issue("spiffe://mesh.local/ns/web/sa/web"))}}}))
	if err != nil {
		t.Fatal(err)
	}
	addr, results, _ := serve(t, srv)
	tests := []struct {
		name    string
		san     string
		wantErr string
	}{
		{name: "matching SAN", san: "spiffe://mesh.local/ns/web/sa/web"},
		{name: "SAN mismatch", san: "spiffe://mesh.local/ns/db/sa/db", wantErr: "subject alternative names [URI:spiffe://mesh.local/ns/web/sa/web IP:127.0.0.1] match none of [URI:exact spiffe://mesh.local/ns/db/sa/db]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := store.DecodeClient(socket(t, &tlsv3.UpstreamTlsContext{Sni: "web.mesh", CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsParams: &tlsv3.TlsParameters{TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3},
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: inline(ca.CertPEM), MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{spiffeSAN(tt.san)}}},
			}}))
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tc, id, err := cl.Handshake(context.Background(), c, []string{"h2"})
			<-results
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Handshake error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tc.Close()
			if id.Peer != tt.san {
				t.Errorf("peer = %q, want %q", id.Peer, tt.san)
			}
			if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
				t.Errorf("version = %x, want TLS 1.3", v)
			}
		})
	}
}

// A rotated certificate applies to the next handshake; a connection
// established before keeps working.
func TestRotationAppliesToNewHandshakesOnly(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	store := NewStore(StoreOptions{CheckSDS: func(*corev3.ConfigSource) error { return nil }})
	defer store.Close()
	sds := &tlsv3.SdsSecretConfig{Name: "server-cert", SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
	srv, err := store.DecodeServer(socket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds}}}))
	if err != nil {
		t.Fatal(err)
	}
	if Ready(srv.Sources()) {
		t.Fatal("ready before the SDS secret arrived")
	}
	if got := store.SDSNames(); !cmp.Equal(got, []string{"server-cert"}) {
		t.Fatalf("SDSNames = %v", got)
	}
	set := func(id string) {
		if err := store.ApplySDS(map[string]*tlsv3.Secret{"server-cert": {Name: "server-cert",
			Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: certOf(ca.Issue(id))}}}); err != nil {
			t.Fatal(err)
		}
	}
	set("spiffe://mesh.local/one")
	if !Ready(srv.Sources()) {
		t.Fatal("not ready after the secret arrived")
	}
	addr, results, _ := serve(t, srv)
	dial := func() (*tls.Conn, string) {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := <-results; err != nil {
			t.Fatal(err)
		}
		return c, PeerIdentity(c.ConnectionState().PeerCertificates[0])
	}
	old, id := dial()
	defer old.Close()
	if id != "spiffe://mesh.local/one" {
		t.Fatalf("first cert = %s", id)
	}
	set("spiffe://mesh.local/two")
	c, id := dial()
	c.Close()
	if id != "spiffe://mesh.local/two" {
		t.Fatalf("after rotation = %s, want the new cert", id)
	}
	if _, err := old.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(old, buf); err != nil {
		t.Fatalf("the connection made before rotation broke: %v", err)
	}
}

func TestBadSecretsAreRejectedWithoutKeyMaterial(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	a, b := ca.Issue("spiffe://x/a"), ca.Issue("spiffe://x/b")
	tests := []struct {
		name    string
		secret  *tlsv3.Secret
		wantErr string
	}{
		{name: "unparseable PEM", secret: &tlsv3.Secret{Name: "s1", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline([]byte("not a pem")), PrivateKey: inline(a.KeyPEM)}}},
			wantErr: `secret "s1": tls_certificate.certificate_chain: no PEM certificate found`},
		{name: "key not matching the certificate", secret: &tlsv3.Secret{Name: "s2", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(a.CertPEM), PrivateKey: inline(b.KeyPEM)}}},
			wantErr: `secret "s2": tls_certificate: tls: private key does not match public key`},
		{name: "bad trust bundle", secret: &tlsv3.Secret{Name: "s3", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline([]byte("garbage"))}}},
			wantErr: `secret "s3": validation_context.trusted_ca: no PEM certificate found`},
		{name: "unsupported field", secret: &tlsv3.Secret{Name: "s4", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{}}},
			wantErr: `secret "s4": generic_secret: not supported by Sift`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := NewStore(StoreOptions{})
			defer store.Close()
			good := &tlsv3.Secret{Name: "good", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: certOf(a)}}
			err := store.ApplySDS(map[string]*tlsv3.Secret{"good": good, tt.secret.Name: tt.secret})
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("ApplySDS error = %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatal("the error quotes key material")
			}
			if got := store.SDSNames(); len(got) != 0 {
				t.Errorf("a rejected update changed the store: %v", got)
			}
		})
	}
}

func TestRedactHidesKeysEverywhere(t *testing.T) {
	t.Parallel()
	leaf := testcerts.NewCA("mesh").Issue("spiffe://x/a")
	ctx := &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{certOf(leaf)}}}
	secret := &tlsv3.Secret{Name: "s", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: certOf(leaf)}}
	ts := socket(t, ctx)
	for _, m := range []proto.Message{secret, ts} {
		js, err := protojson.Marshal(Redact(m))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(js), "PRIVATE") || strings.Contains(string(js), "UFJJVkFURS") /* base64 */ {
			t.Errorf("%T: key material in %s", m, js)
		}
		// The certificate chain is not sensitive: it stays.
		if !strings.Contains(string(js), "certificateChain") {
			t.Errorf("%T: certificate chain missing: %s", m, js)
		}
	}
	if !proto.Equal(secret.GetTlsCertificate().GetPrivateKey(), inline(leaf.KeyPEM)) {
		t.Error("Redact modified its argument")
	}
	red := Redact(secret).(*tlsv3.Secret)
	if got := string(red.GetTlsCertificate().GetPrivateKey().GetInlineBytes()); got != Redacted {
		t.Errorf("private_key = %q, want %q", got, Redacted)
	}
}

// Certificates given as files are reloaded when the files change.
func TestFileCertificatesReload(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	write := func(l *testcerts.Leaf) {
		if err := os.WriteFile(certFile, l.CertPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, l.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(ca.Issue("spiffe://mesh.local/v1"))
	store := NewStore(StoreOptions{FilePollInterval: 10 * time.Millisecond})
	defer store.Close()
	file := func(p string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: p}}
	}
	srv, err := store.DecodeServer(socket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: file(certFile), PrivateKey: file(keyFile)}}}}))
	if err != nil {
		t.Fatal(err)
	}
	current := func() string {
		cfg, err := srv.config()
		if err != nil {
			t.Fatal(err)
		}
		return PeerIdentity(cfg.Certificates[0].Leaf)
	}
	if got := current(); got != "spiffe://mesh.local/v1" {
		t.Fatalf("cert = %s", got)
	}
	write(ca.Issue("spiffe://mesh.local/v2"))
	deadline := time.Now().Add(5 * time.Second)
	for current() != "spiffe://mesh.local/v2" {
		if time.Now().After(deadline) {
			t.Fatal("the rewritten certificate files were not reloaded")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	leaf := testcerts.NewCA("mesh").Issue("spiffe://x/a")
	store := NewStore(StoreOptions{})
	defer store.Close()
	tests := []struct {
		name    string
		ctx     *tlsv3.DownstreamTlsContext
		wantErr string
	}{
		{name: "no certificate", ctx: &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{}},
			wantErr: "typed_config.common_tls_context: a server needs tls_certificates or tls_certificate_sds_secret_configs"},
		{name: "unknown cipher", ctx: &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates: []*tlsv3.TlsCertificate{certOf(leaf)},
			TlsParams:       &tlsv3.TlsParameters{CipherSuites: []string{"[ECDHE-ECDSA-AES128-GCM-SHA256|NOPE]"}}}},
			wantErr: `typed_config.common_tls_context.tls_params.cipher_suites[0]: "NOPE" is not a cipher suite Sift supports`},
		{name: "min above max", ctx: &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates: []*tlsv3.TlsCertificate{certOf(leaf)},
			TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
				TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_2}}},
			wantErr: "typed_config.common_tls_context.tls_params: tls_minimum_protocol_version is above tls_maximum_protocol_version"},
		{name: "unknown static secret", ctx: &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "nope"}}}},
			wantErr: `typed_config.common_tls_context.tls_certificate_sds_secret_configs[0]: unknown static secret "nope"`},
		{name: "SDS without a server", ctx: &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "x", SdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}}},
			wantErr: "tls_certificate_sds_secret_configs[0].sds_config: SDS needs dynamic_resources"},
		{name: "unsupported field", ctx: &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			KeyLog: &tlsv3.TlsKeyLog{Path: "/tmp/k"}}},
			wantErr: "typed_config.common_tls_context.key_log: not supported by Sift"},
		{name: "session timeout", ctx: &tlsv3.DownstreamTlsContext{SessionTimeout: nil, RequireSni: wrapperspb.Bool(true),
			CommonTlsContext: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{certOf(leaf)}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := store.DecodeServer(socket(t, tt.ctx))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("DecodeServer error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestRawBufferIsPlaintext(t *testing.T) {
	t.Parallel()
	store := NewStore(StoreOptions{})
	defer store.Close()
	ts := &corev3.TransportSocket{Name: "raw", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: rawBufferTypeURL}}}
	srv, err := store.DecodeServer(ts)
	if srv != nil || err != nil {
		t.Fatalf("DecodeServer(raw_buffer) = %v, %v; want nil, nil", srv, err)
	}
	if _, err := store.DecodeServer(&corev3.TransportSocket{Name: "x"}); err == nil || !errors.Is(err, err) ||
		!strings.Contains(err.Error(), "typed_config: must be set") {
		t.Fatalf("no typed_config: %v", err)
	}
}

// Session resumption as Envoy's fields set it: on by default (tickets),
// off with disable_stateless_session_resumption, and shared between
// servers (proxies) given the same session_ticket_keys.
func TestSessionResumption(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	leaf := ca.Issue("spiffe://mesh.local/server")
	key := inline([]byte(strings.Repeat("k", 80)))
	tests := []struct {
		name       string
		ctx        func() *tlsv3.DownstreamTlsContext
		sameServer bool
		want       bool
	}{
		{name: "default: tickets", sameServer: true, want: true,
			ctx: func() *tlsv3.DownstreamTlsContext { return &tlsv3.DownstreamTlsContext{} }},
		{name: "disable_stateless_session_resumption", sameServer: true, want: false,
			ctx: func() *tlsv3.DownstreamTlsContext {
				return &tlsv3.DownstreamTlsContext{SessionTicketKeysType: &tlsv3.DownstreamTlsContext_DisableStatelessSessionResumption{DisableStatelessSessionResumption: true}}
			}},
		{name: "two servers, own keys", want: false,
			ctx: func() *tlsv3.DownstreamTlsContext { return &tlsv3.DownstreamTlsContext{} }},
		{name: "two servers, shared session_ticket_keys", want: true,
			ctx: func() *tlsv3.DownstreamTlsContext {
				return &tlsv3.DownstreamTlsContext{SessionTicketKeysType: &tlsv3.DownstreamTlsContext_SessionTicketKeys{
					SessionTicketKeys: &tlsv3.TlsSessionTicketKeys{Keys: []*corev3.DataSource{key}}}}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := NewStore(StoreOptions{})
			defer store.Close()
			newServer := func() string {
				ctx := tt.ctx()
				ctx.CommonTlsContext = &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{certOf(leaf)}}
				srv, err := store.DecodeServer(socket(t, ctx))
				if err != nil {
					t.Fatal(err)
				}
				addr, _, _ := serve(t, srv)
				return addr
			}
			first := newServer()
			second := first
			if !tt.sameServer {
				second = newServer()
			}
			cfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			resumed := func(addr string) bool {
				c, err := tls.Dial("tcp", addr, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				// TLS 1.3 tickets come after the handshake: an echo round trip
				// reads them.
				c.Write([]byte("x"))
				io.ReadFull(c, make([]byte, 1))
				return c.ConnectionState().DidResume
			}
			if resumed(first) {
				t.Fatal("the first connection resumed")
			}
			if got := resumed(second); got != tt.want {
				t.Fatalf("second connection resumed = %v, want %v", got, tt.want)
			}
		})
	}
}

// A combined_validation_context takes the trust bundle from SDS and merges
// its default (here the SAN matcher) into it; rotating the bundle to a new
// CA applies to the next handshake.
func TestCombinedValidationAndTrustRotation(t *testing.T) {
	t.Parallel()
	oldCA, newCA := testcerts.NewCA("old"), testcerts.NewCA("new")
	store := NewStore(StoreOptions{CheckSDS: func(*corev3.ConfigSource) error { return nil }})
	defer store.Close()
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	srv, err := store.DecodeServer(socket(t, &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates: []*tlsv3.TlsCertificate{certOf(oldCA.Issue("spiffe://mesh.local/server"))},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{spiffeSAN("spiffe://mesh.local/client")}},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "trust", SdsConfig: ads},
			}},
		}}))
	if err != nil {
		t.Fatal(err)
	}
	trust := func(ca *testcerts.CA) {
		t.Helper()
		if err := store.ApplySDS(map[string]*tlsv3.Secret{"trust": {Name: "trust", Type: &tlsv3.Secret_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(ca.CertPEM)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	trust(oldCA)
	addr, results, _ := serve(t, srv)
	try := func(cert *testcerts.Leaf) error {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert.TLS()}})
		if err == nil {
			c.Write([]byte("x"))
			io.ReadFull(c, make([]byte, 1))
			c.Close()
		}
		return <-results
	}
	tests := []struct {
		name    string
		trust   *testcerts.CA
		client  *testcerts.Leaf
		wantErr string
	}{
		{name: "old CA trusted", trust: oldCA, client: oldCA.Issue("spiffe://mesh.local/client")},
		{name: "default SAN matcher applies", trust: oldCA, client: oldCA.Issue("spiffe://mesh.local/other"), wantErr: "subject alternative names [URI:spiffe://mesh.local/other IP:127.0.0.1] match none of [URI:exact spiffe://mesh.local/client]"},
		{name: "new CA not yet trusted", trust: oldCA, client: newCA.Issue("spiffe://mesh.local/client"), wantErr: "unknown authority"},
		{name: "bundle rotated: new CA trusted", trust: newCA, client: newCA.Issue("spiffe://mesh.local/client")},
		{name: "bundle rotated: old CA refused", trust: newCA, client: oldCA.Issue("spiffe://mesh.local/client"), wantErr: "unknown authority"},
	}
	for _, tt := range tests { // in order: the bundle rotates midway
		trust(tt.trust)
		err := try(tt.client)
		if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: handshake error %v, want %q", tt.name, err, tt.wantErr)
		}
	}
}

// A file-backed source no configuration uses any more is dropped by the
// watcher (xDS updates must not pile up pollers).
func TestFileWatcherForgetsUnusedSources(t *testing.T) {
	t.Parallel()
	leaf := testcerts.NewCA("mesh").Issue("spiffe://mesh.local/a")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, leaf.CertPEM, 0o600)
	os.WriteFile(keyFile, leaf.KeyPEM, 0o600)
	store := NewStore(StoreOptions{FilePollInterval: time.Millisecond})
	defer store.Close()
	file := func(p string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: p}}
	}
	for range 3 {
		if _, err := store.DecodeServer(socket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: file(certFile), PrivateKey: file(keyFile)}}}})); err != nil {
			t.Fatal(err)
		}
	}
	watched := func() int {
		store.watcher.mu.Lock()
		defer store.watcher.mu.Unlock()
		return len(store.watcher.sources)
	}
	deadline := time.Now().Add(10 * time.Second)
	for watched() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d unused sources still watched", watched())
		}
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNoResumptionAcrossSecretChanges: a TLS session made before the
// server's secrets changed is not resumed after (the session would carry
// the client's certificate past a trust bundle that may no longer accept
// it — a root rotation's dropped root); before the change it is.
func TestNoResumptionAcrossSecretChanges(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	store := NewStore(StoreOptions{CheckSDS: func(*corev3.ConfigSource) error { return nil }})
	defer store.Close()
	sds := &tlsv3.SdsSecretConfig{Name: "server-cert", SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
	srv, err := store.DecodeServer(socket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds}}}))
	if err != nil {
		t.Fatal(err)
	}
	set := func(id string) {
		if err := store.ApplySDS(map[string]*tlsv3.Secret{"server-cert": {Name: "server-cert",
			Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: certOf(ca.Issue(id))}}}); err != nil {
			t.Fatal(err)
		}
	}
	set("spiffe://mesh.local/one")
	addr, results, _ := serve(t, srv)
	cfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	dial := func() (resumed bool, id string) {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := <-results; err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x")) // TLS 1.3 tickets arrive after the handshake
		io.ReadFull(c, make([]byte, 1))
		cs := c.ConnectionState()
		return cs.DidResume, PeerIdentity(cs.PeerCertificates[0])
	}
	if resumed, _ := dial(); resumed {
		t.Fatal("the first connection resumed")
	}
	if resumed, _ := dial(); !resumed {
		t.Fatal("no resumption while the secrets stayed the same")
	}
	set("spiffe://mesh.local/two")
	resumed, id := dial()
	if resumed || id != "spiffe://mesh.local/two" {
		t.Fatalf("after the secrets changed: resumed %v with %s, want a full handshake with the new certificate", resumed, id)
	}
}
