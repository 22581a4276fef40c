// Package memlimit gives a Go process in a container a soft memory limit
// below the container's hard one, as a sidecar should have: near the
// limit Go's collector works harder instead of the kernel killing the
// process (GOMEMLIMIT, runtime/debug.SetMemoryLimit).
//
// The limit is read from the process's own cgroup (v2 memory.max, or v1
// memory.limit_in_bytes), the smallest along the path from the cgroup
// mount's root to the process's cgroup, as the kernel enforces it.
package memlimit

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// Fraction of the container's limit taken as the soft limit: the rest is
// headroom for what Go's limit does not count (thread stacks of cgo or the
// kernel's socket buffers are not Go memory) and for the collector to act.
const Fraction = 0.9

// Apply sets the process's soft memory limit to Fraction of its cgroup's
// memory limit, unless GOMEMLIMIT is set (the runtime honours that itself)
// or no limit applies. It returns the limit set (0: none) and the cgroup
// file it came from. Errors reading cgroup files are returned; nothing is
// set then.
func Apply() (limit int64, source string, err error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, "", nil
	}
	hard, source, err := Cgroup(os.DirFS("/"))
	if err != nil || hard == 0 {
		return 0, source, err
	}
	limit = int64(float64(hard) * Fraction)
	debug.SetMemoryLimit(limit)
	return limit, source, nil
}

// Cgroup returns the memory limit of the calling process's cgroup in bytes
// and the file that sets it, from the file system root (proc/self/cgroup,
// proc/self/mountinfo and the cgroup files): 0 when none is set.
func Cgroup(root fs.FS) (int64, string, error) {
	cg, err := fs.ReadFile(root, "proc/self/cgroup")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, "", nil // not Linux, or no /proc
		}
		return 0, "", fmt.Errorf("memlimit: %w", err)
	}
	mi, err := fs.ReadFile(root, "proc/self/mountinfo")
	if err != nil {
		return 0, "", fmt.Errorf("memlimit: %w", err)
	}
	v1, v2 := parseCgroups(string(cg))
	mounts := parseMounts(string(mi))
	// cgroup v2 first: on a hybrid host the memory controller is where v1
	// mounts it, and v2's unified tree then has no memory.max.
	for _, try := range []struct {
		rel, file string
		mount     *mount
	}{
		{v2, "memory.max", mounts.v2},
		{v1, "memory.limit_in_bytes", mounts.v1Memory},
	} {
		if try.mount == nil || try.rel == "" {
			continue
		}
		limit, source, err := smallest(root, try.mount, try.rel, try.file)
		if err != nil || limit > 0 {
			return limit, source, err
		}
	}
	return 0, "", nil
}

// smallest walks from the process's cgroup up to the mount's root and
// returns the smallest limit set in file.
func smallest(root fs.FS, m *mount, rel, file string) (int64, string, error) {
	// rel is the cgroup's path in the hierarchy; the mount shows the
	// hierarchy from m.root (a container's cgroup namespace root is "/").
	sub, ok := strings.CutPrefix(path.Clean(rel), path.Clean(m.root))
	if !ok {
		return 0, "", nil // the cgroup is not visible under this mount
	}
	dir := path.Join(strings.TrimPrefix(m.point, "/"), sub)
	top := strings.TrimPrefix(m.point, "/")
	var best int64
	var source string
	for {
		b, err := fs.ReadFile(root, path.Join(dir, file))
		switch {
		case err == nil:
			if v, ok := parseLimit(string(b)); ok && (best == 0 || v < best) {
				best, source = v, "/"+path.Join(dir, file)
			}
		case !errors.Is(err, fs.ErrNotExist):
			return 0, "", fmt.Errorf("memlimit: %w", err)
		}
		if dir == top || dir == "." || dir == "" {
			return best, source, nil
		}
		dir = path.Dir(dir)
	}
}

// parseLimit reads a limit file: "max" (v2) or a huge number (v1's
// "unlimited", PAGE_COUNTER_MAX pages) means none.
func parseLimit(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "max" || s == "" {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 || v >= math.MaxInt64/2 {
		return 0, false
	}
	return int64(v), true
}

// parseCgroups reads /proc/self/cgroup: the v1 memory controller's path and
// the v2 unified path ("0::/path").
func parseCgroups(s string) (v1, v2 string) {
	for _, line := range strings.Split(s, "\n") {
		id, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		ctrls, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if id == "0" && ctrls == "" {
			v2 = p
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if c == "memory" {
				v1 = p
			}
		}
	}
	return v1, v2
}

// mount is a cgroup file system mount: its mount point and the hierarchy
// path it shows at that point.
type mount struct{ root, point string }

type mounts struct{ v1Memory, v2 *mount }

// parseMounts finds the cgroup2 mount and the cgroup (v1) mount with the
// memory controller in /proc/self/mountinfo.
func parseMounts(s string) mounts {
	var out mounts
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		// 36 35 98:0 /root /mnt opts - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		m := &mount{root: unescape(f[3]), point: unescape(f[4])}
		switch g[0] {
		case "cgroup2":
			if out.v2 == nil {
				out.v2 = m
			}
		case "cgroup":
			for _, o := range strings.Split(g[2], ",") {
				if o == "memory" && out.v1Memory == nil {
					out.v1Memory = m
				}
			}
		}
	}
	return out
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
