package upstream

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

func edsCluster(name, service string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(50e6),
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			ServiceName: service,
			EdsConfig:   &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		},
	}
}

func assignment(name string, addrs ...string) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for _, a := range addrs {
		host, portStr, _ := net.SplitHostPort(a)
		port, _ := strconv.Atoi(portStr)
		cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
				}}},
			}},
		})
	}
	return cla
}

func TestEDSCluster(t *testing.T) {
	t.Parallel()
	c, err := Build(edsCluster("web", ""), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.EDSServiceName(); got != "web" {
		t.Errorf("EDSServiceName() = %q, want the cluster name", got)
	}
	if c.EDSConfig().GetAds() == nil {
		t.Errorf("EDSConfig() = %v, want ads", c.EDSConfig())
	}

	// Warming: no assignment yet, so Dial waits for it until connect_timeout.
	select {
	case <-c.Ready():
		t.Fatal("EDS cluster ready before its first assignment")
	default:
	}
	if _, err := c.Dial(context.Background()); err == nil || !strings.Contains(err.Error(), "waiting for") {
		t.Errorf("Dial while warming: %v", err)
	}

	b := newBackend(t)
	if err := c.UpdateLoadAssignment(assignment("web", b.addr)); err != nil {
		t.Fatal(err)
	}
	<-c.Ready()
	conn, err := c.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()

	// A bad assignment changes nothing.
	err = c.UpdateLoadAssignment(assignment("web", "db.internal:5432"))
	if err == nil || !strings.Contains(err.Error(), `ClusterLoadAssignment "web"`) || !strings.Contains(err.Error(), "is not an IP address") {
		t.Errorf("bad assignment: %v", err)
	}
	if eps := c.Endpoints(); len(eps) != 1 || eps[0].Addr != b.addr {
		t.Errorf("endpoints after a rejected update = %+v", eps)
	}

	// An empty assignment leaves no endpoint.
	if err := c.UpdateLoadAssignment(assignment("web")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Dial(context.Background()); !errors.Is(err, ErrNoHealthyEndpoint) {
		t.Errorf("Dial with no endpoints: %v", err)
	}
}

func TestUpdateLoadAssignmentOnlyForEDS(t *testing.T) {
	t.Parallel()
	c, err := Build(&clusterv3.Cluster{Name: "s", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.UpdateLoadAssignment(assignment("s")); err == nil {
		t.Error("a STATIC cluster took an EDS update")
	}
	if c.EDSServiceName() != "" || c.EDSConfig() != nil {
		t.Error("a STATIC cluster reports EDS settings")
	}
}
