package detect

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/siftmesh/sift/filters"
)

// reasonInterrupted ends a Run whose Peek was interrupted (the server spoke
// first); the detect filter replaces it with the race's reason.
const reasonInterrupted = "interrupted"

// Protocols named by this package (the HTTP ones are filters.Protocol*).
const (
	// ProtocolTLS is the tls sniffer's Result.Protocol.
	ProtocolTLS = "tls"
	// ProtocolOpaque is Detection.Protocol when no sniffer matched.
	ProtocolOpaque = "opaque"
)

// Outcome is what Run found.
type Outcome struct {
	// Reason says why detection ended: filters.ReasonMatch, ReasonNoMatch
	// (every sniffer declined), ReasonEOF (the stream ended before a verdict),
	// ReasonTimeout (the deadline passed) or ReasonByteCap (the undecided
	// sniffers need more than maxBytes, or the Peeker's own cap was reached).
	Reason string
	// Sniffer names the matching sniffer when Reason is ReasonMatch.
	Sniffer string
	// Result is the matching sniffer's result when Reason is ReasonMatch.
	Result Result
	// Bytes is how many bytes had been peeked when Run returned.
	Bytes int
	// VerdictCodes are the sniffers' last answers, in sniffer order (the
	// first filters.MaxRecordedVerdicts of them), as filters.Detection
	// records them; NumVerdicts counts them.
	VerdictCodes [filters.MaxRecordedVerdicts]uint8
	NumVerdicts  uint8
}

// record fills o's verdict codes from the sniffers' last answers.
func (o *Outcome) record(last []Verdict) {
	n := min(len(last), len(o.VerdictCodes))
	for i := range n {
		o.VerdictCodes[i] = uint8(last[i]) // Verdict's values are filters' verdict codes (sniffer.go)
	}
	o.NumVerdicts = uint8(n)
}

// Protocol is the detected protocol: the match's protocol, or ProtocolOpaque.
func (o Outcome) Protocol() string {
	if o.Reason == filters.ReasonMatch {
		return o.Result.Protocol
	}
	return ProtocolOpaque
}

// Run is the detection loop: it asks every sniffer about the bytes peeked so
// far and peeks for more only while some sniffer needs more, until one
// matches (the first to match in slice order wins), all decline, the stream
// ends, the deadline passes, or the byte cap is reached.
//
// Each round it shows p.Peeked() to every sniffer that has not declined yet.
// If none matches and some still need more, it calls p.Peek for the smallest
// length at which any of them could decide (the least of their Need, or one
// more byte), so a sniffer that can decide early is never kept waiting for
// bytes another one wants. Peek reads whatever has arrived, so this costs no
// extra round trips. When the stream ends, sniffers still undecided are asked
// once more with atEOF set; a sniffer that still answers NeedMore then is
// taken to decline.
//
// maxBytes caps the bytes sniffed (≤ 0: only the Peeker's own cap applies):
// sniffers are shown at most maxBytes bytes even when a read brought more, so
// the verdict does not depend on how the stream was segmented, and when every
// undecided sniffer needs more than maxBytes, Run stops at once with
// ReasonByteCap instead of reading up to the cap. deadline is passed to
// Peek (zero: the listener filters' deadline only).
//
// Run returns an error only for a read error other than end of stream,
// timeout or cap (a reset connection, say); the error is prefixed "detect: ".
// It blocks only inside p.Peek, never past the deadline.
//
// Run keeps no state between calls — the Peeker holds the bytes and sniffers
// are pure — so detection can be run in steps: the detect filter runs it with
// the grace period as deadline first, and again, with the rest of the budget,
// once the server-first race has been decided for the client (see
// Filter.OnAccept). Plugin sniffers are simply appended to sniffers, after
// the built-ins (see Builtins).
func Run(p filters.Peeker, sniffers []Sniffer, maxBytes int, deadline time.Time) (Outcome, error) {
	o, err := run(p, sniffers, maxBytes, deadline)
	if err != nil {
		return o, fmt.Errorf("detect: peek: %w", err)
	}
	return o, nil
}

// run is Run, returning the Peeker's error as is.
func run(p filters.Peeker, sniffers []Sniffer, maxBytes int, deadline time.Time) (Outcome, error) {
	var lastBuf [filters.MaxRecordedVerdicts]Verdict // no allocation for the usual few sniffers
	last := lastBuf[:]
	if len(sniffers) > len(lastBuf) {
		last = make([]Verdict, len(sniffers))
	} else {
		last = last[:len(sniffers)]
	}
	var o Outcome
	done := func(reason string, n int) (Outcome, error) {
		o.Reason, o.Bytes = reason, n
		o.record(last)
		return o, nil
	}
	var (
		b     = p.Peeked()
		atEOF bool
		stop  string // the reason to stop once this round's sniffing is done
	)
	for {
		// Sniffers see at most maxBytes, whatever the reads brought in, so
		// the verdict does not depend on how the bytes were segmented.
		view, viewEOF := b, atEOF
		if maxBytes > 0 && len(view) > maxBytes {
			view, viewEOF = view[:maxBytes], false
		}
		next := -1          // the next length worth peeking for
		eofDecided := false // some sniffer decided only because the stream ended
		for i, s := range sniffers {
			if last[i] == NoMatch {
				continue
			}
			r := s.Sniff(view, false)
			if r.Verdict == NeedMore && viewEOF {
				eofDecided = true
				r = s.Sniff(view, true)
			}
			last[i] = r.Verdict
			switch r.Verdict {
			case Match:
				o.Sniffer, o.Result = s.Name(), r
				return done(filters.ReasonMatch, len(b))
			case NeedMore:
				if !viewEOF {
					n := r.Need
					if n <= len(view) {
						n = len(view) + 1
					}
					if next < 0 || n < next {
						next = n
					}
					continue
				}
			}
			last[i] = NoMatch
		}
		switch {
		case next < 0 && eofDecided:
			return done(filters.ReasonEOF, len(b))
		case next < 0:
			return done(filters.ReasonNoMatch, len(b))
		case stop != "":
			return done(stop, len(b))
		case maxBytes > 0 && next > maxBytes:
			return done(filters.ReasonByteCap, len(b))
		}
		var err error
		b, err = p.Peek(next, deadline)
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			atEOF = true
		case errors.Is(err, os.ErrDeadlineExceeded):
			stop = filters.ReasonTimeout
		case errors.Is(err, filters.ErrPeekCap):
			stop = filters.ReasonByteCap
		case errors.Is(err, filters.ErrPeekInterrupted):
			stop = reasonInterrupted
		default:
			return Outcome{Bytes: len(b)}, err
		}
	}
}
