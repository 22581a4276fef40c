package admin

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDashboard(t *testing.T) {
	t.Parallel()
	base := listen(t, minimal{})
	resp, err := http.Get(base + "/dashboard")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /dashboard = %s", resp.Status)
	}
	for k, want := range map[string]string{"Content-Type": "text/html; charset=utf-8",
		"Content-Security-Policy": dashboardCSP, "Cache-Control": "no-store"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	_, _, page := get(t, base+"/dashboard")
	if page != string(dashboardHTML) || !strings.HasPrefix(page, "<!doctype html>") || !strings.Contains(page, "<script>") {
		t.Fatalf("GET /dashboard is not the embedded page (%d bytes, embedded %d)", len(page), len(dashboardHTML))
	}

	// Self-contained: no external script, style, image or link.
	for _, m := range regexp.MustCompile(`(?i)(?:src|href)\s*=\s*"([^"]*)"`).FindAllStringSubmatch(page, -1) {
		if u := m[1]; !strings.HasPrefix(u, "/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the page refers to %q, outside the admin server", u)
		}
	}
	if strings.Contains(page, "://") || strings.Contains(page, "@import") {
		t.Error("the page names an absolute URL or imports a stylesheet")
	}

	// Every path the script fetches is an admin endpoint, and the page
	// reads the JSON forms of the ones it shows.
	s := &Server{}
	served := map[string]bool{}
	for _, e := range s.endpoints() {
		served[e.path] = true
	}
	var fetched []string
	for _, m := range regexp.MustCompile(`getJSON\("(/[a-z_/]*)`).FindAllStringSubmatch(page, -1) {
		fetched = append(fetched, m[1])
		if !served[m[1]] {
			t.Errorf("the page fetches %s, which the admin server does not serve", m[1])
		}
	}
	want := []string{"/stats", "/server_info", "/listeners", "/detections", "/detections/learned", "/clusters"}
	if diff := cmp.Diff(want, fetched); diff != "" {
		t.Errorf("fetched paths (-want +got):\n%s", diff)
	}

	// The index links it, for a browser and in /help.
	if _, _, idx := get(t, base+"/", "Accept", "text/html"); !strings.Contains(idx, `<a href="/dashboard">`) {
		t.Errorf("index lacks a link to /dashboard:\n%s", idx)
	}
	if _, _, help := get(t, base+"/help"); !strings.Contains(help, "  /dashboard:") {
		t.Errorf("/help lacks /dashboard:\n%s", help)
	}
}

func TestListenersFormats(t *testing.T) {
	t.Parallel()
	base := listen(t, minimal{})
	tests := []struct {
		name, query string
		wantCode    int
		want        string
	}{
		{"text", "", 200, "in::127.0.0.1:1\n"},
		{"json", "?format=json", 200, `{"listener_statuses":[{"local_address":{"socket_address":{"address":"127.0.0.1","port_value":1}},"name":"in"}]}`},
		{"bad format", "?format=xml", 400, "listeners: format: want text or json, got \"xml\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, body := get(t, base+"/listeners"+tt.query)
			if code != tt.wantCode {
				t.Errorf("code = %d, want %d", code, tt.wantCode)
			}
			if tt.name == "json" {
				body = compact(t, body)
			}
			if diff := cmp.Diff(tt.want, body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClustersJSON(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up := ln.Addr().(*net.TCPAddr)
	c := peakEWMACluster(t, "db", map[string]string{up.String(): "HEALTHY", "127.0.0.2:9": "UNHEALTHY"})
	base := listen(t, newFull(t, c))
	conn, err := c.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	code, ctype, body := get(t, base+"/clusters?format=json")
	if code != http.StatusOK || ctype != "application/json" {
		t.Fatalf("GET /clusters?format=json = %d %s: %s", code, ctype, body)
	}
	var got clustersJSON
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if len(got.Clusters) != 1 || len(got.Clusters[0].Hosts) != 2 {
		t.Fatalf("want one cluster with two hosts: %s", body)
	}
	// The EWMA cost depends on the connect time; check it is there, then compare the rest.
	for i, h := range got.Clusters[0].Hosts {
		if h.RTTMS == nil || h.Cost == nil || *h.Cost <= 0 {
			t.Errorf("host %d: ewma_rtt_ms %v, ewma_cost %v; want both, the cost positive", i, h.RTTMS, h.Cost)
		}
		got.Clusters[0].Hosts[i].RTTMS, got.Clusters[0].Hosts[i].Cost = nil, nil
	}
	host := func(addr string, port, cx int, health string) hostJSON {
		h := hostJSON{Weight: 1, Health: hostHealthJSON{EDS: health},
			Stats: []hostStatJSON{{"cx_active", int64(cx), "GAUGE"}, {"rq_active", 0, "GAUGE"}}}
		h.Address.Socket.Address, h.Address.Socket.Port = addr, port
		return h
	}
	want := clustersJSON{Clusters: []clusterJSON{{Name: "db", LBPolicy: "peak_ewma", Hosts: []hostJSON{
		host("127.0.0.1", up.Port, 1, "HEALTHY"), host("127.0.0.2", 9, 0, "UNHEALTHY")}}}}
	if h := got.Clusters[0].Hosts; len(h) == 2 && h[0].Address.Socket.Port != up.Port {
		h[0], h[1] = h[1], h[0]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/clusters?format=json (-want +got):\n%s", diff)
	}
	if code, _, body := get(t, base+"/clusters?format=xml"); code != http.StatusBadRequest ||
		body != "clusters: format: want text or json, got \"xml\"\n" {
		t.Errorf("GET /clusters?format=xml = %d %q", code, body)
	}
}

func compact(t *testing.T, js string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(js), &v); err != nil {
		t.Fatalf("%v: %s", err, js)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
