package memlimit

import (
	"testing"
	"testing/fstest"
)

const (
	v2Mountinfo = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
	// A hybrid host: v1 controllers, the unified tree beside them.
	v1Mountinfo = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
		"31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n" +
		"32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)

func TestCgroup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		files      map[string]string
		want       int64
		wantSource string
	}{
		{"v2 pod limit", map[string]string{
			"proc/self/cgroup":                          "0::/kubepods/pod1/c1\n",
			"proc/self/mountinfo":                       v2Mountinfo,
			"sys/fs/cgroup/kubepods/pod1/c1/memory.max": "max\n",
			"sys/fs/cgroup/kubepods/pod1/memory.max":    "268435456\n",
			"sys/fs/cgroup/kubepods/memory.max":         "1073741824\n",
		}, 268435456, "/sys/fs/cgroup/kubepods/pod1/memory.max"},
		{"v2 container's own limit is smaller", map[string]string{
			"proc/self/cgroup":                          "0::/kubepods/pod1/c1\n",
			"proc/self/mountinfo":                       v2Mountinfo,
			"sys/fs/cgroup/kubepods/pod1/c1/memory.max": "67108864\n",
			"sys/fs/cgroup/kubepods/pod1/memory.max":    "268435456\n",
		}, 67108864, "/sys/fs/cgroup/kubepods/pod1/c1/memory.max"},
		{"v2 in a cgroup namespace: the mount shows the container's cgroup as /", map[string]string{
			"proc/self/cgroup":               "0::/\n",
			"proc/self/mountinfo":            v2Mountinfo,
			"sys/fs/cgroup/memory.max":       "134217728\n",
			"sys/fs/cgroup/other/memory.max": "1\n",
		}, 134217728, "/sys/fs/cgroup/memory.max"},
		{"v2 without any limit", map[string]string{
			"proc/self/cgroup":                            "0::/user.slice/session\n",
			"proc/self/mountinfo":                         v2Mountinfo,
			"sys/fs/cgroup/user.slice/session/memory.max": "max\n",
		}, 0, ""},
		{"v1 memory controller on a hybrid host", map[string]string{
			"proc/self/cgroup":    "4:memory:/docker/abc\n3:cpu:/docker/abc\n0::/docker/abc\n",
			"proc/self/mountinfo": v1Mountinfo,
			"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "536870912\n",
			"sys/fs/cgroup/memory/docker/memory.limit_in_bytes":     "9223372036854771712\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n",
		}, 536870912, "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes"},
		{"v1 unlimited", map[string]string{
			"proc/self/cgroup":                           "4:memory:/\n",
			"proc/self/mountinfo":                        v1Mountinfo,
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
		}, 0, ""},
		{"the cgroup is outside the mount", map[string]string{
			"proc/self/cgroup":         "0::/elsewhere\n",
			"proc/self/mountinfo":      "25 1 0:22 /container /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			"sys/fs/cgroup/memory.max": "1048576\n",
		}, 0, ""},
		{"a mount point with a space", map[string]string{
			"proc/self/cgroup":    "0::/\n",
			"proc/self/mountinfo": `25 1 0:22 / /run/cg\040x rw - cgroup2 cgroup2 rw` + "\n",
			"run/cg x/memory.max": "1048576\n",
		}, 1048576, "/run/cg x/memory.max"},
		{"no /proc", map[string]string{}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for name, data := range tc.files {
				fsys[name] = &fstest.MapFile{Data: []byte(data)}
			}
			got, source, err := Cgroup(fsys)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || source != tc.wantSource {
				t.Errorf("Cgroup = %d from %q, want %d from %q", got, source, tc.want, tc.wantSource)
			}
		})
	}
}

func TestParseLimit(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"max\n": 0, "": 0, "0": 0, "junk": 0, "9223372036854771712": 0, "4096\n": 4096} {
		if got, _ := parseLimit(in); got != want {
			t.Errorf("parseLimit(%q) = %d, want %d", in, got, want)
		}
	}
}
