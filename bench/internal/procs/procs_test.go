package procs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStat(t *testing.T) {
	// captured from a busy shell loop
	s, err := ParseStat(read(t, "proc-stat.txt"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(read(t, "proc-stat.txt")))
	if f[13] != itoa(s.utime) || f[14] != itoa(s.stime) || f[3] != itoa(uint64(s.ppid)) || s.utime+s.stime == 0 {
		t.Fatalf("%+v vs %v", s, f[:16])
	}
	// a command name with spaces and parentheses
	s, err = ParseStat([]byte("42 (a b) c)) R 7 1 1 0 -1 0 0 0 0 0 123 45 0 0 20 0 1 0 1 1 1"))
	if err != nil || s.ppid != 7 || s.utime != 123 || s.stime != 45 {
		t.Fatalf("%+v %v", s, err)
	}
	if _, err := ParseStat([]byte("garbage")); err == nil {
		t.Fatal("want error")
	}
}

func itoa(v uint64) string { return fmtUint(v) }

func fmtUint(v uint64) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for v > 0 {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
	}
	return string(b)
}

func TestParseSmapsRollup(t *testing.T) {
	m, err := ParseSmapsRollup(read(t, "smaps_rollup.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS != 11848*1024 || m.PSS != 10614*1024 {
		t.Fatalf("%+v", m)
	}
	if _, err := ParseSmapsRollup([]byte("Size: 4 kB\n")); err == nil {
		t.Fatal("want error")
	}
}

func TestParseListening(t *testing.T) {
	ports := ParseListening(read(t, "proc-net-tcp.txt"))
	if !ports[25101] || !ports[2024] || len(ports) != 2 {
		t.Fatalf("%v", ports)
	}
}

func TestStartStopCPUAndMemory(t *testing.T) {
	p, err := Start("spin", "", "", nil, "timeout", "5", "sh", "-c", "while :; do :; done") // the spinning sh is a child: Tree counts it
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	deadline := time.Now().Add(4 * time.Second)
	for CPUSeconds(p.Pid()) < 0.2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if c := CPUSeconds(p.Pid()); c < 0.2 {
		t.Fatalf("cpu %v", c)
	}
	if m, err := Memory(p.Pid()); err != nil || m.RSS == 0 || m.PSS == 0 {
		t.Fatalf("mem %+v %v", m, err)
	}
	if err := p.WaitListening([]int{1}, 50*time.Millisecond); err == nil {
		t.Fatal("port 1 is not listening")
	}
	p.Stop(time.Second)
	if ok, _ := p.Exited(); !ok {
		t.Fatal("not stopped")
	}
	if err := p.WaitListening([]int{1}, time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("want exited, got %v", err)
	}
}
