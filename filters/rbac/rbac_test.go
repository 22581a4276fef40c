package rbac

import (
	"net/netip"
	"strings"
	"testing"

	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/reactor"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

func parse(t *testing.T, js string) *netrbacv3.RBAC {
	t.Helper()
	cfg := &netrbacv3.RBAC{}
	if err := protojson.Unmarshal([]byte(js), cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func conn(peer string, port uint16) *filters.ConnInfo {
	return &filters.ConnInfo{TLS: peer != "", PeerIdentity: peer,
		LocalAddr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port), RemoteAddr: netip.MustParseAddrPort("10.1.2.3:5555")}
}

func TestAllow(t *testing.T) {
	t.Parallel()
	const (
		web    = "spiffe://mesh.local/ns/web/sa/web"
		db     = "spiffe://mesh.local/ns/db/sa/db"
		blockd = "spiffe://mesh.local/ns/blocked/sa/x"
	)
	tests := []struct {
		name string
		cfg  string
		conn *filters.ConnInfo
		want bool
	}{
		{name: "no rules: allowed", cfg: `{"statPrefix":"r"}`, conn: conn("", 80), want: true},
		{name: "allow exact principal", conn: conn(web, 80), want: true,
			cfg: `{"statPrefix":"r","rules":{"policies":{"web":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"exact":"` + web + `"}}}]}}}}`},
		{name: "allow exact principal: other denied", conn: conn(db, 80), want: false,
			cfg: `{"statPrefix":"r","rules":{"policies":{"web":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"exact":"` + web + `"}}}]}}}}`},
		{name: "allow exact principal: plaintext denied", conn: conn("", 80), want: false,
			cfg: `{"statPrefix":"r","rules":{"policies":{"web":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"exact":"` + web + `"}}}]}}}}`},
		{name: "deny by namespace prefix", conn: conn(blockd, 80), want: false,
			cfg: `{"statPrefix":"r","rules":{"action":"DENY","policies":{"b":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"prefix":"spiffe://mesh.local/ns/blocked/"}}}]}}}}`},
		{name: "deny by namespace prefix: others allowed", conn: conn(web, 80), want: true,
			cfg: `{"statPrefix":"r","rules":{"action":"DENY","policies":{"b":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"prefix":"spiffe://mesh.local/ns/blocked/"}}}]}}}}`},
		{name: "regex on service account", conn: conn(db, 80), want: true,
			cfg: `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"safeRegex":{"regex":"spiffe://mesh\\.local/ns/[a-z]+/sa/db"}}}}]}}}}`},
		{name: "any authenticated", conn: conn(db, 80), want: true,
			cfg: `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"authenticated":{}}]}}}}`},
		{name: "destination port and principal", conn: conn(web, 8080), want: false,
			cfg: `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"destinationPort":80}],"principals":[{"authenticated":{"principalName":{"suffix":"/sa/web"}}}]}}}}`},
		{name: "and_ids / not_id", conn: conn(web, 80), want: true,
			cfg: `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"orRules":{"rules":[{"destinationPort":80},{"destinationPort":81}]}}],` +
				`"principals":[{"andIds":{"ids":[{"authenticated":{}},{"notId":{"authenticated":{"principalName":{"contains":"blocked"}}}}]}}]}}}}`},
		{name: "remote ip", conn: conn("", 80), want: true,
			cfg: `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"remoteIp":{"addressPrefix":"10.1.0.0","prefixLen":16}}]}}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := New(parse(t, tt.cfg), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := f.Allow(tt.conn); got != tt.want {
				t.Errorf("Allow = %v, want %v", got, tt.want)
			}
			_, ok := f.Admit(t.Context(), filters.NewDownstream(nil, nil, tt.conn, nil))
			if ok != tt.want || (ok && f.Allowed.Load() != 1) || (!ok && f.Denied.Load() != 1) {
				t.Errorf("Admit = %v; allowed %d, denied %d", ok, f.Allowed.Load(), f.Denied.Load())
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, cfg, wantErr string }{
		{"no stat prefix", `{}`, "stat_prefix: must be set"},
		{"unsupported principal", `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"header":{"name":"x"}}]}}}}`,
			"rules.policies[p].principals[0].header: not supported by Sift"},
		{"empty principals", `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"any":true}]}}}}`,
			"rules.policies[p]: permissions and principals must each have at least one entry"},
		{"bad regex", `{"statPrefix":"r","rules":{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"safeRegex":{"regex":"("}}}}]}}}}`,
			"rules.policies[p].principals[0].authenticated.principal_name.safe_regex.regex"},
		{"continuous", `{"statPrefix":"r","enforcementType":"CONTINUOUS"}`, "enforcement_type: CONTINUOUS is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(parse(t, tt.cfg), nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
