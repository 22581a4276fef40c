package metrics

import (
	"errors"
	"strconv"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/telemetry/streaminfo"
)

// reqKey is a request's raw label inputs: the cache key of its series.
type reqKey struct {
	peer
	authority string
	status    int
	grpc      string
	cluster   string
}

// reqSeries are the metrics one reqKey resolves to.
type reqSeries struct {
	requests, responses prometheus.Counter
	latency             prometheus.Observer
	cluster             *clusterCounters // nil without a cluster
}

// OnRequest implements httplb.Hook: one record per finished HTTP request.
func (r *Registry) OnRequest(rec *streaminfo.Request) {
	k := reqKey{peer: peerOf(rec.Info), authority: rec.Authority, status: rec.Status, grpc: rec.GRPCStatus, cluster: rec.Cluster}
	switch {
	case rec.Info == nil && rec.TLS: // an HCM served without a listener
		k.tls, k.clientID, k.serverID = true, rec.ClientID, rec.ServerID
	case k.dir == filters.DirectionOutbound:
		// Outbound, Linkerd's tls and server_id describe the connection to
		// the destination: whether it was TLS, and the destination's
		// identity.
		k.tls, k.serverID = rec.UpstreamTLS, rec.UpstreamID
	}
	s := get(&r.reqCache, k, func() *reqSeries { return r.newReqSeries(k) })
	s.requests.Inc()
	s.responses.Inc()
	s.latency.Observe(ms(rec.Duration))
	if c := s.cluster; c != nil {
		c.rqTotal.Add(1)
		if cls := k.status / 100; cls >= 1 && cls <= 5 {
			c.rqClass[cls].Add(1)
		}
	}
}

func (r *Registry) newReqSeries(k reqKey) *reqSeries {
	r.capTarget(&k.peer)
	if !r.authorities.admit(k.authority) {
		k.authority = LabelOther
	}
	base := append(k.peer.values(), k.authority)
	grpc := grpcLabel(k.grpc)
	status := statusLabel(k.status)
	s := &reqSeries{
		requests:  r.requests.WithLabelValues(base...),
		responses: r.responses.WithLabelValues(append(base[:len(base):len(base)], status, classify(k.status, grpc), grpc)...),
		latency:   r.latency.WithLabelValues(append(base[:len(base):len(base)], status)...),
	}
	if k.cluster != "" {
		s.cluster = r.cluster(k.cluster)
	}
	return s
}

// connSeries are the metrics of one connection label set.
type connSeries struct {
	open, read, write prometheus.Counter
	openNow           prometheus.Gauge
}

// closeKey is a finished connection's raw label inputs.
type closeKey struct {
	peer
	failure bool
	errno   syscall.Errno
	cluster string
}

type closeSeries struct {
	conn     *connSeries
	closes   prometheus.Counter
	duration prometheus.Observer
	cluster  *clusterCounters
}

func (r *Registry) conn(p peer) *connSeries {
	return get(&r.connCache, p, func() *connSeries {
		r.capTarget(&p)
		lv := append(p.values(), peerLabel(p.dir))
		return &connSeries{open: r.tcpOpen.WithLabelValues(lv...), read: r.tcpRead.WithLabelValues(lv...),
			write: r.tcpWrite.WithLabelValues(lv...), openNow: r.tcpOpenConns.WithLabelValues(lv...)}
	})
}

// OnConnStart implements streaminfo.ConnStartHook.
func (r *Registry) OnConnStart(info *filters.ConnInfo) {
	s := r.conn(peerOf(info))
	s.open.Inc()
	s.openNow.Inc()
}

// OnConn implements streaminfo.ConnHook: one record per finished
// connection.
func (r *Registry) OnConn(c *streaminfo.Conn) {
	k := closeKey{peer: peerOf(c.Info), failure: c.Err != nil || c.ConnectFailed, cluster: c.Cluster}
	if c.Err != nil {
		k.errno = errnoOf(c.Err)
	}
	s := get(&r.closeCache, k, func() *closeSeries {
		p := k.peer
		r.capTarget(&p)
		lv := append(p.values(), peerLabel(p.dir))
		cls := "success"
		if k.failure {
			cls = "failure"
		}
		errno := ""
		if k.errno != 0 {
			errno = unix.ErrnoName(k.errno)
			if errno == "" {
				errno = strconv.Itoa(int(k.errno))
			}
		}
		cs := &closeSeries{conn: r.conn(k.peer), closes: r.tcpClose.WithLabelValues(append(lv, cls, errno)...),
			duration: r.tcpDuration.WithLabelValues(append(lv[:len(lv):len(lv)], cls)...)}
		if k.cluster != "" {
			cs.cluster = r.cluster(k.cluster)
		}
		return cs
	})
	s.conn.read.Add(float64(c.BytesReceived))
	s.conn.write.Add(float64(c.BytesSent))
	s.conn.openNow.Dec()
	s.closes.Inc()
	s.duration.Observe(ms(c.Duration))
	if cc := s.cluster; cc != nil {
		if c.ConnectFailed {
			cc.cxConnectFail.Add(1)
		} else {
			cc.cxTotal.Add(1)
		}
	}
}

// errnoOf returns the errno err wraps, or 0. (Its own function: taking the
// address of a field of the cache key would move every key to the heap.)
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// detKey is a connection's detection labels.
type detKey struct {
	listener, dir, protocol, reason, outcome string
	raced                                    bool
}

type detSeries struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

// OnDetection implements streaminfo.DetectionHook.
func (r *Registry) OnDetection(info *filters.ConnInfo, outcome string) {
	d := &info.Detection
	k := detKey{listener: info.Listener, dir: info.Direction, protocol: d.Protocol, reason: d.Reason, outcome: outcome, raced: d.Raced}
	s := get(&r.detCache, k, func() *detSeries {
		dir := k.dir
		if dir == "" {
			dir = "unspecified"
		}
		proto, reason := orUnknown(k.protocol), orUnknown(k.reason)
		return &detSeries{
			count:    r.detections.WithLabelValues(k.listener, dir, proto, reason, strconv.FormatBool(k.raced), k.outcome),
			duration: r.detectionDuration.WithLabelValues(k.listener, dir, proto, reason),
		}
	})
	s.count.Inc()
	if d.Ran {
		s.duration.Observe(ms(d.Duration))
	}
}

// clusterCounters are the Envoy-named counters of one cluster that only the
// records can tell (the rest is read from the cluster at scrape time).
type clusterCounters struct {
	cxTotal, cxConnectFail atomic.Uint64 // tcp_proxy connections
	rqTotal                atomic.Uint64
	rqClass                [6]atomic.Uint64 // [1..5]: upstream_rq_1xx..5xx
}

func (r *Registry) cluster(name string) *clusterCounters {
	return get(&r.clusterCounters, name, func() *clusterCounters { return &clusterCounters{} })
}
