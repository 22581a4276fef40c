package httplb

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// forward is the proxy step for every request that asks for no protocol
// change (no Upgrade, no CONNECT, no Expect): it builds the outbound
// request, sends it through the router (RoundTrip: balancing, retries,
// timeouts) and copies the response to w.
//
// It does what httputil.ReverseProxy does for such a request — hop-by-hop
// fields dropped both ways, client forwarding headers replaced by rewrite,
// unparsable query parameters removed, trailers announced and copied,
// streamed responses flushed after every write, a body that fails midway
// aborting the response — without ReverseProxy's per-request costs: its
// deep request clone, its 1xx trace hooks (the HTTP/1 pool absorbs interim
// responses; a request with Expect keeps ReverseProxy), and its flush timer
// for responses of known length. The head is flushed at once unless the
// body's first bytes are already buffered (bodyReady); a response of known
// length is flushed after a read that did not complete it (the upstream has
// nothing more at once) and at its end, so a complete small response leaves
// in one write with its head and nothing that trickles is ever held back.
//
// Requests that ask for an upgrade, CONNECT and Expect stay with
// httputil.ReverseProxy (see serveHTTP), which owns hijacking and
// 100-continue.
//
// ctx is the request's context for the upstream request (the request's
// state, its timeouts): out is in's copy with ctx, made once.
func (p *reverseProxy) forward(w http.ResponseWriter, in *http.Request, ctx context.Context) {
	out := in.WithContext(ctx)
	u := *in.URL
	out.URL = &u
	out.Header = outboundHeader(in.Header)
	if in.ContentLength == 0 {
		out.Body = nil // a body-less request may be retried by the transport
	} else if in.Body != nil {
		// RoundTrip closes the request body when an attempt fails; the
		// downstream body belongs to the server, which closes it after the
		// handler (ReverseProxy's noopCloseReader, for the same reason).
		out.Body = keepOpen{in.Body}
	}
	out.Close = false
	if httpguts.HeaderValuesContainsToken(in.Header["Te"], "trailers") {
		out.Header["Te"] = []string{"trailers"}
	}
	out.URL.RawQuery = cleanQuery(out.URL.RawQuery)
	p.rewriteRequest(in, out)

	res, err := p.RoundTrip(out)
	if err != nil {
		p.errorHandler(w, out, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Nothing asked for a protocol change: a 101 is the upstream's
		// error, not a tunnel to open.
		res.Body.Close()
		p.errorHandler(w, out, &upstreamError{failReset, errors.New("upstream switched protocols on a request that asked no upgrade")})
		return
	}
	dropHopByHop(res.Header)
	p.modifyResponse(res)
	h := w.Header()
	for k, vs := range res.Header {
		if prior, ok := h[k]; ok {
			h[k] = append(prior, vs...)
		} else {
			h[k] = vs // res is this request's own: its slices can move
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		names := make([]string, 0, announced)
		for k := range res.Trailer {
			names = append(names, k)
		}
		h.Add("Trailer", strings.Join(names, ", "))
	}
	w.WriteHeader(res.StatusCode)

	streamed := res.ContentLength == -1 || isEventStream(res.Header)
	if streamed || announced > 0 || !bodyReady(res.Body) {
		// The head goes out now: a streamed body (gRPC, events) may come
		// much later, or only after the client has spoken, and a body
		// that is not here yet must not hold the head back. (A body that
		// is already buffered goes out with the head in one write.)
		flush(w)
	}
	if err := copyBody(w, res.Body, res.ContentLength, streamed); err != nil {
		res.Body.Close()
		if in.Context().Value(http.ServerContextKey) != nil || res.ContentLength < 0 {
			// Abort the response, so the client sees a reset rather than
			// a body that ends cleanly short: under net/http's server, and
			// on the fast path for a body of unknown length (it would end
			// the chunked body with its last chunk; fastConn.serve ends
			// the connection instead). The fast path sees a short body of
			// known length itself (fastWriter.finish).
			panic(http.ErrAbortHandler)
		}
		return
	}
	res.Body.Close() // populates res.Trailer
	if len(res.Trailer) > 0 {
		// A response with trailers is chunked on HTTP/1.1: flushing now
		// keeps the server from computing a Content-Length.
		flush(w)
	}
	if len(res.Trailer) == announced {
		for k, vs := range res.Trailer {
			h[k] = append(h[k], vs...)
		}
		return
	}
	for k, vs := range res.Trailer {
		k = trailerKey(k)
		if prior, ok := h[k]; ok {
			h[k] = append(prior, vs...)
		} else {
			h[k] = vs // res is this request's own: its slices can move
		}
	}
}

// trailerKey is http.TrailerPrefix + k, without an allocation for gRPC's
// trailers (every gRPC response has them, unannounced).
func trailerKey(k string) string {
	switch k {
	case "Grpc-Status":
		return http.TrailerPrefix + "Grpc-Status"
	case "Grpc-Message":
		return http.TrailerPrefix + "Grpc-Message"
	case "Grpc-Status-Details-Bin":
		return http.TrailerPrefix + "Grpc-Status-Details-Bin"
	}
	return http.TrailerPrefix + k
}

// copyBody copies a response body to w from a pooled buffer. A streamed
// body (unknown length, event stream) is flushed after every write; one of
// known length after a read that did not complete it.
func copyBody(w http.ResponseWriter, body io.Reader, length int64, streamed bool) error {
	bp := copyBufferPool.Get().(*[]byte)
	defer copyBufferPool.Put(bp)
	buf := *bp
	var copied int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			wn, werr := w.Write(buf[:n])
			copied += int64(wn)
			if werr != nil {
				return werr
			}
			if wn != n {
				return io.ErrShortWrite
			}
			if streamed || (rerr == nil && copied < length) {
				flush(w)
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// bodyReady reports whether reading body would return bytes (or its end)
// without waiting: true for an empty body and for a body that says so
// (the HTTP/1 pool's, which knows what its connection has buffered).
func bodyReady(body io.Reader) bool {
	switch b := body.(type) {
	case nil:
		return true
	case interface{ Ready() bool }:
		return b.Ready()
	}
	return body == http.NoBody
}

// flush sends what w buffers, if it can.
func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
		return
	}
	http.NewResponseController(w).Flush()
}

func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream")
}

// keepOpen is a request body whose Close is the owner's, not the router's.
type keepOpen struct{ io.ReadCloser }

func (keepOpen) Close() error { return nil }

// hopByHop are the fields that describe one connection (RFC 9110 section
// 7.6.1), plus the ones every proxy drops with them.
var hopByHop = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func isHopByHop(k string) bool {
	for _, h := range hopByHop {
		if k == h {
			return true
		}
	}
	return false
}

// forwardingFields are the client's forwarding headers, which rewrite
// replaces by the proxy's own (ReverseProxy with Rewrite drops them too).
func isForwarding(k string) bool {
	switch k {
	case "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true
	}
	return false
}

// outboundHeader copies a request's header for the upstream request without
// its hop-by-hop fields, the fields its Connection header names, and the
// forwarding fields. The copy owns its value slices (one backing array), so
// edits to it never reach the downstream request's header, which the
// access log reads.
func outboundHeader(in http.Header) http.Header {
	n := 0
	for _, vs := range in {
		n += len(vs)
	}
	conn := in["Connection"]
	values := make([]string, 0, n)
	out := make(http.Header, len(in))
	for k, vs := range in {
		if isHopByHop(k) || isForwarding(k) || (len(conn) > 0 && namedIn(conn, k)) {
			continue
		}
		values = append(values, vs...)
		out[k] = values[len(values)-len(vs) : len(values) : len(values)]
	}
	return out
}

// dropHopByHop removes a response's hop-by-hop fields and those its
// Connection header names.
func dropHopByHop(h http.Header) {
	if conn := h["Connection"]; len(conn) > 0 {
		for _, v := range conn {
			for name := range strings.SplitSeq(v, ",") {
				if name = strings.TrimSpace(name); name != "" {
					delete(h, http.CanonicalHeaderKey(name))
				}
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// namedIn reports whether a Connection header names the field k.
func namedIn(conn []string, k string) bool {
	for _, v := range conn {
		for name := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(name), k) {
				return true
			}
		}
	}
	return false
}

// cleanQuery drops what url.ParseQuery cannot parse from a raw query —
// semicolon separators, bad escapes — as ReverseProxy does, so the upstream
// never reads a query differently from how the proxy's routes did.
func cleanQuery(q string) string {
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case ';':
			return reencodeQuery(q)
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return reencodeQuery(q)
			}
			i += 2
		}
	}
	return q
}

func reencodeQuery(q string) string {
	v, _ := url.ParseQuery(q)
	return v.Encode()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
