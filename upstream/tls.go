package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/siftmesh/sift/filters/mtls"
)

// transportMatchKey is the endpoint metadata namespace Envoy's
// transport_socket_matches read.
const transportMatchKey = "envoy.transport_socket_match"

// transports are a cluster's transport sockets: index 0 is transport_socket
// (nil: plaintext), index i+1 is transport_socket_matches[i]. Immutable.
type transports struct {
	sockets []*mtls.Client
	matches []*structpb.Struct
}

// buildTransports decodes transport_socket and transport_socket_matches.
func (c *Cluster) buildTransports(pb *clusterv3.Cluster, secrets *mtls.Store) error {
	decode := func(field string, ts interface {
		GetName() string
	}, get func() (*mtls.Client, error)) (*mtls.Client, error) {
		if secrets == nil {
			return nil, fmt.Errorf("%s: no secret store (a TLS transport socket needs a server)", field)
		}
		t, err := get()
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", field, ts.GetName(), err)
		}
		return t, nil
	}
	c.tls.sockets = []*mtls.Client{nil}
	if ts := pb.GetTransportSocket(); ts != nil {
		t, err := decode("transport_socket", ts, func() (*mtls.Client, error) { return secrets.DecodeClient(ts) })
		if err != nil {
			return err
		}
		c.tls.sockets[0] = t
	}
	if n := len(pb.GetTransportSocketMatches()); n > 250 {
		return fmt.Errorf("transport_socket_matches: %d entries: at most 250 are supported", n)
	}
	for i, m := range pb.GetTransportSocketMatches() {
		field := fmt.Sprintf("transport_socket_matches[%d]", i)
		if m.GetTransportSocket() == nil {
			return fmt.Errorf("%s.transport_socket: must be set", field)
		}
		t, err := decode(field+".transport_socket", m.GetTransportSocket(), func() (*mtls.Client, error) {
			return secrets.DecodeClient(m.GetTransportSocket())
		})
		if err != nil {
			return err
		}
		c.tls.sockets = append(c.tls.sockets, t)
		c.tls.matches = append(c.tls.matches, m.GetMatch())
	}
	return nil
}

// of returns transport socket i (nil: plaintext).
func (t *transports) of(i uint8) *mtls.Client {
	if int(i) < len(t.sockets) {
		return t.sockets[i]
	}
	return nil
}

// assign sets each endpoint's transport socket: the first of
// transport_socket_matches whose match is a subset of the endpoint's
// metadata filter_metadata["envoy.transport_socket_match"], else
// transport_socket. specs are in la's order (parseAssignment's).
func (t *transports) assign(specs []endpointSpec, la *endpointv3.ClusterLoadAssignment) {
	if len(t.matches) == 0 {
		return
	}
	k := 0
	for _, lle := range la.GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			if k >= len(specs) {
				return
			}
			specs[k].ts = t.match(lbe.GetMetadata().GetFilterMetadata()[transportMatchKey])
			k++
		}
	}
}

func (t *transports) match(md *structpb.Struct) uint8 {
	for i, m := range t.matches {
		ok := true
		for key, want := range m.GetFields() {
			got, has := md.GetFields()[key]
			if !has || !proto.Equal(got, want) {
				ok = false
				break
			}
		}
		if ok {
			return uint8(i + 1)
		}
	}
	return 0
}

// TLSSources returns the secret sources of the cluster's transport sockets:
// the cluster warms until each has a value.
func (c *Cluster) TLSSources() []*mtls.Source {
	var out []*mtls.Source
	for _, t := range c.tls.sockets {
		if t != nil {
			out = append(out, t.Sources()...)
		}
	}
	return out
}

// TLS reports whether any of the cluster's endpoints is reached over TLS.
func (c *Cluster) TLS() bool {
	for _, t := range c.tls.sockets {
		if t != nil {
			return true
		}
	}
	return false
}

// transportOf returns the transport socket index of the endpoint at addr.
func (c *Cluster) transportOf(addr string) uint8 {
	if len(c.tls.sockets) < 2 {
		return 0
	}
	if s := c.snap.Load(); s != nil {
		for _, h := range s.hosts {
			if h.ep.Addr == addr {
				return h.ts
			}
		}
	}
	return 0
}

// handshake runs the TLS client handshake on a new connection within the
// connect deadline (dctx; connect_timeout covers TCP and TLS, as Envoy's
// does). It closes nc on failure and returns a *DialError.
func (c *Cluster) handshake(dctx, ctx context.Context, t *mtls.Client, nc net.Conn, addr string, alpn []string) (net.Conn, mtls.Identity, error) {
	var err error
	for _, s := range t.Sources() {
		select {
		case <-s.Ready():
		case <-dctx.Done():
			err = fmt.Errorf("waiting for secret %q: %w", s.Name(), dctx.Err())
		}
		if err != nil {
			break
		}
	}
	var tc net.Conn
	var id mtls.Identity
	if err == nil {
		tc, id, err = t.Handshake(dctx, nc, alpn)
	}
	if err != nil {
		nc.Close()
		de := &DialError{Cluster: c.cfg.name, Addr: addr, Err: err}
		if ctx.Err() == nil && errors.Is(dctx.Err(), context.DeadlineExceeded) {
			de.connectTimeout = c.cfg.connectTimeout
		}
		return nil, id, de
	}
	return tc, id, nil
}
