package upstream

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	opaquetransportv1 "github.com/siftmesh/sift/api/sift/extensions/upstreams/opaque_transport/v1"
	"github.com/siftmesh/sift/internal/pbcheck"
)

// opaqueTransportName is the typed_extension_protocol_options key of Sift's
// opaque transport (docs/mesh-transport.md).
var opaqueTransportName = string(proto.MessageName(&opaquetransportv1.OpaqueTransport{}))

var opaquePolicy = pbcheck.Policy{
	"sift.extensions.upstreams.opaque_transport.v1.OpaqueTransport": pbcheck.Fields("port"),
}

// OpaqueTransport is a cluster's opaque-transport setting.
type OpaqueTransport struct {
	// Port is the port the peer proxy forwards to; 0: the downstream's
	// original destination port.
	Port uint16
}

// parseOpaqueTransport reads the cluster's OpaqueTransport protocol options.
func (c *config) parseOpaqueTransport(pb *clusterv3.Cluster) error {
	a, ok := pb.GetTypedExtensionProtocolOptions()[opaqueTransportName]
	if !ok {
		return nil
	}
	field := "typed_extension_protocol_options[" + opaqueTransportName + "]"
	ot := &opaquetransportv1.OpaqueTransport{}
	if err := anypb.UnmarshalTo(a, ot, proto.UnmarshalOptions{}); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if err := opaquePolicy.CheckAt(ot, field); err != nil {
		return err
	}
	if ot.GetPort() > 65535 {
		return fmt.Errorf("%s.port: %d is not a port", field, ot.GetPort())
	}
	c.opaque = &OpaqueTransport{Port: uint16(ot.GetPort())}
	return nil
}

// OpaqueTransport returns the cluster's opaque-transport setting, or nil
// when connections to it carry no header.
func (c *Cluster) OpaqueTransport() *OpaqueTransport { return c.cfg.opaque }
