package detect

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/filters"
)

// The server-first race's connect retries back off from raceRetryBase to
// raceRetryMax.
const (
	raceRetryBase = 50 * time.Millisecond
	raceRetryMax  = 2 * time.Second
)

// greetingBufferSize is the most a server's first read may bring during the
// race; the rest of a longer greeting follows through the network filter.
const greetingBufferSize = 2048

// Race states: who spoke first.
const (
	racing int32 = iota
	clientFirst
	serverFirst
)

// ErrClosedOnTimeout is OnAccept's error when a silent client is reset
// because the policy fails closed.
var ErrClosedOnTimeout = errors.New("detect: client silent until the detection timeout; failing closed")

// OnAccept implements filters.ListenerFilter.
//
// It runs every sniffer in one peek loop (see Run) until the connection's
// accept time (info.AcceptedAt) plus the port's timeout (the listener
// filters' deadline may end it sooner), and sets info:
//
//   - TLS: TransportProtocol "tls", ServerName (SNI, lower-case),
//     ApplicationProtocols = the ALPN list (nil without ALPN);
//   - HTTP/1.0, HTTP/1.1, h2c, or a plugin's protocol: TransportProtocol
//     "raw_buffer", ApplicationProtocols = that one protocol;
//   - otherwise — no sniffer matched, the server spoke first, the client
//     closed or half-closed first, the byte cap was reached, or the client
//     stayed silent until the timeout and the policy fails open — opaque:
//     TransportProtocol "raw_buffer", no application protocols (ServerName
//     is left alone).
//
// The server-first race: when the client has sent nothing within the
// port's grace period (at once, for a destination learned to be
// server-first) and the listener offers a Fallback, OnAccept opens the
// fallback chain's upstream connection (info.Early) and waits for whichever
// side speaks first. The server first: opaque at once, its bytes kept in
// info.Early.Greeting for the network filter to deliver. The client first:
// detection goes on as usual and info.Early stays for the listener to hand
// on or close. Bytes read from either side are never lost or reordered.
//
// info.Detection is always filled. Errors close the connection: a read
// error other than end of stream, timeout or cap (Detection.Reason
// "error"), or a silent client under a fail-closed policy
// (ErrClosedOnTimeout, Reason "timeout_closed").
func (f *Filter) OnAccept(p filters.Peeker, info *filters.ConnInfo) error {
	start := info.AcceptedAt
	if start.IsZero() {
		start = time.Now()
	}
	pol := f.policyFor(info.LocalAddr.Port())
	deadline := start.Add(pol.Timeout)
	d := &info.Detection
	d.Ran = true

	learned := f.learnAfter > 0 && f.learned.Learned(info.LocalAddr)
	var (
		o   Outcome
		err error
	)
	raceAt := start
	if !learned {
		raceAt = start.Add(pol.GracePeriod)
	}
	mayRace := info.Fallback != nil && (learned || pol.GracePeriod > 0) && raceAt.Before(deadline)
	if mayRace && !learned {
		// The grace period: most clients (HTTP, TLS) speak within it.
		o, err = run(p, f.sniffers, pol.MaxBytes, raceAt)
		mayRace = err == nil && o.Reason == filters.ReasonTimeout && o.Bytes == 0
		if !mayRace && err == nil && o.Reason == filters.ReasonTimeout {
			o, err = run(p, f.sniffers, pol.MaxBytes, deadline) // spoke, but not enough yet
		}
	}
	switch {
	case mayRace:
		var decided bool
		o, decided, err = f.race(p, info, deadline, learned)
		if !decided && err == nil {
			o, err = run(p, f.sniffers, pol.MaxBytes, deadline)
		}
	case o.Reason == "" && err == nil:
		o, err = run(p, f.sniffers, pol.MaxBytes, deadline)
	}
	d.Bytes, d.Duration = o.Bytes, time.Since(start)
	d.SnifferNames, d.VerdictCodes, d.NumVerdicts = f.names, o.VerdictCodes, o.NumVerdicts
	if err != nil {
		d.Reason = filters.ReasonError
		return fmt.Errorf("detect: peek: %w", err)
	}
	if o.Reason == filters.ReasonTimeout && f.failClosed(pol, info) {
		d.Reason = filters.ReasonTimeoutClosed
		return ErrClosedOnTimeout
	}
	d.Protocol, d.Reason = o.Protocol(), o.Reason
	if (o.Reason == filters.ReasonServerFirst || o.Reason == filters.ReasonLearnedServerFirst) && info.Early != nil {
		// The server spoke first: a sniffer that knows servers may name
		// the protocol from its greeting (the chain may then select it).
		if name, r := f.judgeServer(info.Early.Greeting); r.Protocol != "" {
			proto := r.Protocol
			d.Protocol, d.Sniffer, d.Attributes = proto, name, r.Attributes
			info.TransportProtocol = filters.TransportRawBuffer
			info.ApplicationProtocols = []string{proto}
			return nil
		}
	}
	switch {
	case o.Reason != filters.ReasonMatch:
		info.TransportProtocol = filters.TransportRawBuffer
		info.ApplicationProtocols = nil
	case o.Result.Protocol == ProtocolTLS:
		d.Sniffer = o.Sniffer
		info.TransportProtocol = filters.TransportTLS
		info.ServerName = o.Result.ServerName
		info.ApplicationProtocols = slices.Clone(o.Result.ALPN)
	default:
		d.Sniffer, d.Attributes = o.Sniffer, o.Result.Attributes
		info.TransportProtocol = filters.TransportRawBuffer
		info.ApplicationProtocols = []string{o.Result.Protocol}
	}
	return nil
}

// failClosed reports whether a silent client is reset at the timeout.
func (f *Filter) failClosed(pol *Policy, info *filters.ConnInfo) bool {
	switch pol.OnTimeout {
	case TimeoutFailClosed:
		return true
	case TimeoutAuto:
		return info.Fallback != nil && info.Fallback.GuardsHTTP()
	}
	return false
}

// race opens the fallback chain's upstream and waits, until deadline, for
// the first bytes from either side. The upstream is opened and read by one
// goroutine while this one watches the client, so a slow connect never
// delays a client that speaks meanwhile. decided is true when the race
// settled detection (server first: o is opaque with Reason server_first);
// false when the client spoke first, or the race could not start, and
// detection must go on with run. On return info.Early holds the early
// upstream, if one was opened in time, and no goroutine of the race is left
// running.
func (f *Filter) race(p filters.Peeker, info *filters.ConnInfo, deadline time.Time, learned bool) (o Outcome, decided bool, err error) {
	// The client may have spoken just now: what is queued decides at once —
	// and, as when it speaks during the race, a learned destination whose
	// client speaks first is forgotten.
	if b, perr := p.Peek(1, time.Now()); len(b) > 0 || (perr != nil && !errors.Is(perr, os.ErrDeadlineExceeded)) {
		if len(b) > 0 {
			f.learned.ClientFirst(info.LocalAddr)
		}
		return Outcome{}, false, nil
	}
	if f.races.Add(1) > f.maxRaces {
		f.races.Add(-1)
		info.Detection.RaceError = "too many races in flight"
		return Outcome{}, false, nil
	}
	defer f.races.Add(-1)

	r := &upstreamSide{done: make(chan struct{})}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	go r.run(ctx, p, info)

	// The client's side: its first byte, the server's interrupt, or the deadline.
	b, perr := p.Peek(1, deadline)
	if len(b) > 0 || !errors.Is(perr, filters.ErrPeekInterrupted) {
		r.state.CompareAndSwap(racing, clientFirst)
	}
	if r.state.Load() == clientFirst {
		// Stop the upstream side, wherever it is: connecting (cancel) or
		// reading (a past deadline); keep what it brought (both spoke at once).
		r.mu.Lock()
		r.stopped = true
		early := r.early
		r.mu.Unlock()
		cancel()
		if early != nil {
			early.Conn.SetReadDeadline(aLongTimeAgo)
		}
		<-r.done
		r.note(info)
		if early != nil {
			if err := early.Conn.SetReadDeadline(time.Time{}); err != nil {
				early.Close()
				return Outcome{}, false, fmt.Errorf("early upstream: %w", err)
			}
			early.Greeting = r.greeting
			info.Early = early
		}
		if len(b) > 0 {
			f.learned.ClientFirst(info.LocalAddr)
		}
		// Detection goes on; after a timeout, end of stream or read error
		// before any byte, run reports it the usual way, at once.
		return Outcome{}, false, nil
	}
	<-r.done
	r.note(info)
	r.early.Greeting = r.greeting
	info.Early = r.early
	if f.learnAfter > 0 {
		f.learned.ServerFirst(info.LocalAddr, f.learnAfter, f.learnTTL)
	}
	o = Outcome{Reason: filters.ReasonServerFirst, Bytes: len(p.Peeked())}
	if learned {
		o.Reason = filters.ReasonLearnedServerFirst
	}
	return o, true, nil
}

// upstreamSide is the race's upstream goroutine and what it found.
type upstreamSide struct {
	state atomic.Int32 // racing, clientFirst, serverFirst
	done  chan struct{}

	mu      sync.Mutex
	stopped bool                   // the client won: close what is opened from now on
	early   *filters.EarlyUpstream // set once connected (and not stopped)

	// Written by run before done is closed.
	greeting []byte
	dialErr  error
}

// run opens the fallback's upstream, then reads its first bytes; if they
// come first it claims the win and interrupts the client's Peek. An upstream
// that ends (EOF, reset) before the client speaks has "spoken" too.
func (r *upstreamSide) run(ctx context.Context, p filters.Peeker, info *filters.ConnInfo) {
	defer close(r.done)
	// A failed connect is tried again while the client stays silent (backing
	// off up to 2 s, within the detection deadline): an upstream that was
	// briefly unreachable — restarting, or rotating certificates — still
	// greets the client before the timeout.
	backoff := raceRetryBase
	var early *filters.EarlyUpstream
	for {
		e, err := info.Fallback.Preconnect(ctx, info)
		if err == nil {
			early = e
			break
		}
		if r.dialErr == nil || ctx.Err() == nil {
			r.dialErr = err // the first error, or a later one not caused by the end of the race
		}
		if errors.Is(err, filters.ErrNoPreconnect) {
			return
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, raceRetryMax)
	}
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		early.Close() // the client spoke while it connected
		return
	}
	r.early = early
	r.mu.Unlock()
	buf := make([]byte, greetingBufferSize)
	n, _ := early.Conn.Read(buf)
	r.greeting = buf[:n:n]
	if r.state.CompareAndSwap(racing, serverFirst) {
		p.Interrupt()
	}
}

// note records the race in info's detection record (after done).
func (r *upstreamSide) note(info *filters.ConnInfo) {
	switch {
	case r.dialErr == nil:
		info.Detection.Raced = true
	case errors.Is(r.dialErr, filters.ErrNoPreconnect):
	case errors.Is(r.dialErr, context.Canceled) || errors.Is(r.dialErr, context.DeadlineExceeded):
		info.Detection.Raced = true // the client spoke (or the deadline came) while the upstream connected
	default:
		info.Detection.Raced = true
		info.Detection.RaceError = r.dialErr.Error()
	}
}

// aLongTimeAgo is a read deadline in the past: it wakes a blocked Read.
var aLongTimeAgo = time.Unix(1, 0)

// judgeServer asks the sniffers that judge servers about a greeting and
// returns the first match's sniffer and result (Protocol "" when none).
func (f *Filter) judgeServer(greeting []byte) (name string, r Result) {
	if len(greeting) == 0 {
		return "", Result{}
	}
	for _, s := range f.sniffers {
		if ss, ok := s.(ServerSniffer); ok {
			if r := ss.SniffServer(greeting); r.Verdict == Match {
				return s.Name(), r
			}
		}
	}
	return "", Result{}
}
