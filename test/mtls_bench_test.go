package test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/internal/testcerts"
	"github.com/siftmesh/sift/server"
)

// benchProxy runs sift-proxy in-process for a benchmark (errors only logged).
func benchProxy(b *testing.B, yaml string, vars map[string]string) *server.Server {
	b.Helper()
	for k, v := range vars {
		yaml = strings.ReplaceAll(yaml, "{{"+k+"}}", v)
	}
	bs, err := bootstrap.Parse([]byte(yaml))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := server.Build(bs, server.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

// benchBackend accepts connections (TLS when cfg is set) and serves each
// with handle.
func benchBackend(b *testing.B, cfg *tls.Config, handle func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { handle(c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

const benchYAML = `
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: {{filters}}, {{downstream}}}]
  clusters:
{{clusters}}`

func downstreamTLS(ca *testcerts.CA, leaf *testcerts.Leaf) string {
	return `transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, ` +
		`require_client_certificate: true, common_tls_context: {tls_params: {tls_minimum_protocol_version: TLSv1_3}, ` +
		`tls_certificates: [{certificate_chain: {inline_string: ` + q(leaf.CertPEM) + `}, private_key: {inline_string: ` + q(leaf.KeyPEM) + `}}], ` +
		`validation_context: {trusted_ca: {inline_string: ` + q(ca.CertPEM) + `}}}}}`
}

// BenchmarkMTLSHandshakes: new mTLS connections per second through one
// proxy (TLS 1.3, ECDSA P-256, client certificate verified), each echoing
// one byte from the backend over plain TCP.
func BenchmarkMTLSHandshakes(b *testing.B) {
	ca := testcerts.NewCA("mesh")
	srvLeaf, clLeaf := ca.Issue(idServer), ca.Issue(idClient)
	backend := benchBackend(b, nil, func(c net.Conn) { io.Copy(c, c) })
	p := benchProxy(b, benchYAML, map[string]string{"filters": tcpProxy("echo"), "downstream": downstreamTLS(ca, srvLeaf),
		"clusters": staticCluster("echo", backend)})
	addr := p.Listeners().Get("in").Addr().String()
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{clLeaf.TLS()},
		ClientSessionCache: nil}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 1)
		for pb.Next() {
			c, err := tls.Dial("tcp", addr, cfg)
			if err != nil {
				b.Error(err)
				return
			}
			c.Write([]byte{'x'})
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Error(err)
			}
			c.Close()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkOpaqueThroughput: bytes per second of one opaque connection
// through one proxy: plaintext both sides (splice), TLS terminated
// downstream (decrypt, user-space copy), TLS both sides (decrypt and
// re-encrypt: a mesh hop).
func BenchmarkOpaqueThroughput(b *testing.B) {
	ca := testcerts.NewCA("mesh")
	srvLeaf, clLeaf := ca.Issue(idServer), ca.Issue(idClient)
	sink := func(c net.Conn) { io.Copy(io.Discard, c) }
	for _, mode := range []string{"plaintext", "tls-downstream", "tls-both"} {
		b.Run(mode, func(b *testing.B) {
			plainSink := benchBackend(b, nil, sink)
			tlsSink := benchBackend(b, &tls.Config{Certificates: []tls.Certificate{srvLeaf.TLS()}}, sink)
			vars := map[string]string{"filters": tcpProxy("sink"), "downstream": "name: c", "clusters": staticCluster("sink", plainSink)}
			if mode != "plaintext" {
				vars["downstream"] = downstreamTLS(ca, srvLeaf)
			}
			if mode == "tls-both" {
				vars["clusters"] = withFields(staticCluster("sink", tlsSink), upstreamTLS(ca.CertPEM, clLeaf.CertPEM, clLeaf.KeyPEM, idServer))
			}
			p := benchProxy(b, benchYAML, vars)
			addr := p.Listeners().Get("in").Addr().String()
			var c net.Conn
			var err error
			if mode == "plaintext" {
				c, err = net.Dial("tcp", addr)
			} else {
				c, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1",
					Certificates: []tls.Certificate{clLeaf.TLS()}, MinVersion: tls.VersionTLS13})
			}
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			chunk := make([]byte, 1<<20)
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
