package httplb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// writeRequest writes req to an upstream HTTP/1.1 connection's buffer:
// what net/http's Request.Write does for the requests the HTTP/1 pool
// carries, without its per-request transfer writer and header sorting.
// The head holds the request line, Host, the header's fields (names and
// values checked as net/http.Transport checks them), Connection: close when
// req.Close, and the body's framing: Content-Length for a body of known
// length (0 for a body-less POST, PUT or PATCH, as net/http), chunked for
// one of unknown length. A request with trailers or another transfer coding
// is left to Request.Write. The caller flushes.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	if len(req.Trailer) > 0 || len(req.TransferEncoding) > 1 ||
		(len(req.TransferEncoding) == 1 && req.TransferEncoding[0] != "chunked") {
		return req.Write(bw)
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return fmt.Errorf("invalid Host header %q", host)
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !validMethod(method) {
		return fmt.Errorf("invalid method %q", method)
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer", "Connection":
			continue // the framing and connection are this writer's
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid header field value for %q", k)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	switch {
	case body == nil:
		if req.ContentLength > 0 {
			return errors.New("http: Request.ContentLength > 0 with nil Body")
		}
		switch method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			bw.WriteString("Content-Length: 0\r\n")
		}
		_, err := bw.WriteString("\r\n")
		return err
	case req.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), req.ContentLength, 10)) // no allocation: bw's own space
		bw.WriteString("\r\n\r\n")
		n, err := io.CopyN(bw, body, req.ContentLength)
		if err == io.EOF {
			return fmt.Errorf("http: ContentLength=%d with Body length %d", req.ContentLength, n)
		}
		return err
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		bp := copyBufferPool.Get().(*[]byte)
		defer copyBufferPool.Put(bp)
		for {
			n, rerr := body.Read(*bp)
			if n > 0 {
				bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(n), 16))
				bw.WriteString("\r\n")
				bw.Write((*bp)[:n])
				if _, err := bw.WriteString("\r\n"); err != nil {
					return err
				}
			}
			if rerr == io.EOF {
				_, err := bw.WriteString("0\r\n\r\n")
				return err
			}
			if rerr != nil {
				return rerr
			}
		}
	}
}

// validMethod reports whether m is a token (RFC 9110 section 9.1).
func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return m != ""
}
