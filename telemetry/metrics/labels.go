package metrics

import (
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/siftmesh/sift/filters"
)

type netipAddrPort = netip.AddrPort

// baseLabels are on every request and connection metric, as Linkerd's proxy
// labels them.
var baseLabels = []string{"direction", "target_addr", "srv_port", "tls", "client_id", "server_id"}

// tcpLabels add Linkerd's peer: "src" for inbound (the peer is the client),
// "dst" for outbound.
var tcpLabels = append(baseLabels[:len(baseLabels):len(baseLabels)], "peer")

// cache maps a label-set key (a small comparable struct) to the counters
// resolved for it. Lookups are lock-free after the first sight of a key.
type cache struct{ m sync.Map }

// get returns the value for k, building it with build the first time.
// build may run more than once for one key under a race; one result wins.
func get[K comparable, V any](c *cache, k K, build func() V) V {
	if v, ok := c.m.Load(k); ok {
		return v.(V)
	}
	v, _ := c.m.LoadOrStore(k, build())
	return v.(V)
}

// capper admits at most max distinct values of a label; values past the cap
// are reported as LabelOther. Admitted values stay admitted.
type capper[K comparable] struct {
	m   sync.Map
	n   atomic.Int64
	max int
}

// admit reports whether v may be used as a label value.
func (c *capper[K]) admit(v K) bool {
	if _, ok := c.m.Load(v); ok {
		return true
	}
	if c.n.Add(1) > int64(c.max) {
		c.n.Add(-1)
		return false
	}
	if _, loaded := c.m.LoadOrStore(v, struct{}{}); loaded {
		c.n.Add(-1)
	}
	return true
}

// peer is what a connection's labels know about it beyond the request.
type peer struct {
	dir    string
	target netip.AddrPort // zero: unknown or past the cap
	other  bool           // target was past the cap
	// tls, clientID and serverID: see peerOf.
	tls                bool
	clientID, serverID string
}

// peerOf reads the labels a connection contributes: tls when the downstream
// transport socket terminated TLS, client_id the client certificate's
// identity, server_id the identity the proxy presented (the server's, on an
// inbound connection). Outbound, Linkerd's tls and server_id describe the
// connection to the destination: an outbound connection with one upstream
// (tcp_proxy, which reports its start once the upstream is connected) takes
// them from ConnInfo.UpstreamTLS and UpstreamIdentity; outbound HTTP
// requests from their own upstream connection (OnRequest); an outbound HTTP
// connection, which has no single upstream, keeps the downstream's.
func peerOf(info *filters.ConnInfo) peer {
	if info == nil {
		return peer{}
	}
	p := peer{dir: info.Direction, target: info.LocalAddr, tls: info.TLS, clientID: info.PeerIdentity, serverID: info.LocalIdentity}
	if info.Direction == filters.DirectionOutbound && info.UpstreamTLS {
		p.tls, p.serverID = true, info.UpstreamIdentity
	}
	return p
}

// values renders the base labels in baseLabels' order.
func (p *peer) values() []string {
	dir := p.dir
	if dir == "" {
		dir = "unspecified"
	}
	target, port := "", ""
	switch {
	case p.other:
		target, port = LabelOther, LabelOther
	case p.target.IsValid():
		target, port = p.target.String(), strconv.Itoa(int(p.target.Port()))
	}
	return []string{dir, target, port, strconv.FormatBool(p.tls), p.clientID, p.serverID}
}

// capTarget applies the target_addr cap to p.
func (r *Registry) capTarget(p *peer) {
	if p.target.IsValid() && !r.targets.admit(p.target) {
		p.target, p.other = netip.AddrPort{}, true
	}
}

// peerLabel is Linkerd's tcp "peer" label.
func peerLabel(dir string) string {
	if dir == filters.DirectionInbound {
		return "src"
	}
	return "dst"
}

// statusLabel renders an HTTP status for the status_code label; anything
// outside 100-599 (0: no response was sent) is "".
func statusLabel(code int) string {
	if code < 100 || code > 599 {
		return ""
	}
	return strconv.Itoa(code)
}

// grpcLabel bounds grpc_status to the codes gRPC defines (0-16), else LabelOther.
func grpcLabel(s string) string {
	if s == "" {
		return ""
	}
	if n, err := strconv.Atoi(s); err != nil || n < 0 || n > 16 {
		return LabelOther
	}
	return s
}

// classify is Linkerd's response classification.
func classify(status int, grpc string) string {
	if status == 0 || status >= 500 || (grpc != "" && grpc != "0") {
		return "failure"
	}
	return "success"
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
