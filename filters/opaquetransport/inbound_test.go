package opaquetransport_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	opaquetransportv1 "github.com/siftmesh/sift/api/sift/filters/network/opaque_transport/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/opaquetransport"
	"github.com/siftmesh/sift/filters/opaquetransport/header"
	"github.com/siftmesh/sift/filters/rbac"
	"github.com/siftmesh/sift/internal/reactor"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

// echoServer echoes each connection on 127.0.0.1 and half-closes at EOF.
func echoServer(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// serveOne accepts one real connection and serves it with in; it returns
// the client side and a channel closed when ServeConn returned.
func serveOne(t *testing.T, in filters.NetworkFilter) (*net.TCPConn, <-chan struct{}) {
	return serveOneAs(t, in, "")
}

// serveOneAs is serveOne for a client whose certificate proved identity.
func serveOneAs(t *testing.T, in filters.NetworkFilter, identity string) (*net.TCPConn, <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.ServeConn(context.Background(), filters.NewDownstream(s, nil, &filters.ConnInfo{PeerIdentity: identity}, nil))
	}()
	t.Cleanup(func() { <-done })
	return c.(*net.TCPConn), done
}

func newInbound(t *testing.T, cfg *opaquetransportv1.Inbound) *opaquetransport.Inbound {
	t.Helper()
	in, err := opaquetransport.NewInbound(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestInboundForwardsAfterTheHeader(t *testing.T) {
	t.Parallel()
	port := echoServer(t)
	in := newInbound(t, &opaquetransportv1.Inbound{StatPrefix: "inbound", AllowedPorts: []uint32{uint32(port)}})
	c, _ := serveOne(t, in)
	hdr, err := header.Append(nil, header.Header{Port: port, ServerFirst: true, Protocol: "opaque"})
	if err != nil {
		t.Fatal(err)
	}
	// The header and the first payload in one write, as the outbound side sends them.
	msg := "hello through the mesh"
	c.Write(append(hdr, msg...))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != msg {
		t.Fatalf("echo = %q, %v; want %q then EOF (half-close carried both ways)", got, err, msg)
	}
}

func TestInboundRefuses(t *testing.T) {
	t.Parallel()
	port := echoServer(t)
	good, _ := header.Append(nil, header.Header{Port: port})
	other, _ := header.Append(nil, header.Header{Port: port + 1})
	tests := []struct {
		name string
		send []byte
	}{
		{name: "plaintext HTTP instead of a header", send: []byte("GET / HTTP/1.1\r\n\r\n")},
		{name: "unknown version", send: append([]byte("SIFT\x07"), good[5:]...)},
		{name: "port not allowed", send: other},
		{name: "short header then silence", send: good[:6]},
	}
	in := newInbound(t, &opaquetransportv1.Inbound{StatPrefix: "inbound", AllowedPorts: []uint32{uint32(port)},
		HeaderTimeout: durationpb.New(200 * time.Millisecond)})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, done := serveOne(t, in)
			c.Write(tt.send)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the connection was not closed")
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, _ := io.ReadAll(c); len(b) != 0 {
				t.Errorf("read %q from a refused connection", b)
			}
		})
	}
}

func TestInboundPortAuthorization(t *testing.T) {
	t.Parallel()
	open, guarded := echoServer(t), echoServer(t)
	in := newInbound(t, &opaquetransportv1.Inbound{StatPrefix: "authz-test", PortAuthorizations: []*opaquetransportv1.Inbound_PortAuthorization{{
		Port: uint32(guarded), Principals: []string{"spiffe://td/ns/shop/sa/client"}, PrincipalPrefixes: []string{"spiffe://td/ns/ops/sa/"},
	}}})
	for _, tt := range []struct {
		identity string
		port     uint16
		allowed  bool
	}{
		{"spiffe://td/ns/shop/sa/client", guarded, true},
		{"spiffe://td/ns/ops/sa/anyone", guarded, true},
		{"spiffe://td/ns/shop/sa/intruder", guarded, false},
		{"spiffe://td/ns/shop/sa/client-2", guarded, false},
		{"", guarded, false},
		{"spiffe://td/ns/shop/sa/intruder", open, true}, // no rules for the port
	} {
		c, done := serveOneAs(t, in, tt.identity)
		hdr, _ := header.Append(nil, header.Header{Port: tt.port})
		c.Write(append(hdr, "ping"...))
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(c)
		if (string(got) == "ping") != tt.allowed {
			t.Errorf("%q to port %d: read %q, want allowed=%v", tt.identity, tt.port, got, tt.allowed)
		}
		<-done
	}
	if c := rbac.CountsFor("authz-test"); c.Allowed.Load() != 2 || c.Denied.Load() != 3 {
		t.Errorf("counted %d allowed, %d denied; want 2, 3", c.Allowed.Load(), c.Denied.Load())
	}
}

func TestNewInboundErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     *opaquetransportv1.Inbound
		wantErr string
	}{
		{name: "no stat prefix", cfg: &opaquetransportv1.Inbound{}, wantErr: "stat_prefix: must be set"},
		{name: "bad address", cfg: &opaquetransportv1.Inbound{StatPrefix: "x", Address: "localhost"}, wantErr: `address: "localhost" is not an IP address`},
		{name: "port 0", cfg: &opaquetransportv1.Inbound{StatPrefix: "x", AllowedPorts: []uint32{80, 0}}, wantErr: "allowed_ports[1]: 0 is not a port (1-65535)"},
		{name: "zero header timeout", cfg: &opaquetransportv1.Inbound{StatPrefix: "x", HeaderTimeout: durationpb.New(0)}, wantErr: "header_timeout: 0s: must be positive"},
		{name: "authorization without principals", cfg: &opaquetransportv1.Inbound{StatPrefix: "x",
			PortAuthorizations: []*opaquetransportv1.Inbound_PortAuthorization{{Port: 80}}},
			wantErr: "port_authorizations[0]: name at least one principal or principal prefix (a port nobody may reach is not served: leave it out of allowed_ports)"},
		{name: "authorization of port 0", cfg: &opaquetransportv1.Inbound{StatPrefix: "x",
			PortAuthorizations: []*opaquetransportv1.Inbound_PortAuthorization{{Principals: []string{"a"}}}},
			wantErr: "port_authorizations[0].port: 0 is not a port (1-65535)"},
		{name: "idle 0 is allowed", cfg: &opaquetransportv1.Inbound{StatPrefix: "x", IdleTimeout: durationpb.New(0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := opaquetransport.NewInbound(tt.cfg, nil)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Errorf("NewInbound() = %q, want %q", got, tt.wantErr)
			}
		})
	}
}
