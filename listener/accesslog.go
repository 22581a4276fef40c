package listener

import (
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/telemetry/streaminfo"
)

// logUnserved writes a connection the listener closed without a network
// filter to the listener's access logs (Envoy's Listener.access_log):
// noChain when no filter chain matched, else listener filters closed it.
func logUnserved(cfg *Config, info *filters.ConnInfo, noChain bool) {
	if len(cfg.AccessLogs) == 0 {
		return
	}
	rec := &streaminfo.Conn{Start: info.AcceptedAt, Filter: "listener", Info: info, NoChain: noChain}
	if !rec.Start.IsZero() {
		rec.Duration = time.Since(rec.Start)
	}
	cfg.AccessLogs.LogConn(rec)
}
