// Package parse reads the output of the packaged load tools: wrk (with
// bench/wrk/percentiles.lua), h2load, iperf3 -J and fortio -json.
package parse

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/siftmesh/sift/bench/internal/stats"
)

// Wrk is one wrk run.
type Wrk struct {
	Requests   int
	RPS        float64
	Errors     int // socket errors (connect/read/write/timeout) and non-2xx/3xx
	P50, P99   float64
	P999       float64
	Curve      []stats.Point // from the percentiles.lua script, ms
	RawLatency map[float64]float64
}

var (
	wrkRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkReqs     = regexp.MustCompile(`(?m)^\s+(\d+) requests in `)
	wrkSockErr  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkDistLine = regexp.MustCompile(`^\s+(\d+(?:\.\d+)?)%\s+([0-9.]+)(us|ms|s)\s*$`)
)

// ParseWrk reads wrk's standard output. The latency percentiles come from
// the script's "SIFTBENCH pN micros" lines when present (p99.9 needs them),
// else from wrk's own --latency distribution.
func ParseWrk(out string) (Wrk, error) {
	var w Wrk
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return w, fmt.Errorf("wrk: no Requests/sec in output: %q", firstLine(out))
	}
	w.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := wrkReqs.FindStringSubmatch(out); m != nil {
		w.Requests, _ = strconv.Atoi(m[1])
	}
	if m := wrkSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			w.Errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.Atoi(m[1])
		w.Errors += n
	}
	w.RawLatency = map[float64]float64{}
	inDist := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "SIFTBENCH p") {
			f := strings.Fields(line)
			if len(f) != 3 {
				continue
			}
			p, err1 := strconv.ParseFloat(strings.TrimPrefix(f[1], "p"), 64)
			us, err2 := strconv.ParseFloat(f[2], 64)
			if err1 == nil && err2 == nil {
				w.Curve = append(w.Curve, stats.Point{Percentile: p, Millis: us / 1000})
			}
			continue
		}
		if strings.Contains(line, "Latency Distribution") {
			inDist = true
			continue
		}
		if inDist {
			m := wrkDistLine.FindStringSubmatch(line)
			if m == nil {
				inDist = false
				continue
			}
			p, _ := strconv.ParseFloat(m[1], 64)
			w.RawLatency[p] = toMillis(m[2], m[3])
		}
	}
	sort.Slice(w.Curve, func(i, j int) bool { return w.Curve[i].Percentile < w.Curve[j].Percentile })
	lookup := func(p float64) float64 {
		for _, pt := range w.Curve {
			if pt.Percentile == p {
				return pt.Millis
			}
		}
		if v, ok := w.RawLatency[p]; ok {
			return v
		}
		return nan
	}
	w.P50, w.P99, w.P999 = lookup(50), lookup(99), lookup(99.9)
	return w, nil
}

// H2load is one h2load run.
type H2load struct {
	RPS                        float64
	Done, Succeeded, Failed    int
	Errored, Timeout           int
	MeanMs, MinMs, MaxMs, SDMs float64
	Protocol                   string
}

var (
	h2Finished = regexp.MustCompile(`finished in [0-9.]+m?s, ([0-9.]+) req/s`)
	h2Requests = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2Time     = regexp.MustCompile(`time for request:\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)`)
	h2Proto    = regexp.MustCompile(`Application protocol: (\S+)`)
)

// ParseH2load reads h2load's output.
func ParseH2load(out string) (H2load, error) {
	var h H2load
	m := h2Finished.FindStringSubmatch(out)
	if m == nil {
		return h, fmt.Errorf("h2load: no 'finished in' line: %q", lastLine(out))
	}
	h.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := h2Requests.FindStringSubmatch(out); m != nil {
		n := make([]int, 8)
		for i := 1; i <= 7; i++ {
			n[i], _ = strconv.Atoi(m[i])
		}
		h.Done, h.Succeeded, h.Failed, h.Errored, h.Timeout = n[3], n[4], n[5], n[6], n[7]
	}
	if m := h2Time.FindStringSubmatch(out); m != nil {
		h.MinMs, h.MaxMs, h.MeanMs, h.SDMs = toMillis(m[1], m[2]), toMillis(m[3], m[4]), toMillis(m[5], m[6]), toMillis(m[7], m[8])
	}
	if m := h2Proto.FindStringSubmatch(out); m != nil {
		h.Protocol = m[1]
	}
	if h.Succeeded == 0 {
		return h, fmt.Errorf("h2load: no request succeeded (protocol %q)", h.Protocol)
	}
	return h, nil
}

// Iperf3 is one iperf3 -J client run.
type Iperf3 struct {
	Streams        int
	BytesReceived  int64
	Seconds        float64
	GbitsPerSecond float64 // receiver side
	Retransmits    int
	SenderCPUPct   float64
	ReceiverCPUPct float64
}

// ParseIperf3 reads iperf3's -J output from the client.
func ParseIperf3(out []byte) (Iperf3, error) {
	var doc struct {
		Start struct {
			TestStart struct {
				NumStreams int `json:"num_streams"`
			} `json:"test_start"`
		} `json:"start"`
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			CPU struct {
				HostTotal   float64 `json:"host_total"`
				RemoteTotal float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
		Error string `json:"error"`
	}
	var r Iperf3
	if err := json.Unmarshal(out, &doc); err != nil {
		return r, fmt.Errorf("iperf3: %w: %q", err, firstLine(string(out)))
	}
	if doc.Error != "" {
		return r, errors.New("iperf3: " + doc.Error)
	}
	if doc.End.SumReceived.Bytes == 0 {
		return r, errors.New("iperf3: no bytes received")
	}
	r.Streams = doc.Start.TestStart.NumStreams
	r.BytesReceived = doc.End.SumReceived.Bytes
	r.Seconds = doc.End.SumReceived.Seconds
	r.GbitsPerSecond = doc.End.SumReceived.BitsPerSecond / 1e9
	r.Retransmits = doc.End.SumSent.Retransmits
	r.SenderCPUPct, r.ReceiverCPUPct = doc.End.CPU.HostTotal, doc.End.CPU.RemoteTotal
	return r, nil
}

// Fortio is one fortio load -json run.
type Fortio struct {
	ActualQPS    float64
	RequestedQPS string
	Count        int
	OK           int // HTTP 200s
	P50, P90     float64
	P99, P999    float64
	AvgMs, MaxMs float64
	Curve        []stats.Point
	buckets      []fortioBucket
}

type fortioBucket struct {
	startMs float64
	count   int
}

// ShareAtLeast is the percentage of requests that took at least ms
// milliseconds, counted from fortio's histogram buckets (whose Start is the
// smallest sample they hold, so a threshold between two clusters of
// latencies is exact).
func (f Fortio) ShareAtLeast(ms float64) float64 {
	if f.Count == 0 {
		return nan
	}
	n := 0
	for _, b := range f.buckets {
		if b.startMs >= ms {
			n += b.count
		}
	}
	return 100 * float64(n) / float64(f.Count)
}

// ParseFortio reads fortio's JSON result file.
func ParseFortio(out []byte) (Fortio, error) {
	var doc struct {
		RequestedQPS      string
		ActualQPS         float64
		RetCodes          map[string]int
		DurationHistogram struct {
			Count int
			Min   float64
			Max   float64
			Avg   float64
			Data  []struct {
				Start, End, Percent float64
				Count               int
			}
			Percentiles []struct {
				Percentile float64
				Value      float64
			}
		}
	}
	var f Fortio
	if err := json.Unmarshal(out, &doc); err != nil {
		return f, fmt.Errorf("fortio: %w", err)
	}
	h := doc.DurationHistogram
	f.ActualQPS, f.RequestedQPS, f.Count = doc.ActualQPS, doc.RequestedQPS, h.Count
	f.OK = doc.RetCodes["200"]
	f.AvgMs, f.MaxMs = h.Avg*1000, h.Max*1000
	f.P50, f.P90, f.P99, f.P999 = nan, nan, nan, nan
	for _, p := range h.Percentiles {
		switch p.Percentile {
		case 50:
			f.P50 = p.Value * 1000
		case 90:
			f.P90 = p.Value * 1000
		case 99:
			f.P99 = p.Value * 1000
		case 99.9:
			f.P999 = p.Value * 1000
		}
	}
	// The curve: the upper edge of each histogram bucket at its cumulative
	// percentile (fortio's buckets are fine enough for a plot).
	if h.Count > 0 {
		f.Curve = append(f.Curve, stats.Point{Percentile: 0, Millis: h.Min * 1000})
		for _, d := range h.Data {
			f.Curve = append(f.Curve, stats.Point{Percentile: d.Percent, Millis: d.End * 1000})
			f.buckets = append(f.buckets, fortioBucket{d.Start * 1000, d.Count})
		}
	}
	if h.Count == 0 {
		return f, errors.New("fortio: no request completed")
	}
	return f, nil
}

var nan = func() float64 { v, _ := strconv.ParseFloat("NaN", 64); return v }()

func toMillis(v, unit string) float64 {
	x, _ := strconv.ParseFloat(v, 64)
	switch unit {
	case "us":
		return x / 1000
	case "s":
		return x * 1000
	}
	return x
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
