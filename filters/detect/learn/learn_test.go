package learn_test

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siftmesh/sift/filters/detect/learn"
)

// clock is a manual clock for the table.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var (
	mysql = netip.MustParseAddrPort("10.0.0.1:3306")
	smtp  = netip.MustParseAddrPort("10.0.0.2:25")
	web   = netip.MustParseAddrPort("10.0.0.3:80")
)

func TestLearning(t *testing.T) {
	t.Parallel()
	// step is one event; want is Learned(dst) right after it.
	type step struct {
		do      string // "server", "client", "wait"
		dst     netip.AddrPort
		wait    time.Duration
		want    bool
		wantRet bool // ServerFirst's result
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{name: "learned after three proofs", steps: []step{
			{do: "server", dst: mysql, want: false},
			{do: "server", dst: mysql, want: false},
			{do: "server", dst: mysql, want: true, wantRet: true},
			{do: "server", dst: smtp, want: false},
		}},
		{name: "a client speaking first forgets", steps: []step{
			{do: "server", dst: mysql}, {do: "server", dst: mysql}, {do: "server", dst: mysql, want: true, wantRet: true},
			{do: "client", dst: mysql, want: false},
			{do: "server", dst: mysql, want: false},
		}},
		{name: "expires after the ttl, each proof refreshes it", steps: []step{
			{do: "server", dst: mysql}, {do: "server", dst: mysql}, {do: "server", dst: mysql, want: true, wantRet: true},
			{do: "wait", dst: mysql, wait: 9 * time.Minute, want: true},
			{do: "server", dst: mysql, want: true, wantRet: true},
			{do: "wait", dst: mysql, wait: 9 * time.Minute, want: true},
			{do: "wait", dst: mysql, wait: 2 * time.Minute, want: false},
			{do: "server", dst: mysql, want: false}, // counting starts afresh
		}},
		{name: "client first on an unknown destination is a no-op", steps: []step{
			{do: "client", dst: web, want: false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := &clock{now: time.Unix(1e9, 0)}
			tb := learn.NewWithClock(16, c.Now)
			for i, s := range tt.steps {
				switch s.do {
				case "server":
					if got := tb.ServerFirst(s.dst, 3, 10*time.Minute); got != s.wantRet {
						t.Errorf("step %d: ServerFirst = %v, want %v", i, got, s.wantRet)
					}
				case "client":
					tb.ClientFirst(s.dst)
				case "wait":
					c.Advance(s.wait)
				}
				if got := tb.Learned(s.dst); got != s.want {
					t.Errorf("step %d (%s %v): Learned = %v, want %v", i, s.do, s.dst, got, s.want)
				}
			}
		})
	}
}

func TestCapacityEvictsLeastRecentlyProven(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Unix(1e9, 0)}
	tb := learn.NewWithClock(2, c.Now)
	tb.ServerFirst(mysql, 1, time.Hour)
	tb.ServerFirst(smtp, 1, time.Hour)
	tb.ServerFirst(mysql, 1, time.Hour) // mysql is now the most recent
	tb.ServerFirst(web, 1, time.Hour)   // evicts smtp
	entries, stats := tb.Snapshot()
	var got []string
	for _, e := range entries {
		got = append(got, e.Destination)
	}
	if diff := cmp.Diff([]string{"10.0.0.1:3306", "10.0.0.3:80"}, got); diff != "" {
		t.Errorf("destinations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(learn.Stats{Entries: 2, Learned: 2, Capacity: 2, Evictions: 1}, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestDisabledAndNil(t *testing.T) {
	t.Parallel()
	var nilTable *learn.Table
	if nilTable.Learned(mysql) || nilTable.ServerFirst(mysql, 1, time.Hour) {
		t.Error("a nil table learned something")
	}
	nilTable.ClientFirst(mysql)
	tb := learn.New(0)
	if tb.ServerFirst(mysql, 0, time.Hour) || tb.Learned(mysql) {
		t.Error("after = 0 learned something")
	}
	if _, st := tb.Snapshot(); st.Capacity != learn.DefaultCapacity {
		t.Errorf("capacity = %d, want %d", st.Capacity, learn.DefaultCapacity)
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	tb := learn.New(8)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i % 16)}), 3306)
				tb.ServerFirst(dst, 2, time.Hour)
				tb.Learned(dst)
				if i%7 == 0 {
					tb.ClientFirst(dst)
				}
			}
		})
	}
	wg.Wait()
	if _, st := tb.Snapshot(); st.Entries > 8 {
		t.Errorf("entries = %d, over the capacity 8", st.Entries)
	}
}
