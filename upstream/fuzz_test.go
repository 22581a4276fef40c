package upstream

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"
)

// FuzzBuild feeds arbitrary Cluster protos to Build: it must return a
// cluster or an error, never panic, and a built cluster must close cleanly.
func FuzzBuild(f *testing.F) {
	for _, js := range []string{
		staticCluster("c", `"lbPolicy":"LEAST_REQUEST","leastRequestLbConfig":{"choiceCount":3},`, "127.0.0.1:80", "[::1]:81"),
		staticCluster("c", `"connectTimeout":"1s","commonLbConfig":{"healthyPanicThreshold":{"value":0}},`, "127.0.0.1:80"),
		dnsCluster(`"dnsRefreshRate":"1s","dnsFailureRefreshRate":{"baseInterval":"1s"},"dnsLookupFamily":"ALL",`, "a.sift.test:80"),
		withEndpoint("", `{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.2","portValue":81}}},"loadBalancingWeight":3,"healthStatus":"DEGRADED"}`),
		`{"name":"x","type":"EDS","edsClusterConfig":{"serviceName":"s"}}`,
	} {
		b, err := proto.Marshal(clusterJSON(f, js))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pb := &clusterv3.Cluster{}
		if err := proto.Unmarshal(data, pb); err != nil {
			return
		}
		c, err := Build(pb, Options{Resolver: noDNS, Logger: quiet})
		if err != nil {
			if c != nil {
				t.Fatal("Build returned a cluster and an error")
			}
			return
		}
		_ = c.Endpoints()
		c.Close()
	})
}
