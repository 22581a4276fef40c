package route

import (
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// FuzzDecode feeds arbitrary RouteConfiguration protos — what an RDS
// response carries — to Decode: a table or an error, never a panic.
func FuzzDecode(f *testing.F) {
	for _, js := range []string{
		`{"name":"r","virtualHosts":[{"name":"all","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`,
		`{"virtualHosts":[{"name":"v","domains":["a.example.com","*.b.example.com"],"retryPolicy":{"retryOn":"5xx,reset","numRetries":2,"perTryTimeout":"0.5s"},
		  "routes":[{"match":{"safeRegex":{"regex":"^/api/[0-9]+$"},"headers":[{"name":"x-v","stringMatch":{"exact":"2"}}]},
		  "route":{"weightedClusters":{"clusters":[{"name":"a","weight":1},{"name":"b","weight":3}]},"timeout":"2s","prefixRewrite":"/v2/"},
		  "requestHeadersToAdd":[{"header":{"key":"x-a","value":"1"}}]},
		  {"match":{"path":"/r"},"redirect":{"hostRedirect":"x.example.com"}},
		  {"match":{"prefix":"/d"},"directResponse":{"status":503,"body":{"inlineString":"no"}}}]}]}`,
		`{"virtualHosts":[{"name":"v","domains":["*"],"routes":[{"match":{"safeRegex":{"regex":"(unclosed"}},"route":{"cluster":"c"}}]}]}`,
	} {
		rc := &routev3.RouteConfiguration{}
		if err := protojson.Unmarshal([]byte(js), rc); err != nil {
			f.Fatalf("seed %s: %v", js, err)
		}
		b, err := proto.Marshal(rc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rc := &routev3.RouteConfiguration{}
		if proto.Unmarshal(data, rc) != nil {
			return
		}
		tbl, err := Decode(rc)
		if err == nil && tbl == nil {
			t.Fatal("Decode returned neither a table nor an error")
		}
	})
}
