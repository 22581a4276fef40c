package httplb

import (
	"context"
	"sync"
)

// upstreamAbort lets the HTTP/1 pool abort a request's upstream exchange
// when the request's context ends, without context.AfterFunc, which costs
// an afterFunc context, a children map and a Done channel per request and
// locks the context twice. It lives in the request's state; the pool uses
// it for exactly one context (ctx), and only because every way that
// context ends also calls fire: the request's own cancellations (stream
// and route timeouts, request timeout, the handler's end; serveHTTP) and
// its parent's end, which only the fast path hooks (fastConn's connection
// end; connState.current). Any other context — net/http's request
// contexts, a retry attempt's — gets context.AfterFunc (watchContext).
type upstreamAbort struct {
	ctx    context.Context         // the context served; nil: none
	cancel context.CancelCauseFunc // ctx's
	mu     sync.Mutex
	fn     func() // the exchange in progress's abort; nil: none
	fired  bool
}

// exchangeWatch is a context's watch over one upstream exchange: stop ends
// it and reports whether the abort had not run (the connection is intact),
// as the stop function of context.AfterFunc does.
type exchangeWatch interface{ stop() bool }

type afterFuncWatch func() bool

func (w afterFuncWatch) stop() bool { return w() }

type abortKey struct{}

// watchContext runs abort (once, at once if it already has) when ctx ends,
// until the returned watch is stopped.
func watchContext(ctx context.Context, abort func()) exchangeWatch {
	if a, ok := ctx.Value(abortKey{}).(*upstreamAbort); ok && a.ctx == ctx {
		a.mu.Lock()
		fired := a.fired
		if !fired {
			a.fn = abort
		}
		a.mu.Unlock()
		if fired {
			abort()
		}
		return a
	}
	return afterFuncWatch(context.AfterFunc(ctx, abort))
}

func (a *upstreamAbort) stop() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ok := a.fn != nil
	a.fn = nil
	return ok
}

// end cancels ctx with cause and aborts the exchange: ctx's parent ended.
func (a *upstreamAbort) end(cause error) {
	a.cancel(cause)
	a.fire()
}

// fire runs the registered abort, and any registered later at once: the
// context ended (or is about to: callers cancel it first).
func (a *upstreamAbort) fire() {
	a.mu.Lock()
	a.fired = true
	fn := a.fn
	a.fn = nil
	a.mu.Unlock()
	if fn != nil {
		fn()
	}
}
