package streaminfo

import "github.com/siftmesh/sift/filters"

// RequestHook receives a Request once it is done; httplb.Hook is the same
// interface (httplb.Record is Request), so a RequestHook can be installed
// with httplb.SetHook.
type RequestHook interface {
	OnRequest(r *Request)
}

// Tee is a hook that hands every record to each of its hooks in order: the
// process's consumers (metrics, access logs, tracing) share the one
// process-wide hook slot. Elements may implement ConnHook, ConnStartHook,
// DetectionHook and RequestHook in any combination; each receives only what
// it implements. A Tee is immutable and safe for concurrent use.
type Tee struct {
	conns    []ConnHook
	starts   []ConnStartHook
	dets     []DetectionHook
	requests []RequestHook
}

// NewTee sorts hooks by the interfaces they implement; nil elements are
// skipped.
func NewTee(hooks ...any) *Tee {
	t := &Tee{}
	for _, h := range hooks {
		if h == nil {
			continue
		}
		if x, ok := h.(ConnHook); ok {
			t.conns = append(t.conns, x)
		}
		if x, ok := h.(ConnStartHook); ok {
			t.starts = append(t.starts, x)
		}
		if x, ok := h.(DetectionHook); ok {
			t.dets = append(t.dets, x)
		}
		if x, ok := h.(RequestHook); ok {
			t.requests = append(t.requests, x)
		}
	}
	return t
}

// OnConn implements ConnHook.
func (t *Tee) OnConn(c *Conn) {
	for _, h := range t.conns {
		h.OnConn(c)
	}
}

// OnConnStart implements ConnStartHook.
func (t *Tee) OnConnStart(info *filters.ConnInfo) {
	for _, h := range t.starts {
		h.OnConnStart(info)
	}
}

// OnDetection implements DetectionHook.
func (t *Tee) OnDetection(info *filters.ConnInfo, outcome string) {
	for _, h := range t.dets {
		h.OnDetection(info, outcome)
	}
}

// OnRequest implements RequestHook.
func (t *Tee) OnRequest(r *Request) {
	for _, h := range t.requests {
		h.OnRequest(r)
	}
}

var (
	_ ConnHook      = (*Tee)(nil)
	_ ConnStartHook = (*Tee)(nil)
	_ DetectionHook = (*Tee)(nil)
	_ RequestHook   = (*Tee)(nil)
)
