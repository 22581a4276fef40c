package accesslog

import (
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

// BenchmarkFormatDefault formats one HTTP line in Envoy's default format
// into a pooled buffer, as a file logger does per request.
func BenchmarkFormatDefault(b *testing.B) {
	f, err := parseFormat(DefaultFormat)
	if err != nil {
		b.Fatal(err)
	}
	e := &entry{req: testRequest()}
	b.ReportAllocs()
	for b.Loop() {
		l := getLine()
		l.b = f.appendText(l.b, e)
		putLine(l)
	}
}

// BenchmarkFormatJSON formats one line of a typed JSON format.
func BenchmarkFormatJSON(b *testing.B) {
	st, _ := structpb.NewStruct(map[string]any{"start": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
		"code": "%RESPONSE_CODE%", "dur": "%DURATION%", "up": "%UPSTREAM_HOST%", "proto": "%SIFT_DETECTED_PROTOCOL%"})
	jf, err := parseJSONFormat(st, true)
	if err != nil {
		b.Fatal(err)
	}
	e := &entry{req: testRequest()}
	b.ReportAllocs()
	for b.Loop() {
		l := getLine()
		l.b, l.scratch = jf.appendJSON(l.b, l.scratch, e)
		putLine(l)
	}
}
