// Package plugins is the Go SDK for Sift's protocol-sniffer plugins: separate
// executables that teach sift-proxy new protocols without rebuilding it.
// A plugin is a main package with one type implementing Sniffer:
//
//	type redis struct{}
//
//	func (redis) Info() plugins.Info {
//		return plugins.Info{Name: "redis", Version: "1.0.0", Protocols: []string{"redis"}, MaxBytes: 64}
//	}
//
//	func (redis) Sniff(data []byte, atEOF bool) plugins.Result { ... }
//
//	func main() { plugins.Serve(redis{}) }
//
// sift-proxy starts the executable (hashicorp/go-plugin: a handshake on
// stdout, then gRPC over a local socket), asks Info once, and calls Sniff for
// every read round of every connection whose verdict its built-in sniffers
// left open, concurrently. Replay runs a Sniffer the way the host does, for
// tests against captured bytes. The wire protocol and the host's contract:
// docs/plugins.md.
package plugins

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	snifferv1 "github.com/siftmesh/sift/api/sift/plugins/sniffer/v1"
)

// APIVersion is the plugin API this SDK speaks (the sniffer.v1 protobuf
// package). go-plugin's handshake negotiates it: a host and a plugin that
// share no version refuse each other with an error naming both.
const APIVersion = 1

// Handshake is the go-plugin handshake of Sift's sniffer plugins. The magic
// cookie only tells a person who runs a plugin by hand that it is not a
// program to run directly.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  APIVersion,
	MagicCookieKey:   "SIFT_SNIFFER_PLUGIN",
	MagicCookieValue: "d1b6a2e0-sift-protocol-sniffer",
}

// PluginName is the name of the sniffer service in go-plugin's plugin set.
const PluginName = "sniffer"

// Verdict is a sniffer's answer about the bytes it was shown.
type Verdict uint8

const (
	// NeedMore: the bytes so far are a valid prefix of the protocol; more
	// are needed to decide.
	NeedMore Verdict = iota
	// Match: the bytes are the protocol.
	Match
	// NoMatch: the bytes cannot be the protocol.
	NoMatch
)

func (v Verdict) String() string {
	switch v {
	case NeedMore:
		return "NeedMore"
	case Match:
		return "Match"
	case NoMatch:
		return "NoMatch"
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// Result is a sniffer's verdict with what it learned.
type Result struct {
	Verdict Verdict
	// Protocol is set on Match: one of Info.Protocols.
	Protocol string
	// Attributes are set on Match, optionally: what the sniffer learned
	// (a user or database name), recorded with the detection.
	Attributes map[string]string
	// Need is, on NeedMore, the total length at which the answer could
	// change, when known; 0 means one more byte.
	Need int
}

// Info describes a sniffer.
type Info struct {
	// Name names the sniffer in logs, metrics and detection records.
	Name string
	// Version is the plugin's own version, for logs.
	Version string
	// Protocols are the names its matches report: what filter chains select
	// with filter_chain_match.application_protocols.
	Protocols []string
	// MaxBytes is the most bytes it needs to decide (0: the host's limit).
	MaxBytes int
	// ServerFirst: the sniffer also judges a server's greeting (it
	// implements ServerSniffer; Serve sets this itself).
	ServerFirst bool
}

// ServerSniffer is implemented by sniffers of server-speaks-first protocols
// (MySQL, SMTP, …): when a client stays silent and the server speaks first,
// sift-proxy shows the server's first bytes to SniffServer, once; a Match
// names the connection's protocol (and can select its filter chain), as a
// client-side match does. The same rules as Sniff apply; NeedMore counts as
// NoMatch.
type ServerSniffer interface {
	SniffServer(greeting []byte) Result
}

// Sniffer recognises one protocol from a connection's first bytes.
//
// Sniff is called with all the bytes the client has sent so far (not only
// the new ones), concurrently for many connections; it must not retain
// data. With atEOF true no more bytes will come and it must decide. A
// decision is final: once Sniff answers Match or NoMatch for some bytes, it
// must answer the same for every longer input that starts with them. It
// should answer within microseconds: the host gives each call a budget
// (default 25ms) and takes a late answer as NoMatch.
type Sniffer interface {
	Info() Info
	Sniff(data []byte, atEOF bool) Result
}

// Serve serves s to the sift-proxy that started this process and returns
// when the host goes away. It must be the last call of main. A process
// started by hand (not by sift-proxy) gets an explanation and exit status 1.
//
// The plugin exits by itself when sift-proxy dies without stopping it
// (even on SIGKILL): it watches for being re-parented.
func Serve(s Sniffer) {
	go exitWithParent(os.Getppid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{APIVersion: {PluginName: &GRPCPlugin{Impl: s}}},
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr, JSONFormat: true}),
	})
}

// exitWithParent ends the process once its parent is gone (it is then
// re-parented to init or a subreaper).
func exitWithParent(parent int) {
	for range time.Tick(500 * time.Millisecond) {
		if os.Getppid() != parent {
			os.Exit(0)
		}
	}
}

// GRPCPlugin is the go-plugin plugin of the sniffer service: on the plugin
// side it serves Impl, on the host side it returns a *Client.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Sniffer // plugin side only
}

// GRPCServer implements plugin.GRPCPlugin.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(&serviceDesc, &server{impl: p.Impl})
	return nil
}

// GRPCClient implements plugin.GRPCPlugin.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Client{conn: c}, nil
}

// maxData bounds the bytes a Sniff request may carry (the detect filter's
// own cap is far lower).
const maxData = 1 << 20

// server adapts a Sniffer to the gRPC service.
type server struct{ impl Sniffer }

func (s *server) info(context.Context, *snifferv1.InfoRequest) (*snifferv1.InfoResponse, error) {
	in := s.impl.Info()
	_, serverFirst := s.impl.(ServerSniffer)
	return &snifferv1.InfoResponse{Name: in.Name, Version: in.Version, Protocols: in.Protocols, MaxBytes: uint32(max(in.MaxBytes, 0)),
		ServerFirst: serverFirst}, nil
}

func (s *server) sniff(_ context.Context, req *snifferv1.SniffRequest) (*snifferv1.SniffResponse, error) {
	if len(req.GetData()) > maxData {
		return nil, fmt.Errorf("sniff: %d bytes is more than %d", len(req.GetData()), maxData)
	}
	var r Result
	if req.GetFromServer() {
		ss, ok := s.impl.(ServerSniffer)
		if !ok {
			return &snifferv1.SniffResponse{Verdict: snifferv1.SniffResponse_NO_MATCH}, nil
		}
		r = ss.SniffServer(req.GetData())
	} else {
		r = s.impl.Sniff(req.GetData(), req.GetAtEof())
	}
	resp := &snifferv1.SniffResponse{Protocol: r.Protocol, Attributes: r.Attributes, Need: uint32(max(r.Need, 0))}
	switch r.Verdict {
	case Match:
		resp.Verdict = snifferv1.SniffResponse_MATCH
	case NoMatch:
		resp.Verdict = snifferv1.SniffResponse_NO_MATCH
	default:
		resp.Verdict = snifferv1.SniffResponse_NEED_MORE
	}
	return resp, nil
}

// serviceDesc is sift.plugins.sniffer.v1.Sniffer, written by hand (the
// messages are generated; the two unary methods need no generated stubs).
var serviceDesc = grpc.ServiceDesc{
	ServiceName: "sift.plugins.sniffer.v1.Sniffer",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Info", Handler: unary(func(s *server, ctx context.Context, req *snifferv1.InfoRequest) (any, error) { return s.info(ctx, req) })},
		{MethodName: "Sniff", Handler: unary(func(s *server, ctx context.Context, req *snifferv1.SniffRequest) (any, error) {
			return s.sniff(ctx, req)
		})},
	},
	Metadata: "sift/plugins/sniffer/v1/sniffer.proto",
}

// unary builds a grpc method handler for a server method taking *Req.
func unary[Req any](call func(*server, context.Context, *Req) (any, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		req := new(Req)
		if err := dec(req); err != nil {
			return nil, err
		}
		s := srv.(*server)
		if interceptor == nil {
			return call(s, ctx, req)
		}
		return interceptor(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/sift.plugins.sniffer.v1.Sniffer/"}, func(ctx context.Context, req any) (any, error) {
			return call(s, ctx, req.(*Req))
		})
	}
}

// Client calls a plugin's sniffer service (the host side). Safe for
// concurrent use.
type Client struct{ conn *grpc.ClientConn }

// Info asks the plugin for its Info.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var resp snifferv1.InfoResponse
	if err := c.conn.Invoke(ctx, "/sift.plugins.sniffer.v1.Sniffer/Info", &snifferv1.InfoRequest{}, &resp); err != nil {
		return Info{}, err
	}
	return Info{Name: resp.GetName(), Version: resp.GetVersion(), Protocols: resp.GetProtocols(), MaxBytes: int(min(resp.GetMaxBytes(), maxData)),
		ServerFirst: resp.GetServerFirst()}, nil
}

// Sniff asks the plugin about the client's data. It blocks until the
// answer or ctx's end.
func (c *Client) Sniff(ctx context.Context, data []byte, atEOF bool) (Result, error) {
	return c.sniff(ctx, &snifferv1.SniffRequest{Data: data, AtEof: atEOF})
}

// SniffServer asks the plugin about a server's greeting.
func (c *Client) SniffServer(ctx context.Context, greeting []byte) (Result, error) {
	return c.sniff(ctx, &snifferv1.SniffRequest{Data: greeting, FromServer: true})
}

func (c *Client) sniff(ctx context.Context, req *snifferv1.SniffRequest) (Result, error) {
	var resp snifferv1.SniffResponse
	if err := c.conn.Invoke(ctx, "/sift.plugins.sniffer.v1.Sniffer/Sniff", req, &resp); err != nil {
		return Result{}, err
	}
	return resultOf(&resp)
}

// resultOf reads a plugin's answer: an unknown verdict is an error, and
// Need is capped at maxData.
func resultOf(resp *snifferv1.SniffResponse) (Result, error) {
	r := Result{Protocol: resp.GetProtocol(), Attributes: resp.GetAttributes(), Need: int(min(resp.GetNeed(), maxData))}
	switch resp.GetVerdict() {
	case snifferv1.SniffResponse_MATCH:
		r.Verdict = Match
	case snifferv1.SniffResponse_NO_MATCH:
		r.Verdict = NoMatch
	case snifferv1.SniffResponse_NEED_MORE:
		r.Verdict = NeedMore
	default:
		return Result{}, fmt.Errorf("sniff: unknown verdict %d", resp.GetVerdict())
	}
	return r, nil
}

// Replay runs s over captured bytes the way sift-proxy does: it shows s the
// first bytes, then longer prefixes as s asks for them (Need, or one more
// byte), up to maxBytes (≤ 0: all of captured), and at the end of captured
// asks with atEOF. It returns the first Match or NoMatch, or NeedMore when
// maxBytes ran out first. It also checks that s keeps its decisions: a
// Match or NoMatch that changes on a longer prefix is reported as an error.
func Replay(s Sniffer, captured []byte, maxBytes int) (Result, error) {
	if maxBytes <= 0 || maxBytes > len(captured) {
		maxBytes = len(captured)
	}
	n := min(1, maxBytes)
	for {
		atEOF := n == len(captured)
		r := s.Sniff(captured[:n], atEOF)
		if r.Verdict != NeedMore {
			// Decisions are final: the whole input must give the same answer.
			if all := s.Sniff(captured[:maxBytes], maxBytes == len(captured)); all.Verdict != r.Verdict || all.Protocol != r.Protocol {
				return r, fmt.Errorf("replay: %v %q after %d bytes, but %v %q after %d", r.Verdict, r.Protocol, n, all.Verdict, all.Protocol, maxBytes)
			}
			return r, nil
		}
		if atEOF {
			return r, fmt.Errorf("replay: NeedMore with atEOF after %d bytes: a sniffer must decide at the end of the stream", n)
		}
		if n >= maxBytes {
			return r, nil
		}
		next := r.Need
		if next <= n {
			next = n + 1
		}
		n = min(next, maxBytes)
	}
}
