package tcpproxy

import (
	"testing"
)

func TestOutLimit(t *testing.T) {
	for _, tc := range []struct {
		warmed, left, want int
	}{
		{0, 100, 100},                             // a small round goes out whole
		{0, warmChunk, warmChunk},                 // exactly one chunk
		{0, warmChunk + 1, warmChunk},             // bulk while warming: one chunk per call
		{0, maxPipe, warmChunk},                   // a full pipe while warming
		{warmBytes - 1, maxPipe, warmChunk},       // the last warm-up call
		{warmBytes, maxPipe, maxPipe},             // warmed up: all at once
		{warmBytes + warmChunk, 1 << 18, 1 << 18}, // and stays so
	} {
		sp := splicer{warmed: tc.warmed}
		if got := sp.outLimit(tc.left); got != tc.want {
			t.Errorf("warmed %d, left %d: outLimit = %d, want %d", tc.warmed, tc.left, got, tc.want)
		}
	}
}
