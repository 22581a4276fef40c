package accesslog

import (
	"strconv"
	"time"
)

// timeFormat is a compiled %START_TIME(...)% format: Envoy's strftime
// subset. Supported: %Y %m %d %H %M %S %j %y %e %b %a %Z %z %s %T %F %%,
// and Envoy's %f, %1f…%9f (fractional seconds, nanoseconds for %f). Any
// other specifier is copied as it stands.
type timeFormat []timePiece

type timePiece struct {
	literal string
	spec    byte
	width   int // for 'f'
}

// defaultTimeFormat is Envoy's START_TIME default, 2006-01-02T15:04:05.000Z.
var defaultTimeFormat = parseTimeFormat("%Y-%m-%dT%H:%M:%S.%3fZ")

func parseTimeFormat(s string) timeFormat {
	var f timeFormat
	lit := 0
	flush := func(end int) {
		if lit < end {
			f = append(f, timePiece{literal: s[lit:end]})
		}
	}
	for i := 0; i < len(s)-1; i++ {
		if s[i] != '%' {
			continue
		}
		c := s[i+1]
		switch {
		case c >= '1' && c <= '9' && i+2 < len(s) && s[i+2] == 'f':
			flush(i)
			f = append(f, timePiece{spec: 'f', width: int(c - '0')})
			i += 2
			lit = i + 1
		case c == 'f':
			flush(i)
			f = append(f, timePiece{spec: 'f', width: 9})
			i++
			lit = i + 1
		case c == '%':
			flush(i)
			f = append(f, timePiece{literal: "%"})
			i++
			lit = i + 1
		case isTimeSpec(c):
			flush(i)
			f = append(f, timePiece{spec: c})
			i++
			lit = i + 1
		}
	}
	flush(len(s))
	return f
}

func isTimeSpec(c byte) bool {
	switch c {
	case 'Y', 'm', 'd', 'H', 'M', 'S', 'j', 'y', 'e', 'b', 'a', 'Z', 'z', 's', 'T', 'F':
		return true
	}
	return false
}

func appendPad(b []byte, n, width int) []byte {
	var tmp [20]byte
	d := strconv.AppendInt(tmp[:0], int64(n), 10)
	for i := len(d); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, d...)
}

func (f timeFormat) append(b []byte, t time.Time) []byte {
	for _, p := range f {
		switch p.spec {
		case 0:
			b = append(b, p.literal...)
		case 'Y':
			b = appendPad(b, t.Year(), 4)
		case 'y':
			b = appendPad(b, t.Year()%100, 2)
		case 'm':
			b = appendPad(b, int(t.Month()), 2)
		case 'd':
			b = appendPad(b, t.Day(), 2)
		case 'e':
			if t.Day() < 10 {
				b = append(b, ' ')
			}
			b = strconv.AppendInt(b, int64(t.Day()), 10)
		case 'H':
			b = appendPad(b, t.Hour(), 2)
		case 'M':
			b = appendPad(b, t.Minute(), 2)
		case 'S':
			b = appendPad(b, t.Second(), 2)
		case 'j':
			b = appendPad(b, t.YearDay(), 3)
		case 'b':
			b = append(b, t.Month().String()[:3]...)
		case 'a':
			b = append(b, t.Weekday().String()[:3]...)
		case 'Z':
			b = t.AppendFormat(b, "MST")
		case 'z':
			b = t.AppendFormat(b, "-0700")
		case 's':
			b = strconv.AppendInt(b, t.Unix(), 10)
		case 'T':
			b = t.AppendFormat(b, "15:04:05")
		case 'F':
			b = t.AppendFormat(b, "2006-01-02")
		case 'f':
			ns := t.Nanosecond()
			for i := p.width; i < 9; i++ {
				ns /= 10
			}
			b = appendPad(b, ns, p.width)
		}
	}
	return b
}
