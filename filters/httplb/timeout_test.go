package httplb_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/server"
)

// TestHTTP1ConnectionIdleTimeout: a keep-alive connection on the fast path
// closes once it has waited idle_timeout for a request (between 1 and 1.25
// timeouts: the idle timer samples every quarter), not before, and requests
// arriving more often than that keep it open however long it lives.
func TestHTTP1ConnectionIdleTimeout(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	t.Cleanup(backend.Close)
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())
	const idle = 400 * time.Millisecond
	addr := startBenchWith(t, port, false, "          common_http_protocol_options: {idle_timeout: 0.4s}\n")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func() {
		t.Helper()
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	// Busy for 3 timeouts, a request every quarter timeout: still open.
	for end := time.Now().Add(3 * idle); time.Now().Before(end); {
		get()
		time.Sleep(idle / 4)
	}
	get()
	last := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := br.Read(make([]byte, 1))
	quiet := time.Since(last)
	if n != 0 || err != io.EOF {
		t.Fatalf("after the idle timeout: read %d bytes, %v; want the connection closed", n, err)
	}
	if quiet < idle {
		t.Errorf("closed %v after the last response, before the idle timeout (%v)", quiet, idle)
	}
	t.Logf("closed %v after the last response (idle_timeout %v)", quiet, idle)
}

// TestStreamIdleTimeoutActivity: the stream idle timeout counts response
// bytes as activity (a counter, no clock per write): a response that
// trickles for 4 timeouts with gaps of a quarter timeout completes, and one
// that stalls longer than the timeout gets cut.
func TestStreamIdleTimeoutActivity(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gap := 50 * time.Millisecond
		if r.URL.Path == "/stall" {
			gap = time.Second
		}
		for range 16 {
			io.WriteString(w, "x")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(gap):
			case <-r.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(backend.Close)
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())
	addr := startBenchWith(t, port, false, "          stream_idle_timeout: 0.2s\n")
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	resp, err := client.Get("http://" + addr + "/trickle")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != strings.Repeat("x", 16) {
		t.Errorf("trickling response: %q, %v; want 16 bytes", body, err)
	}

	resp, err = client.Get("http://" + addr + "/stall")
	if err != nil {
		t.Fatal(err)
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && len(body) == 16 {
		t.Errorf("stalled response completed: the stream idle timeout did not fire")
	}
}

// TestHTTP1DrainEndAbortsUpstream: when the drain time ends, a fast-path
// request still waiting for its upstream — with no route or stream idle
// timeout to end it — is aborted with its connection (the upstream pool's
// abort hangs on the connection's end, upstreamAbort), so that the
// shutdown completes.
func TestHTTP1DrainEndAbortsUpstream(t *testing.T) {
	arrived := make(chan struct{}, 1)
	upstreamGone := make(chan struct{}, 1)
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-r.Context().Done(): // the proxy closed the upstream connection
			upstreamGone <- struct{}{}
		case <-release:
		}
	}))
	defer backend.Close()
	defer close(release)
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())
	yaml := strings.Replace(fmt.Sprintf(benchBootstrap, port), "codec_type: AUTO\n", "codec_type: AUTO\n          stream_idle_timeout: 0s\n", 1)
	yaml = strings.Replace(yaml, "route: {cluster: c}", "route: {cluster: c, timeout: 0s}", 1)
	srv := startServer(t, yaml, server.Options{DrainTime: 200 * time.Millisecond})
	c, err := net.Dial("tcp", srv.Listeners().Get("http").Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the backend")
	}
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown still waits 10 s after the drain time: the request waiting upstream was not aborted")
	}
	select {
	case <-upstreamGone:
	case <-time.After(5 * time.Second):
		t.Error("the upstream connection stayed open after the drain time")
	}
}
