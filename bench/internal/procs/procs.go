// Package procs starts and stops the processes of a benchmark run, pinned to
// a core with taskset, and reads what the kernel knows about them: CPU time
// from /proc/<pid>/stat, memory from /proc/<pid>/smaps_rollup, listening
// sockets from /proc/net/tcp.
package procs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ClockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is
// 100 on every Linux this harness targets (getconf CLK_TCK).
const ClockTicks = 100

// Proc is a running child process.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	log  *tailBuffer
	done chan struct{}
	err  error
}

// Start runs argv pinned to cpus (a taskset list such as "1"; empty = no
// pinning) in its own process group. Its output goes to logPath and the last
// few KiB are kept for error messages.
func Start(name, cpus, logPath string, env []string, argv ...string) (*Proc, error) {
	if cpus != "" {
		argv = append([]string{"taskset", "-c", cpus}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), env...)
	tb := &tailBuffer{max: 8 << 10}
	var out io.Writer = tb
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		out = io.MultiWriter(f, tb)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, log: tb, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Pid is the process id (taskset execs the real program in place).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Tail is the end of the process's output.
func (p *Proc) Tail() string { return strings.TrimSpace(p.log.String()) }

// Stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	if ok, _ := p.Exited(); ok {
		return
	}
	syscall.Kill(-p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
	}
}

// WaitListening waits until every port is in LISTEN state on 127.0.0.1
// (read from /proc/net/tcp, so no connection disturbs the server), or the
// process exits, or timeout passes.
func (p *Proc) WaitListening(ports []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok, err := p.Exited(); ok {
			return fmt.Errorf("%s exited (%v): %s", p.Name, err, lastLines(p.Tail(), 6))
		}
		missing := MissingListeners(ports)
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: ports %v not listening after %v: %s", p.Name, missing, timeout, lastLines(p.Tail(), 6))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MissingListeners returns the ports that have no listening TCP socket.
func MissingListeners(ports []int) []int {
	listening := map[int]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for port := range ParseListening(b) {
			listening[port] = true
		}
	}
	var missing []int
	for _, p := range ports {
		if !listening[p] {
			missing = append(missing, p)
		}
	}
	return missing
}

// ParseListening returns the local ports in LISTEN state (st 0A) of a
// /proc/net/tcp table.
func ParseListening(table []byte) map[int]bool {
	out := map[int]bool{}
	sc := bufio.NewScanner(bytes.NewReader(table))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != "0A" {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			continue
		}
		if port, err := strconv.ParseUint(f[1][i+1:], 16, 16); err == nil {
			out[int(port)] = true
		}
	}
	return out
}

// Tree returns pid and all its descendants (nginx's workers, for instance).
func Tree(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(c)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], c)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

type stat struct {
	ppid         int
	utime, stime uint64
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return stat{}, err
	}
	return ParseStat(b)
}

// ParseStat reads ppid, utime and stime from a /proc/<pid>/stat line (the
// command name may contain spaces and parentheses: fields are counted from
// the last ')').
func ParseStat(b []byte) (stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return stat{}, errors.New("short stat")
	}
	var s stat
	var err1, err2, err3 error
	s.ppid, err1 = strconv.Atoi(f[1])
	s.utime, err2 = strconv.ParseUint(f[11], 10, 64)
	s.stime, err3 = strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return stat{}, err
	}
	return s, nil
}

// CPUSeconds is the user+system CPU time used so far by pid and its
// descendants.
func CPUSeconds(pid int) float64 {
	var ticks uint64
	for _, p := range Tree(pid) {
		if st, err := readStat(p); err == nil {
			ticks += st.utime + st.stime
		}
	}
	return float64(ticks) / ClockTicks
}

// Mem is a process tree's memory, in bytes.
type Mem struct {
	RSS, PSS uint64
}

// Memory sums Rss and Pss (proportional: shared pages split between the
// processes sharing them, so nginx's master and worker are not counted
// twice) over pid and its descendants.
func Memory(pid int) (Mem, error) {
	var m Mem
	for _, p := range Tree(pid) {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "smaps_rollup"))
		if err != nil {
			if p == pid {
				return m, err
			}
			continue
		}
		r, err := ParseSmapsRollup(b)
		if err != nil {
			return m, err
		}
		m.RSS += r.RSS
		m.PSS += r.PSS
	}
	return m, nil
}

// ParseSmapsRollup reads Rss and Pss (kB in the file) from smaps_rollup.
func ParseSmapsRollup(b []byte) (Mem, error) {
	var m Mem
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		var dst *uint64
		switch f[0] {
		case "Rss:":
			dst = &m.RSS
		case "Pss:":
			dst = &m.PSS
		default:
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return m, err
		}
		*dst = v * 1024
		found++
	}
	if found < 2 {
		return m, errors.New("no Rss/Pss in smaps_rollup")
	}
	return m, nil
}

// FDHardLimit is RLIMIT_NOFILE's hard limit of this process (children inherit it).
func FDHardLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	return rl.Max
}

// RaiseFDLimit raises the soft RLIMIT_NOFILE to the hard limit.
func RaiseFDLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	rl.Cur = rl.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur
}

type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// LastLines is the last n lines of s joined with " | " (for one-line reasons).
func LastLines(s string, n int) string { return lastLines(s, n) }

// FDCount is the number of open file descriptors of pid and its descendants.
func FDCount(pid int) int {
	n := 0
	for _, p := range Tree(pid) {
		ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(p), "fd"))
		if err == nil {
			n += len(ents)
		}
	}
	return n
}
