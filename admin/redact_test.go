package admin

import (
	"encoding/base64"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestRedact(t *testing.T) {
	t.Parallel()
	inline := func(s string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
	}
	tlsCtx := &tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{
			{CertificateChain: inline("PUBLIC-CERT"), PrivateKey: inline("SECRET-KEY"), Password: inline("SECRET-PASSWORD")},
		}},
		SessionTicketKeysType: &tlsv3.DownstreamTlsContext_SessionTicketKeys{SessionTicketKeys: &tlsv3.TlsSessionTicketKeys{
			Keys: []*corev3.DataSource{{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("SECRET-TICKET")}}},
		}},
	}
	ts, err := anypb.New(tlsCtx)
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{Name: "in", FilterChains: []*listenerv3.FilterChain{{
		TransportSocket: &corev3.TransportSocket{Name: "tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ts}},
	}}}
	la, err := anypb.New(l)
	if err != nil {
		t.Fatal(err)
	}
	dump := &adminv3.ListenersConfigDump{StaticListeners: []*adminv3.ListenersConfigDump_StaticListener{{Listener: la}}}
	before := proto.Clone(tlsCtx)
	if err := Redact(dump); err != nil {
		t.Fatal(err)
	}
	js := protojson.Format(dump)
	// Bytes print as base64.
	for _, secret := range []string{"SECRET-KEY", "SECRET-PASSWORD", base64.StdEncoding.EncodeToString([]byte("SECRET-TICKET"))} {
		if strings.Contains(js, secret) {
			t.Errorf("dump shows %s:\n%s", secret, js)
		}
	}
	if !strings.Contains(js, "PUBLIC-CERT") || !strings.Contains(js, Redacted) || !strings.Contains(js, `"name": "in"`) {
		t.Errorf("dump lost what is not secret, or did not mark the redaction:\n%s", js)
	}
	if !proto.Equal(before, tlsCtx) {
		t.Error("Redact changed the message the Any was packed from")
	}
}
