package listener

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/telemetry/streaminfo"
)

// DefaultDetectionLogSize is how many recent connections a Manager's
// DetectionLog keeps.
const DefaultDetectionLogSize = 512

// Outcomes of a connection at the end of the listener pipeline.
const (
	OutcomeDispatched = "dispatched" // handed to its chain's filters
	OutcomeNoChain    = "no_chain"   // no filter chain matched: closed
	OutcomeClosed     = "closed"     // closed by a listener filter (error, fail-closed timeout)
)

// DetectionRecord is why one connection went where it went.
type DetectionRecord struct {
	Time     time.Time
	Listener string
	Remote   netip.AddrPort
	// Local is the destination (the original destination when restored).
	Local     netip.AddrPort
	Detection filters.Detection
	// Transport, ServerName and ALPN are what filter-chain matching saw.
	Transport  string
	ServerName string
	// ALPN is the first application protocol, if any (the record holds no
	// slices, so keeping it costs no allocation).
	ALPN    string
	Chain   string // "" unless dispatched
	Outcome string
	// EarlyUpstream is the endpoint of an early upstream connection the
	// chosen chain adopted, "" when none was or it was closed.
	EarlyUpstream string
}

// DetectionLog is a ring of the most recent DetectionRecords. It is safe for
// concurrent use; Add takes one short lock and does not allocate.
type DetectionLog struct {
	mu   sync.Mutex
	ring []DetectionRecord
	next uint64 // records ever added
}

// NewDetectionLog keeps the last size records (at least 1).
func NewDetectionLog(size int) *DetectionLog {
	return &DetectionLog{ring: make([]DetectionRecord, max(size, 1))}
}

// Add copies r into the log.
func (l *DetectionLog) Add(r *DetectionRecord) {
	l.mu.Lock()
	l.ring[l.next%uint64(len(l.ring))] = *r
	l.next++
	l.mu.Unlock()
}

// Recent returns up to limit records that keep reports true (nil: all),
// newest first.
func (l *DetectionLog) Recent(limit int, keep func(*DetectionRecord) bool) []DetectionRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := min(l.next, uint64(len(l.ring)))
	out := []DetectionRecord{}
	for i := uint64(1); i <= n && len(out) < limit; i++ {
		r := &l.ring[(l.next-i)%uint64(len(l.ring))]
		if keep == nil || keep(r) {
			out = append(out, *r)
		}
	}
	return out
}

// Total returns how many records were ever added.
func (l *DetectionLog) Total() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// record adds info's detection to the manager's log.
func (l *Listener) record(info *filters.ConnInfo, chain *FilterChain, outcome string) {
	r := DetectionRecord{Time: info.AcceptedAt, Listener: l.name, Remote: info.RemoteAddr, Local: info.LocalAddr,
		Detection: info.Detection, Transport: info.TransportProtocol, ServerName: info.ServerName, Outcome: outcome}
	if len(info.ApplicationProtocols) > 0 {
		r.ALPN = info.ApplicationProtocols[0]
	}
	if chain != nil {
		r.Chain = chain.Name
	}
	if info.Early != nil {
		r.EarlyUpstream = info.Early.Endpoint
	}
	l.mgr.detections.Add(&r)
	streaminfo.ReportDetection(info, outcome)
}

// countDetection updates the detection counters for a connection that
// reached filter-chain match.
func (l *Listener) countDetection(info *filters.ConnInfo) {
	d := &info.Detection
	if d.Raced {
		l.stats.DetectionRaced.Add(1)
	}
	switch d.Reason {
	case filters.ReasonServerFirst, filters.ReasonLearnedServerFirst:
		l.stats.DetectionServerFirst.Add(1)
	case filters.ReasonTimeout:
		l.stats.DetectionTimeout.Add(1)
	}
}

// verdictsAttr renders d's verdicts for a log line: "tls:no_match,http1:match".
func verdictsAttr(d *filters.Detection) string {
	var b strings.Builder
	for i, v := range d.RecordedVerdicts() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(v.Sniffer)
		b.WriteByte(':')
		b.WriteString(v.Verdict)
	}
	return b.String()
}
