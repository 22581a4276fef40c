package httplb

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/upstream"
)

// failure classes of an upstream attempt that produced no response.
type failure uint8

const (
	failReset failure = iota
	failConnect
	failPerTryTimeout
	failRouteTimeout
	failCancelled // the downstream went away
)

// upstreamError is an attempt's failure, for the error handler.
type upstreamError struct {
	class failure
	err   error
}

func (e *upstreamError) Error() string { return "httplb: upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// RoundTrip is the router: it picks an endpoint of the request's cluster
// with the cluster's balancer, sends the request on that endpoint's pool,
// and retries by the route's retry_policy — only while the request body can
// be replayed (see replay). It is ReverseProxy's Transport.
func (rp *reverseProxy) RoundTrip(req *http.Request) (*http.Response, error) {
	st := stateOf(req.Context())
	p := st.pool
	if limit := p.opts.MaxRequests; limit > 0 {
		if p.inflight.Add(1) > int64(limit) {
			p.inflight.Add(-1)
			return nil, errOverflow
		}
	} else {
		p.inflight.Add(1)
	}
	released := false
	defer func() {
		if !released {
			p.inflight.Add(-1)
		}
	}()

	policy := st.route.Retry
	var body *replay
	if policy != nil && policy.NumRetries > 0 && req.Body != nil && req.Body != http.NoBody {
		body = &replay{src: req.Body, limit: st.route.BufferLimit}
	}
	arrivedH1 := (req.ProtoMajor == 1 && !st.downstreamH2) || st.origHTTP1
	h2 := false
	switch p.opts.Protocol {
	case upstream.HTTP2:
		h2 = true
	case upstream.HTTPDownstream:
		h2 = !arrivedH1
	}
	if st.upgrade != "" {
		h2 = false // upgrades are HTTP/1.1 exchanges
	} else if p.opts.UpgradeHTTP1 && arrivedH1 && req.Host != "" {
		// To a peer proxy: HTTP/1 multiplexed on HTTP/2, marked for the peer
		// to restore. req is ReverseProxy's outgoing copy: its Header is
		// its own.
		h2 = true
		req.Header.Set(origProtoHeader, "HTTP/1.1")
	}
	var tried []*endpoint // with previous_hosts: the endpoints this request tried
	for attempt := 1; ; attempt++ {
		ep, err := p.pick()
		if err != nil {
			return nil, err
		}
		if policy != nil && policy.AvoidPreviousHosts {
			// Envoy's previous_hosts: re-pick a tried endpoint up to
			// host_selection_retry_max_attempts times, then take the last.
			for n := 0; n < policy.HostSelectionAttempts && slices.Contains(tried, ep); n++ {
				if ep, err = p.pick(); err != nil {
					return nil, err
				}
			}
			tried = append(tried, ep)
		}
		st.rec.Endpoint, st.rec.Attempts = ep.Addr, attempt
		// An attempt has a context of its own only when a retry policy can
		// end it (per_try_timeout) or start another: without one, the
		// request's context is the attempt's (no context and no request
		// copy per request).
		areq, cancel := req, context.CancelFunc(func() {})
		if policy != nil {
			var actx context.Context
			actx, cancel = context.WithCancel(req.Context())
			areq = req.WithContext(actx)
		}
		if body != nil {
			areq.Body = body.attempt()
			areq.GetBody = nil
		}
		if st.route.AutoHostRewrite {
			areq.Host = ep.hostname
			if areq.Host == "" {
				areq.Host = ep.Addr
			}
		}
		var tryTimedOut atomic.Bool
		var perTry *time.Timer
		if policy != nil && policy.PerTryTimeout > 0 {
			perTry = time.AfterFunc(policy.PerTryTimeout, func() { tryTimedOut.Store(true); cancel() })
		}
		ep.Start()
		// The attempt's start: the first attempt's is the request's (its
		// routing, a few µs, counts in the endpoint's latency, the same
		// for every endpoint), which saves a clock read per request.
		t0 := st.rec.Start
		if attempt > 1 {
			t0 = time.Now()
		}
		var resp *http.Response
		if st.upgrade == "" && !p.c.TLS() && areq.Header.Get("Expect") == "" && !h2 {
			resp, err = p.h1Pool(ep).roundTripAt(areq, t0)
		} else if st.upgrade == "" && areq.Header.Get("Expect") == "" && h2 && p.ownH2() {
			resp, err = p.h2Pool(ep).RoundTrip(areq)
		} else {
			resp, err = p.transport(ep, h2).RoundTrip(overTLS(areq, p.c.TLS()))
		}
		if perTry != nil {
			perTry.Stop()
		}
		if err == nil {
			now := time.Now() // one clock read for the record and the balancer
			st.rec.UpstreamHeaders = now.Sub(st.rec.Start)
			if cs := resp.TLS; cs != nil {
				st.rec.UpstreamTLS = true
				if len(cs.PeerCertificates) > 0 {
					st.rec.UpstreamID = mtls.PeerIdentity(cs.PeerCertificates[0])
				}
			}
			p.observe(ep, now.Sub(t0), now)
			p.report(ep, resp.StatusCode)
			canRetry := policy != nil && attempt <= policy.NumRetries && (body == nil || body.replayable()) &&
				resp.StatusCode != http.StatusSwitchingProtocols
			if canRetry && policy.RetriableStatus(resp.StatusCode, grpcStatus(resp.Header)) {
				io.CopyN(io.Discard, resp.Body, 64<<10)
				resp.Body.Close()
				ep.Done()
				cancel()
				if !sleepCtx(req.Context(), policy.Backoff(attempt)) {
					return nil, classify(req.Context().Err(), false, req.Context())
				}
				continue
			}
			released = true
			if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
				resp.Body = &doneRWBody{ReadWriteCloser: rwc, attemptEnd: attemptEnd{ep: ep, cancel: cancel, p: p}}
			} else {
				resp.Body = &doneBody{ReadCloser: resp.Body, attemptEnd: attemptEnd{ep: ep, cancel: cancel, p: p}}
			}
			return resp, nil
		}
		ep.Done()
		cancel()
		ue := classify(err, tryTimedOut.Load(), req.Context())
		if ue.class != failCancelled && ue.class != failRouteTimeout {
			p.report(ep, 0)
		}
		retriable := false
		if policy != nil && attempt <= policy.NumRetries && (body == nil || body.replayable()) {
			switch ue.class {
			case failConnect:
				retriable = policy.RetriableConnectFailure()
			case failReset:
				retriable = policy.RetriableReset()
			case failPerTryTimeout:
				retriable = policy.RetriableTimeout()
			}
		}
		if !retriable {
			return nil, ue
		}
		if !sleepCtx(req.Context(), policy.Backoff(attempt)) {
			return nil, classify(req.Context().Err(), false, req.Context())
		}
	}
}

func classify(err error, perTry bool, ctx context.Context) *upstreamError {
	var de *upstream.DialError
	switch {
	case errors.Is(context.Cause(ctx), context.DeadlineExceeded): // the route timeout (streamTimer)
		return &upstreamError{failRouteTimeout, err}
	case ctx.Err() != nil:
		return &upstreamError{failCancelled, err}
	case perTry:
		return &upstreamError{failPerTryTimeout, err}
	case errors.As(err, &de):
		return &upstreamError{failConnect, err}
	}
	return &upstreamError{failReset, err}
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// grpcStatus returns a trailers-only response's grpc-status, or -1.
func grpcStatus(h http.Header) int {
	v := h.Get("Grpc-Status")
	if v == "" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// attemptEnd ends an attempt that got a response, once, when its body
// ends or is closed: the endpoint's and the cluster's in-flight counts,
// and the attempt's context.
type attemptEnd struct {
	ep     *endpoint
	cancel context.CancelFunc
	p      *clusterPool
	ended  atomic.Bool
}

func (e *attemptEnd) done() {
	if e.ended.CompareAndSwap(false, true) {
		e.ep.Done()
		e.cancel()
		e.p.inflight.Add(-1)
	}
}

// doneBody is a response body that ends its attempt when it ends or is
// closed.
type doneBody struct {
	io.ReadCloser
	attemptEnd
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done()
	}
	return n, err
}

// Ready is the wrapped body's (forward's bodyReady); false when it cannot
// tell.
func (b *doneBody) Ready() bool {
	r, ok := b.ReadCloser.(interface{ Ready() bool })
	return ok && r.Ready()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// doneRWBody is doneBody for a 101 response, whose body is the upgraded
// connection (ReverseProxy needs it writable).
type doneRWBody struct {
	io.ReadWriteCloser
	attemptEnd
}

func (b *doneRWBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.done()
	return err
}

// replay makes a request body replayable for retries, within a limit: each
// attempt reads the bytes earlier attempts consumed from a buffer, then
// continues from the source, recording what it reads. Once more than limit
// bytes were consumed the buffer is dropped and the request is no longer
// replayable — a streamed body beyond the limit is never retried, as in
// Envoy, which disables retries when its retry buffer overflows.
//
// Only the current attempt may read: an attempt is detached when the next
// begins (the transport may still hold the old one). Reads of the source are
// serialised under mu, so a detached attempt blocked in the source cannot
// race the next one; whatever it read is recorded and replayed.
type replay struct {
	mu       sync.Mutex
	src      io.ReadCloser
	limit    int
	buf      []byte
	overflow bool
	err      error // the source's terminal error (io.EOF), once seen
	cur      *attemptBody
}

type attemptBody struct {
	r        *replay
	off      int
	detached atomic.Bool
}

var errDetached = errors.New("httplb: request body handed to a retry")

func (r *replay) attempt() io.ReadCloser {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil {
		r.cur.detached.Store(true)
	}
	r.cur = &attemptBody{r: r}
	return r.cur
}

func (r *replay) replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.overflow
}

func (a *attemptBody) Read(p []byte) (int, error) {
	r := a.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.detached.Load() {
		return 0, errDetached
	}
	if a.off < len(r.buf) {
		n := copy(p, r.buf[a.off:])
		a.off += n
		return n, nil
	}
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.src.Read(p)
	if n > 0 && !r.overflow {
		if len(r.buf)+n <= r.limit {
			r.buf = append(r.buf, p[:n]...)
			a.off += n
		} else {
			r.overflow, r.buf = true, nil
		}
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

// Close detaches the attempt; the source stays open for a retry (the
// downstream server closes it when the request ends).
func (a *attemptBody) Close() error {
	a.detached.Store(true)
	return nil
}
