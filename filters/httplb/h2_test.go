package httplb_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/siftmesh/sift/server"
)

// startH2Proxy starts an in-process sift-proxy whose listener takes HTTP/2
// with prior knowledge (codec AUTO) and whose cluster speaks HTTP/2 to the
// h2c backend handler; it returns the proxy's address and an h2c client.
func startH2Proxy(t *testing.T, backend http.Handler) (string, *http.Client) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bs := &http.Server{Handler: backend, Protocols: new(http.Protocols)}
	bs.Protocols.SetUnencryptedHTTP2(true)
	go bs.Serve(l)
	t.Cleanup(func() { bs.Close() })
	_, port, _ := net.SplitHostPort(l.Addr().String())
	h2 := `typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}, `
	yaml := strings.Replace(fmt.Sprintf(benchBootstrap, port), "lb_policy: ROUND_ROBIN, ", "lb_policy: ROUND_ROBIN, "+h2, 1)
	srv := startServer(t, yaml, server.Options{})
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return srv.Listeners().Get("http").Addr().String(), &http.Client{Transport: tr}
}

// TestH2FramesNotHeldForABatch: through the proxy (HTTP/2 both sides, writes
// coalesced on both connections), each frame that has nothing after it
// yet goes out at once. A bidirectional stream plays ping-pong: the
// client sends a ping only after the pong arrived, and the backend answers
// only after the ping arrived, so a frame held back waiting for company
// would stall the exchange (the test would time out). Then the response
// ends with gRPC-style trailers.
func TestH2FramesNotHeldForABatch(t *testing.T) {
	addr, client := startH2Proxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush() // headers alone, before any body
		buf := make([]byte, 4)
		for {
			if _, err := io.ReadFull(r.Body, buf); err != nil {
				break
			}
			w.Write([]byte("pong"))
			http.NewResponseController(w).Flush()
		}
		w.Header().Set("Grpc-Status", "0")
	}))
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/echo", pr)
	req.Header.Set("Content-Type", "application/grpc")
	// The response headers arrive before the request has a body byte: the
	// backend's HEADERS (and the request's) were not held.
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4)
	for i := range 50 {
		if _, err := pw.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "pong" {
			t.Fatalf("round %d: %q %v", i, buf, err)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("after the last pong: %q %v", rest, err)
	}
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
		t.Errorf("trailer Grpc-Status %q, want 0", got)
	}
}

// TestH2ConcurrentStreams: many streams on one downstream connection, with
// their frames coalesced into shared writes each way, each get their own
// body and trailers intact.
func TestH2ConcurrentStreams(t *testing.T) {
	addr, client := startH2Proxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Len")
		w.Write([]byte("echo:"))
		w.Write(body)
		w.Header().Set("X-Len", fmt.Sprint(len(body)))
	}))
	const streams = 64
	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := strings.Repeat(fmt.Sprintf("%d-", i), 1+i*37)
			resp, err := client.Post("http://"+addr+"/", "text/plain", strings.NewReader(msg))
			if err != nil {
				t.Error(err)
				return
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(got) != "echo:"+msg || resp.Trailer.Get("X-Len") != fmt.Sprint(len(msg)) {
				t.Errorf("stream %d: %d bytes, trailer %q, %v", i, len(got), resp.Trailer.Get("X-Len"), err)
			}
		}()
	}
	wg.Wait()
}

// TestH2LargeBodies: a megabyte each way on one stream, past the flow
// control windows and the coalescing buffer's bound (large frames written
// directly, small ones queued, a writer waiting for the flusher), arrive
// intact.
func TestH2LargeBodies(t *testing.T) {
	addr, client := startH2Proxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			return
		}
		w.Header().Set("X-Sum", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set("X-Len", fmt.Sprint(n))
		chunk := make([]byte, 1000)
		for i := range 1000 { // 1 MB in small writes, flushed now and then
			chunk[0] = byte(i)
			w.Write(chunk)
			if i%97 == 0 {
				http.NewResponseController(w).Flush()
			}
		}
	}))
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = byte(i * 31)
	}
	resp, err := client.Post("http://"+addr+"/", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := sha256.Sum256(body)
	if resp.Header.Get("X-Sum") != hex.EncodeToString(sum[:]) || resp.Header.Get("X-Len") != fmt.Sprint(len(body)) {
		t.Fatalf("backend got %s bytes, sum %s", resp.Header.Get("X-Len"), resp.Header.Get("X-Sum"))
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil || len(got) != 1000*1000 {
		t.Fatalf("response: %d bytes, %v", len(got), err)
	}
	for i := range 1000 {
		if got[i*1000] != byte(i) {
			t.Fatalf("response chunk %d out of order", i)
		}
	}
}
