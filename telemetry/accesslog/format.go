package accesslog

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/telemetry/streaminfo"
)

// DefaultFormat is Envoy's default access log format, used when a logger
// names none.
const DefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// entry is the record one line is formatted from: exactly one of req and
// conn is set.
type entry struct {
	req  *streaminfo.Request
	conn *streaminfo.Conn
}

func (e *entry) start() time.Time {
	if e.req != nil {
		return e.req.Start
	}
	return e.conn.Start
}

// ci is the downstream connection's facts, nil when unknown.
func (e *entry) ci() *filters.ConnInfo {
	if e.req != nil {
		return e.req.Info
	}
	return e.conn.Info
}

func (e *entry) remote() netip.AddrPort {
	if ci := e.ci(); ci != nil {
		return ci.RemoteAddr
	}
	return netip.AddrPort{}
}

func (e *entry) local() netip.AddrPort {
	if ci := e.ci(); ci != nil {
		return ci.LocalAddr
	}
	return netip.AddrPort{}
}

// value is what an operator produced: absent (Envoy's "-", JSON null), a
// number, or text.
type valueKind uint8

const (
	absent valueKind = iota
	number
	text
)

// operator appends its value for e to b. It reports absent without
// appending anything when the record has no value.
type operator func(b []byte, e *entry) ([]byte, valueKind)

// segment is a literal or one command operator of a parsed format string.
type segment struct {
	literal string
	op      operator // nil for a literal
	maxLen  int      // the ":Z" truncation, 0: none
}

// textFormat is a parsed format string: literals and operators in order.
type textFormat []segment

// appendText appends the formatted string; absent values read "-".
func (f textFormat) appendText(b []byte, e *entry) []byte {
	for i := range f {
		s := &f[i]
		if s.op == nil {
			b = append(b, s.literal...)
			continue
		}
		n := len(b)
		var k valueKind
		b, k = s.op(b, e)
		if k == absent {
			b = append(b, '-')
			continue
		}
		if s.maxLen > 0 && len(b)-n > s.maxLen {
			b = b[:n+s.maxLen]
		}
	}
	return b
}

// parseFormat parses an Envoy format string once, at config time: literal
// text and command operators %NAME%, %NAME(ARGS)% and %NAME(ARGS):LEN%. An
// unknown operator or a '%' that begins none is an error naming it.
func parseFormat(s string) (textFormat, error) {
	var f textFormat
	lit := 0 // start of the pending literal
	for i := 0; i < len(s); {
		if s[i] != '%' {
			i++
			continue
		}
		seg, n, err := parseCommand(s[i:])
		if err != nil {
			return nil, fmt.Errorf("position %d: %w", i, err)
		}
		if lit < i {
			f = append(f, segment{literal: s[lit:i]})
		}
		f = append(f, seg)
		i += n
		lit = i
	}
	if lit < len(s) {
		f = append(f, segment{literal: s[lit:]})
	}
	return f, nil
}

// parseCommand parses the command operator at the start of s ("%...%") and
// returns it with its length.
func parseCommand(s string) (segment, int, error) {
	i := 1
	for i < len(s) && (s[i] >= 'A' && s[i] <= 'Z' || s[i] >= '0' && s[i] <= '9' || s[i] == '_') {
		i++
	}
	name := s[1:i]
	if name == "" {
		return segment{}, 0, errors.New("'%' does not begin a command operator (want %NAME%)")
	}
	var arg string
	hasArg := false
	if i < len(s) && s[i] == '(' {
		end := strings.IndexByte(s[i:], ')')
		if end < 0 {
			return segment{}, 0, fmt.Errorf("%%%s(: missing ')'", name)
		}
		arg, hasArg = s[i+1:i+end], true
		i += end + 1
	}
	maxLen := 0
	if i < len(s) && s[i] == ':' {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		n, err := strconv.Atoi(s[i+1 : j])
		if err != nil || n <= 0 {
			return segment{}, 0, fmt.Errorf("%%%s: the length after ':' must be a positive number", name)
		}
		maxLen, i = n, j
	}
	if i >= len(s) || s[i] != '%' {
		return segment{}, 0, fmt.Errorf("%%%s: missing the closing '%%'", name)
	}
	op, err := newOperator(name, arg, hasArg)
	if err != nil {
		return segment{}, 0, err
	}
	return segment{op: op, maxLen: maxLen}, i + 1, nil
}

// Operators lists the command operators Sift implements (for docs and
// errors).
var Operators = []string{
	"START_TIME", "REQ", "RESP", "PROTOCOL", "RESPONSE_CODE", "RESPONSE_CODE_DETAILS", "RESPONSE_FLAGS",
	"BYTES_RECEIVED", "BYTES_SENT", "DURATION", "RESPONSE_DURATION", "UPSTREAM_HOST", "UPSTREAM_CLUSTER",
	"UPSTREAM_REQUEST_ATTEMPT_COUNT", "UPSTREAM_TRANSPORT_FAILURE_REASON", "CONNECTION_TERMINATION_DETAILS",
	"DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_REMOTE_PORT",
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
	"DOWNSTREAM_LOCAL_PORT", "REQUESTED_SERVER_NAME", "ROUTE_NAME", "VIRTUAL_HOST_NAME", "HOSTNAME",
	"SIFT_DETECTED_PROTOCOL", "SIFT_DETECTION_REASON", "SIFT_DETECTION_DURATION", "SIFT_DETECTION_BYTES",
	"SIFT_DETECTION_SNIFFER", "SIFT_DETECTION_ATTRIBUTE(name)", "SIFT_FILTER",
}

func noArg(name string, hasArg bool, op operator) (operator, error) {
	if hasArg {
		return nil, fmt.Errorf("%%%s%%: takes no argument", name)
	}
	return op, nil
}

func newOperator(name, arg string, hasArg bool) (operator, error) {
	switch name {
	case "START_TIME":
		tf := defaultTimeFormat
		if hasArg && arg != "" {
			tf = parseTimeFormat(arg)
		}
		return func(b []byte, e *entry) ([]byte, valueKind) {
			t := e.start()
			if t.IsZero() {
				return b, absent
			}
			return tf.append(b, t.UTC()), text
		}, nil
	case "REQ", "RESP":
		if !hasArg || arg == "" {
			return nil, fmt.Errorf("%%%s(header)%%: a header name is required", name)
		}
		main, alt, _ := strings.Cut(arg, "?")
		if main == "" || strings.Contains(alt, "?") {
			return nil, fmt.Errorf("%%%s(%s)%%: want HEADER or HEADER?ALTERNATIVE", name, arg)
		}
		if name == "REQ" {
			return reqHeader(main, alt), nil
		}
		return respHeader(main, alt), nil
	case "SIFT_DETECTION_ATTRIBUTE":
		if !hasArg || arg == "" {
			return nil, fmt.Errorf("%%%s(name)%%: an attribute name is required (what a plugin sniffer's match reported)", name)
		}
		return func(b []byte, e *entry) ([]byte, valueKind) {
			if ci := e.ci(); ci != nil {
				return appendStr(b, ci.Detection.Attributes[arg])
			}
			return b, absent
		}, nil
	case "HOSTNAME":
		h, _ := os.Hostname()
		return noArg(name, hasArg, func(b []byte, _ *entry) ([]byte, valueKind) { return appendStr(b, h) })
	}
	op, ok := simpleOperators[name]
	if !ok {
		return nil, fmt.Errorf("%%%s%%: unknown command operator (Sift implements %s)", name, strings.Join(Operators, ", "))
	}
	return noArg(name, hasArg, op)
}

func appendStr(b []byte, s string) ([]byte, valueKind) {
	if s == "" {
		return b, absent
	}
	return append(b, s...), text
}

func appendInt(b []byte, n int64) ([]byte, valueKind) { return strconv.AppendInt(b, n, 10), number }

func appendMillis(b []byte, d time.Duration) ([]byte, valueKind) {
	return strconv.AppendInt(b, d.Milliseconds(), 10), number
}

func appendAddr(b []byte, a netip.AddrPort, withPort bool) ([]byte, valueKind) {
	if !a.IsValid() {
		return b, absent
	}
	if withPort {
		return a.AppendTo(b), text
	}
	return a.Addr().AppendTo(b), text
}

// simpleOperators are the operators without arguments.
var simpleOperators = map[string]operator{
	"PROTOCOL": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil {
			return b, absent
		}
		return appendStr(b, e.req.Protocol)
	},
	"RESPONSE_CODE": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil {
			return appendInt(b, 0) // Envoy logs 0 for TCP
		}
		return appendInt(b, int64(e.req.Status))
	},
	"RESPONSE_CODE_DETAILS": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil {
			return b, absent
		}
		if e.req.Error == "" && e.req.Status != 0 {
			return append(b, "via_upstream"...), text
		}
		return appendStr(b, e.req.Error)
	},
	"RESPONSE_FLAGS": func(b []byte, e *entry) ([]byte, valueKind) {
		return appendStr(b, responseFlags(e))
	},
	"BYTES_RECEIVED": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req != nil {
			return appendInt(b, e.req.BytesReceived)
		}
		return appendInt(b, e.conn.BytesReceived)
	},
	"BYTES_SENT": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req != nil {
			return appendInt(b, e.req.BytesSent)
		}
		return appendInt(b, e.conn.BytesSent)
	},
	"DURATION": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req != nil {
			return appendMillis(b, e.req.Duration)
		}
		return appendMillis(b, e.conn.Duration)
	},
	"RESPONSE_DURATION": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil || e.req.UpstreamHeaders == 0 {
			return b, absent
		}
		return appendMillis(b, e.req.UpstreamHeaders)
	},
	"UPSTREAM_HOST": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req != nil {
			return appendStr(b, e.req.Endpoint)
		}
		return appendStr(b, e.conn.Endpoint)
	},
	"UPSTREAM_CLUSTER": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req != nil {
			return appendStr(b, e.req.Cluster)
		}
		return appendStr(b, e.conn.Cluster)
	},
	"UPSTREAM_REQUEST_ATTEMPT_COUNT": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil {
			return b, absent
		}
		return appendInt(b, int64(e.req.Attempts))
	},
	"UPSTREAM_TRANSPORT_FAILURE_REASON": func(b []byte, e *entry) ([]byte, valueKind) {
		return appendStr(b, transportFailure(e))
	},
	"CONNECTION_TERMINATION_DETAILS": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.conn == nil || e.conn.Err == nil || e.conn.ConnectFailed {
			return b, absent
		}
		return appendStr(b, e.conn.Err.Error())
	},
	"DOWNSTREAM_REMOTE_ADDRESS": func(b []byte, e *entry) ([]byte, valueKind) {
		return appendAddr(b, e.remote(), true)
	},
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS": func(b []byte, e *entry) ([]byte, valueKind) {
		return appendAddr(b, e.remote(), true)
	},
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": func(b []byte, e *entry) ([]byte, valueKind) {
		return appendAddr(b, e.remote(), false)
	},
	"DOWNSTREAM_REMOTE_PORT": func(b []byte, e *entry) ([]byte, valueKind) {
		a := e.remote()
		if !a.IsValid() {
			return b, absent
		}
		return appendInt(b, int64(a.Port()))
	},
	"DOWNSTREAM_LOCAL_ADDRESS": func(b []byte, e *entry) ([]byte, valueKind) {
		return appendAddr(b, e.local(), true)
	},
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": func(b []byte, e *entry) ([]byte, valueKind) {
		return appendAddr(b, e.local(), false)
	},
	"DOWNSTREAM_LOCAL_PORT": func(b []byte, e *entry) ([]byte, valueKind) {
		a := e.local()
		if !a.IsValid() {
			return b, absent
		}
		return appendInt(b, int64(a.Port()))
	},
	"REQUESTED_SERVER_NAME": func(b []byte, e *entry) ([]byte, valueKind) {
		if ci := e.ci(); ci != nil {
			return appendStr(b, ci.ServerName)
		}
		return b, absent
	},
	"ROUTE_NAME": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil {
			return b, absent
		}
		return appendStr(b, e.req.Route)
	},
	"VIRTUAL_HOST_NAME": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil {
			return b, absent
		}
		return appendStr(b, e.req.VirtualHost)
	},
	"SIFT_DETECTED_PROTOCOL": func(b []byte, e *entry) ([]byte, valueKind) {
		if ci := e.ci(); ci != nil && ci.Detection.Ran {
			return appendStr(b, ci.Detection.Protocol)
		}
		return b, absent
	},
	"SIFT_DETECTION_REASON": func(b []byte, e *entry) ([]byte, valueKind) {
		if ci := e.ci(); ci != nil && ci.Detection.Ran {
			return appendStr(b, ci.Detection.Reason)
		}
		return b, absent
	},
	"SIFT_DETECTION_DURATION": func(b []byte, e *entry) ([]byte, valueKind) {
		if ci := e.ci(); ci != nil && ci.Detection.Ran {
			return appendMillis(b, ci.Detection.Duration)
		}
		return b, absent
	},
	"SIFT_DETECTION_BYTES": func(b []byte, e *entry) ([]byte, valueKind) {
		if ci := e.ci(); ci != nil && ci.Detection.Ran {
			return appendInt(b, int64(ci.Detection.Bytes))
		}
		return b, absent
	},
	"SIFT_DETECTION_SNIFFER": func(b []byte, e *entry) ([]byte, valueKind) {
		if ci := e.ci(); ci != nil && ci.Detection.Ran {
			return appendStr(b, ci.Detection.Sniffer)
		}
		return b, absent
	},
	"SIFT_FILTER": func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req != nil {
			return append(b, "http_connection_manager"...), text
		}
		return appendStr(b, e.conn.Filter)
	},
}

// headerRef is one header name of %REQ/%RESP, resolved at parse time: a
// pseudo-header read from the record, or a canonical key into the map.
type headerRef struct {
	pseudo string // ":method", ":path", ":authority", ":scheme", or ""
	key    string // canonical MIME key, "" for none
}

func newHeaderRef(name string) headerRef {
	switch l := strings.ToLower(name); l {
	case "":
		return headerRef{}
	case ":method", ":path", ":authority", ":scheme":
		return headerRef{pseudo: l}
	case "host":
		return headerRef{pseudo: ":authority"}
	}
	return headerRef{key: textproto.CanonicalMIMEHeaderKey(name)}
}

func (h headerRef) get(r *streaminfo.Request, hdr http.Header) string {
	switch h.pseudo {
	case ":method":
		return r.Method
	case ":path":
		return r.Path
	case ":authority":
		return r.Authority
	case ":scheme":
		if r.Info != nil && r.Info.TransportProtocol == filters.TransportTLS {
			return "https"
		}
		return "http"
	}
	if h.key == "" {
		return ""
	}
	if vs := hdr[h.key]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// reqHeader is %REQ(main?alt)%: the request header main, or alt when main is
// absent. Pseudo-headers :method, :path, :authority and :scheme read the
// record.
func reqHeader(main, alt string) operator {
	m, a := newHeaderRef(main), newHeaderRef(alt)
	return func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil {
			return b, absent
		}
		v := m.get(e.req, e.req.Header)
		if v == "" {
			v = a.get(e.req, e.req.Header)
		}
		return appendStr(b, v)
	}
}

// respHeader is %RESP(main?alt)%.
func respHeader(main, alt string) operator {
	m, a := newHeaderRef(main), newHeaderRef(alt)
	m.pseudo, a.pseudo = "", "" // responses have no such pseudo-headers
	return func(b []byte, e *entry) ([]byte, valueKind) {
		if e.req == nil || e.req.ResponseHeader == nil {
			return b, absent
		}
		v := m.get(e.req, e.req.ResponseHeader)
		if v == "" {
			v = a.get(e.req, e.req.ResponseHeader)
		}
		return appendStr(b, v)
	}
}

// transportFailure is Envoy's UPSTREAM_TRANSPORT_FAILURE_REASON: why the
// upstream connection could not be opened.
func transportFailure(e *entry) string {
	if e.conn != nil && e.conn.ConnectFailed && e.conn.Err != nil {
		return e.conn.Err.Error()
	}
	return ""
}

// responseFlags is Envoy's short response flags for the record, "" when
// none apply.
func responseFlags(e *entry) string {
	if e.req != nil {
		return reasonFlags[e.req.Error]
	}
	if e.conn.NoChain {
		return "NR" // Envoy: no filter chain matched the connection
	}
	if e.conn.ConnectFailed {
		if e.conn.Cluster != "" && strings.Contains(errString(e.conn.Err), "not found") {
			return "NC"
		}
		return "UF"
	}
	return ""
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// reasonFlags maps the HCM's local-reply reasons (streaminfo.Request.Error)
// to Envoy's response flags.
var reasonFlags = map[string]string{
	"route_not_found":          "NR",
	"no_route_configuration":   "NR",
	"cluster_not_found":        "NC",
	"no_healthy_upstream":      "UH",
	"upstream_overflow":        "UO",
	"upstream_connect_failure": "UF",
	"upstream_reset":           "UR",
	"upstream_request_timeout": "UT",
	"stream_idle_timeout":      "SI",
	"downstream_cancelled":     "DC",
	"http1.0_not_allowed":      "DPE",
	"too_many_headers":         "DPE",
}

// allFlags are the response flags Sift can set (for response_flag_filter).
var allFlags = map[string]bool{"NR": true, "NC": true, "UH": true, "UO": true, "UF": true, "UR": true,
	"UT": true, "SI": true, "DC": true, "DPE": true}
