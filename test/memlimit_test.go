package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestMemoryLimitFromCgroup: sift-proxy started in a memory cgroup with a
// 512 MiB limit sets Go's soft limit to 90 % of it; GOMEMLIMIT overrides
// that. The cgroup is a real one, created under this process's own.
func TestMemoryLimitFromCgroup(t *testing.T) {
	t.Parallel()
	dir, limitFile := newMemoryCgroup(t)
	const hard = 512 << 20
	if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(strconv.Itoa(hard)), 0o644); err != nil {
		t.Skipf("cannot set %s: %v", limitFile, err)
	}
	bin := siftProxyBinary(t)
	boot := writeBootstrap(t, `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources: {}
`, nil)
	for _, tc := range []struct {
		name, env string
		want      int64
	}{
		{"from the cgroup", "", hard * 9 / 10},
		{"GOMEMLIMIT wins", "GOMEMLIMIT=100MiB", 100 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The shell joins the cgroup, then becomes sift-proxy.
			script := `echo $$ > "$0/cgroup.procs" && ` + tc.env + ` exec "$@"`
			p := startProcess(t, []string{"sh", "-c", script, dir, bin, "-c", boot, "--log-format", "json"}, "admin")
			resp, err := http.Get("http://" + p.addrs["admin"] + "/memory")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var m map[string]string
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("/memory: %v\n%s", err, b)
			}
			if got := m["memory_limit"]; got != strconv.FormatInt(tc.want, 10) {
				t.Errorf("memory_limit = %s, want %d", got, tc.want)
			}
		})
	}
}

// newMemoryCgroup creates a child of this process's memory cgroup (v2, or
// v1's memory controller) and returns its directory and limit file name;
// it is removed when the test ends. It skips the test where cgroups cannot
// be created (not root, no memory controller).
func newMemoryCgroup(t *testing.T) (dir, limitFile string) {
	t.Helper()
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skip("no /proc/self/cgroup:", err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skip("no /proc/self/mountinfo:", err)
	}
	var v1, v2 string
	for _, line := range strings.Split(string(cg), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1 = parts[2]
			}
		}
	}
	var bases []string
	for _, line := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || f[3] != "/" {
			continue
		}
		switch {
		case g[0] == "cgroup2" && v2 != "":
			if c, err := os.ReadFile(filepath.Join(f[4], v2, "cgroup.controllers")); err == nil && strings.Contains(string(c), "memory") {
				bases = append(bases, filepath.Join(f[4], v2)+"|memory.max")
			}
		case g[0] == "cgroup" && v1 != "" && strings.Contains(","+g[2]+",", ",memory,"):
			bases = append(bases, filepath.Join(f[4], v1)+"|memory.limit_in_bytes")
		}
	}
	for _, b := range bases {
		base, file, _ := strings.Cut(b, "|")
		dir := filepath.Join(base, fmt.Sprintf("sift-memlimit-%d-%d", os.Getpid(), len(t.Name())))
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		t.Cleanup(func() { os.Remove(dir) }) // after the processes in it ended (cleanups run last-in first-out)
		return dir, file
	}
	t.Skip("cannot create a memory cgroup here (needs root and a memory controller)")
	return "", ""
}
