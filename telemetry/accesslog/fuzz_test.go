package accesslog

import (
	"strings"
	"testing"
)

// FuzzParseFormat: a format string is untrusted configuration. Parsing must
// never panic; a parsed format must format both kinds of record; a string
// without '%' is one literal and formats to itself.
func FuzzParseFormat(f *testing.F) {
	for _, s := range []string{DefaultFormat, "%START_TIME(%s.%3f %Y)%", "%REQ(A?B):3% %RESP(X)%", "100%",
		"%DURATION", "%REQ(", "%%", "%SIFT_DETECTED_PROTOCOL%|%DOWNSTREAM_REMOTE_ADDRESS%", "plain", "%START_TIME(%9f%)%"} {
		f.Add(s)
	}
	req, conn := testRequest(), testConn()
	f.Fuzz(func(t *testing.T, s string) {
		tf, err := parseFormat(s)
		if err != nil {
			return
		}
		tf.appendText(nil, &entry{req: req})
		tf.appendText(nil, &entry{conn: conn})
		if !strings.Contains(s, "%") {
			if got := string(tf.appendText(nil, &entry{conn: conn})); got != s {
				t.Fatalf("literal %q formatted as %q", s, got)
			}
		}
	})
}
