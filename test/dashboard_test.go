package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// TestDashboardInChromium loads the admin server's /dashboard in real
// headless Chromium (Debian's chromium; .ci/run installs it) driven over the
// Chrome DevTools protocol, after a real HTTP connection through a real
// sift-proxy, and checks that the page renders it with no console error or
// uncaught exception; then makes a server-first connection and waits for the
// page's own refresh to show it, and uses the filter box.
func TestDashboardInChromium(t *testing.T) {
	t.Parallel()
	chromium := realBinary(t, "chromium", []string{"chromium", "chromium-browser"})
	yaml := `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: dash
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, server_first_grace_period: 0.01s}}
    filter_chains:
    - {name: web-chain, filter_chain_match: {application_protocols: [http/1.1]}, filters: {{http}}}
    default_filter_chain: {name: greeter-chain, filters: {{greeter}}}
  clusters:
` + staticCluster("greeter", greeter(t, "220 hi\r\n")) + strings.Replace(staticCluster("web", httpBackend(t, "http1")), "connect_timeout: 1s,",
		`connect_timeout: 1s, load_balancing_policy: {policies: [{typed_extension_config: {name: ewma, typed_config: {"@type": type.googleapis.com/sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma}}}]},`, 1)
	p := startProxy(t, yaml, map[string]string{"http": tcpProxy("web"), "greeter": tcpProxy("greeter")})
	addr := p.addr(t, "dash")

	// A real HTTP/1.1 connection through the proxy, before the page loads.
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if got := readAllWithin(t, c, 10*time.Second); !strings.Contains(got, "200 OK") {
		t.Fatalf("HTTP through the proxy: %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second) // a hang guard; a run takes a few seconds
	defer cancel()
	b := startChromium(ctx, t, chromium)
	page := b.newPage(ctx, t)
	page.call(ctx, t, "Runtime.enable", nil)
	page.call(ctx, t, "Log.enable", nil)
	page.call(ctx, t, "Page.enable", nil)
	page.call(ctx, t, "Page.navigate", map[string]any{"url": "http://" + p.AdminAddr() + "/dashboard"})

	// The page has rendered the connection once its first refresh is done
	// (the header says "updated" when every panel has been drawn).
	text := page.waitFor(ctx, t, "the HTTP connection", func(text string) bool {
		return strings.Contains(text, "updated ") && strings.Contains(text, addr) && strings.Contains(text, "http/1.1")
	})
	for _, want := range []string{
		"dash\t127.0.0.1:",                     // the listener and its address
		"http/1.1\n1 (100%)",                   // connections by protocol
		"match", "tls:no_match", "http1:match", // the reason and the verdicts
		"web-chain", "dispatched",
		"greeter round_robin\n", "web peak_ewma\n", " µs", // the clusters, one with EWMA costs
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the page lacks %q:\n%s", want, text)
		}
	}

	// A server-first connection made now shows on a later refresh, in the
	// decisions and in the learned destinations.
	c = dial(t, addr)
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	c.Close()
	text = page.waitFor(ctx, t, "the server-first connection", func(text string) bool {
		return strings.Contains(text, "server_first") && strings.Contains(text, "greeter-chain") &&
			strings.Contains(text, "opaque\n1 (50%)") && strings.Contains(text, "counting")
	})

	// The filter box keeps the matching decisions.
	var rows int
	page.eval(ctx, t, `(() => { const f = document.getElementById("filter"); f.value = "server_first";
		f.dispatchEvent(new Event("input")); return document.querySelectorAll("#detections tbody tr").length; })()`, &rows)
	if rows != 1 {
		t.Errorf("filtered to server_first: %d rows, want 1", rows)
	}

	if out := os.Getenv("SIFT_DASHBOARD_SCREENSHOT"); out != "" {
		page.screenshot(ctx, t, out)
	}
	if errs := page.errors(); len(errs) > 0 {
		t.Errorf("console errors or exceptions:\n%s\npage:\n%s", strings.Join(errs, "\n"), text)
	}
}

// browser is a headless Chromium with a DevTools protocol connection to it.
type browser struct {
	ws *websocket.Conn

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpMessage
	events  []cdpMessage
	err     error
}

// cdpMessage is one DevTools protocol message: a reply (ID set) or an event.
type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// startChromium starts Chromium with a new profile and connects to its
// browser endpoint (DevToolsActivePort). It is stopped when the test ends.
func startChromium(ctx context.Context, t *testing.T, path string) *browser {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--disable-extensions", "--mute-audio", "--remote-debugging-port=0",
		"--remote-allow-origins=http://127.0.0.1", "--user-data-dir="+dir, "about:blank")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	// Its own process group, so that its helper processes end with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		case <-time.After(5 * time.Second): // Browser.close was not enough
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})

	var port, wsPath string
	for port == "" {
		if b, err := os.ReadFile(filepath.Join(dir, "DevToolsActivePort")); err == nil {
			if lines := strings.Split(string(b), "\n"); len(lines) >= 2 && lines[1] != "" {
				port, wsPath = lines[0], lines[1]
				break
			}
		}
		select {
		case <-exited:
			t.Fatalf("chromium exited before listening: %s", stderr.String())
		case <-ctx.Done():
			t.Fatalf("chromium wrote no DevToolsActivePort: %s", stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	cfg, err := websocket.NewConfig("ws://127.0.0.1:"+port+wsPath, "http://127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := cfg.DialContext(ctx)
	if err != nil {
		t.Fatalf("devtools: %v", err)
	}
	b := &browser{ws: ws, pending: map[int]chan cdpMessage{}}
	read := make(chan struct{})
	go b.read(read)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		b.call(ctx, "", "Browser.close", nil)
		ws.Close()
		<-read
	})
	return b
}

// read dispatches replies to their callers and keeps events, until the
// connection ends.
func (b *browser) read(done chan struct{}) {
	defer close(done)
	for {
		var m cdpMessage
		if err := websocket.JSON.Receive(b.ws, &m); err != nil {
			b.mu.Lock()
			b.err = err
			for id, ch := range b.pending {
				close(ch)
				delete(b.pending, id)
			}
			b.mu.Unlock()
			return
		}
		b.mu.Lock()
		if m.ID != 0 {
			if ch, ok := b.pending[m.ID]; ok {
				ch <- m
				delete(b.pending, m.ID)
			}
		} else {
			b.events = append(b.events, m)
		}
		b.mu.Unlock()
	}
}

// call sends a command (to a page's session, or the browser when session
// is "") and waits for its reply.
func (b *browser) call(ctx context.Context, session, method string, params any) (json.RawMessage, error) {
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		return nil, fmt.Errorf("devtools: %w", b.err)
	}
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	if err := websocket.JSON.Send(b.ws, msg); err != nil {
		return nil, fmt.Errorf("devtools: %s: %w", method, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("devtools: %s: connection closed", method)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("devtools: %s: %s (%d)", method, m.Error.Message, m.Error.Code)
		}
		return m.Result, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("devtools: %s: %w", method, ctx.Err())
	}
}

// page is one tab, attached in flat mode.
type page struct {
	b       *browser
	session string
}

func (b *browser) newPage(ctx context.Context, t *testing.T) *page {
	t.Helper()
	var target struct {
		TargetID string `json:"targetId"`
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	res, err := b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"})
	if err == nil {
		err = json.Unmarshal(res, &target)
	}
	if err == nil {
		res, err = b.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true})
	}
	if err == nil {
		err = json.Unmarshal(res, &att)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &page{b: b, session: att.SessionID}
}

func (p *page) call(ctx context.Context, t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	res, err := p.b.call(ctx, p.session, method, params)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// eval evaluates a JavaScript expression in the page and decodes its value
// into v; an exception fails the test.
func (p *page) eval(ctx context.Context, t *testing.T, expr string, v any) {
	t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(p.call(ctx, t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}), &r); err != nil {
		t.Fatal(err)
	}
	if r.Exception != nil {
		t.Fatalf("evaluating %s: %s", expr, r.Exception.Text)
	}
	if err := json.Unmarshal(r.Result.Value, v); err != nil {
		t.Fatalf("evaluating %s: %v (%s)", expr, err, r.Result.Value)
	}
}

// waitFor polls the page's text (document.body.innerText) until ok accepts
// it, and returns it; it fails the test when the context ends first.
func (p *page) waitFor(ctx context.Context, t *testing.T, what string, ok func(string) bool) string {
	t.Helper()
	var text string
	for {
		if err := ctx.Err(); err != nil {
			t.Fatalf("the page never showed %s: %v\nconsole: %q\npage:\n%s", what, err, p.errors(), text)
		}
		res, err := p.b.call(ctx, p.session, "Runtime.evaluate",
			map[string]any{"expression": "document.body ? document.body.innerText : ''", "returnByValue": true})
		var r struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		if err == nil && json.Unmarshal(res, &r) == nil {
			text = r.Result.Value
			if ok(text) {
				return text
			}
		} else if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot saves the page as a PNG (SIFT_DASHBOARD_SCREENSHOT=file.png,
// for a person to look at the page).
func (p *page) screenshot(ctx context.Context, t *testing.T, path string) {
	t.Helper()
	p.call(ctx, t, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false})
	var r struct {
		Data []byte `json:"data"`
	}
	if err := json.Unmarshal(p.call(ctx, t, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}), &r); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, r.Data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// errors returns the page's console errors, uncaught exceptions and error
// log entries (failed loads, CSP violations) so far.
func (p *page) errors() []string {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	var out []string
	for _, e := range p.b.events {
		if e.SessionID != p.session {
			continue
		}
		switch e.Method {
		case "Runtime.exceptionThrown":
			out = append(out, "exception: "+string(e.Params))
		case "Runtime.consoleAPICalled":
			var c struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(e.Params, &c) == nil && (c.Type == "error" || c.Type == "assert") {
				out = append(out, "console: "+string(e.Params))
			}
		case "Log.entryAdded":
			var l struct {
				Entry struct {
					Level string `json:"level"`
				} `json:"entry"`
			}
			if json.Unmarshal(e.Params, &l) == nil && l.Entry.Level == "error" {
				out = append(out, "log: "+string(e.Params))
			}
		}
	}
	return out
}
