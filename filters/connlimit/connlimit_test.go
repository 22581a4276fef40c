package connlimit

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/reactor"
	"github.com/siftmesh/sift/internal/testnet"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

// build decodes a ConnectionLimit written as protojson and builds it through
// the filter registry, as a listener does.
func build(t *testing.T, js string) (*Limit, error) {
	t.Helper()
	cfg := &connlimitv3.ConnectionLimit{}
	if err := protojson.Unmarshal([]byte(js), cfg); err != nil {
		t.Fatalf("test config: %v", err)
	}
	typed, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := filters.BuildConnectionFilter(typed, filters.BuildContext{})
	if err != nil {
		return nil, err
	}
	return f.(*Limit), nil
}

func newLimit(t *testing.T, js string) *Limit {
	t.Helper()
	l, err := build(t, js)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// downstream returns an accepted connection on 127.0.0.1, as a listener
// hands it to its chain's filters; both ends close when the test ends.
func downstream(t *testing.T) *filters.Downstream {
	t.Helper()
	_, c := testnet.Pair(t)
	info := &filters.ConnInfo{LocalAddr: c.LocalAddr().(*net.TCPAddr).AddrPort(), RemoteAddr: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
	return filters.NewDownstream(c, nil, info, nil)
}

func TestConfig(t *testing.T) {
	t.Parallel()
	type settings struct {
		Max   int64
		Delay time.Duration
	}
	tests := []struct {
		name    string
		js      string
		want    settings
		wantErr string
	}{
		{name: "limit", js: `{"statPrefix": "s", "maxConnections": "2"}`, want: settings{Max: 2}},
		{name: "limit and delay", js: `{"statPrefix": "s", "maxConnections": "5", "delay": "0.25s"}`, want: settings{Max: 5, Delay: 250 * time.Millisecond}},
		{name: "huge limit", js: `{"statPrefix": "s", "maxConnections": "18446744073709551615"}`, want: settings{Max: 1 << 62}},

		{name: "no stat_prefix", js: `{"maxConnections": "1"}`, wantErr: "connection_limit: stat_prefix: must be set"},
		{name: "no max_connections", js: `{"statPrefix": "s"}`, wantErr: "connection_limit: max_connections: must be at least 1"},
		{name: "zero max_connections", js: `{"statPrefix": "s", "maxConnections": "0"}`, wantErr: "connection_limit: max_connections: must be at least 1"},
		{name: "negative delay", js: `{"statPrefix": "s", "maxConnections": "1", "delay": "-1s"}`, wantErr: "connection_limit: delay: -1s: must not be negative"},
		{
			name:    "runtime_enabled",
			js:      `{"statPrefix": "s", "maxConnections": "1", "runtimeEnabled": {"defaultValue": true, "runtimeKey": "k"}}`,
			wantErr: "connection_limit: runtime_enabled: not supported by Sift",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := build(t, tt.js)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, settings{Max: l.max, Delay: l.delay}); diff != "" {
				t.Errorf("settings (-want +got):\n%s", diff)
			}
		})
	}
}

// counters is what Limit reports.
type counters struct{ Active, Limited int64 }

func countersOf(l *Limit) counters { return counters{Active: l.Active(), Limited: int64(l.Limited())} }

func TestLimitRefusesAndReleases(t *testing.T) {
	t.Parallel()
	l := newLimit(t, `{"statPrefix": "s", "maxConnections": "2"}`)
	ctx := context.Background()
	var dones []func()
	for i := range 2 {
		done, ok := l.Admit(ctx, downstream(t))
		if !ok {
			t.Fatalf("connection %d refused under the limit", i)
		}
		dones = append(dones, done)
	}
	if done, ok := l.Admit(ctx, downstream(t)); ok || done != nil {
		t.Fatalf("third connection: ok=%v, done=%v; want refused without a done", ok, done != nil)
	}
	if diff := cmp.Diff(counters{Active: 2, Limited: 1}, countersOf(l)); diff != "" {
		t.Errorf("at the limit (-want +got):\n%s", diff)
	}

	// A connection that ends frees its slot for the next one.
	dones[0]()
	done, ok := l.Admit(ctx, downstream(t))
	if !ok {
		t.Fatal("refused after a connection ended")
	}
	if diff := cmp.Diff(counters{Active: 2, Limited: 1}, countersOf(l)); diff != "" {
		t.Errorf("after a release and a new admission (-want +got):\n%s", diff)
	}
	done()
	dones[1]()
	if diff := cmp.Diff(counters{Active: 0, Limited: 1}, countersOf(l)); diff != "" {
		t.Errorf("after every connection ended (-want +got):\n%s", diff)
	}
}

func TestLimitUnderConcurrency(t *testing.T) {
	t.Parallel()
	const limit, clients = 10, 100
	l := newLimit(t, `{"statPrefix": "s", "maxConnections": "10"}`)
	ds := make([]*filters.Downstream, clients)
	for i := range ds {
		ds[i] = downstream(t)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		dones []func()
	)
	for _, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if done, ok := l.Admit(context.Background(), d); ok {
				mu.Lock()
				dones = append(dones, done)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(dones) != limit {
		t.Errorf("%d of %d concurrent connections admitted, want exactly %d", len(dones), clients, limit)
	}
	if diff := cmp.Diff(counters{Active: limit, Limited: clients - limit}, countersOf(l)); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	for _, done := range dones {
		done()
	}
	if n := l.Active(); n != 0 {
		t.Errorf("Active = %d after every connection ended", n)
	}
}

func TestDelay(t *testing.T) {
	t.Parallel()
	t.Run("a refusal waits the delay", func(t *testing.T) {
		t.Parallel()
		const delay = 200 * time.Millisecond
		l := newLimit(t, `{"statPrefix": "s", "maxConnections": "1", "delay": "0.2s"}`)
		done, ok := l.Admit(context.Background(), downstream(t))
		if !ok {
			t.Fatal("first connection refused")
		}
		defer done()
		start := time.Now()
		if _, ok := l.Admit(context.Background(), downstream(t)); ok {
			t.Fatal("second connection admitted over the limit")
		}
		// A lower bound only: the refusal is not answered before the delay.
		if waited := time.Since(start); waited < delay {
			t.Errorf("refused after %v, want the configured delay %v first", waited, delay)
		}
		// The refused connection never counted as active.
		if diff := cmp.Diff(counters{Active: 1, Limited: 1}, countersOf(l)); diff != "" {
			t.Errorf("counters (-want +got):\n%s", diff)
		}
	})
	t.Run("the connection's context ends the delay", func(t *testing.T) {
		t.Parallel()
		l := newLimit(t, `{"statPrefix": "s", "maxConnections": "1", "delay": "3600s"}`)
		done, ok := l.Admit(context.Background(), downstream(t))
		if !ok {
			t.Fatal("first connection refused")
		}
		defer done()
		ctx, cancel := context.WithCancel(context.Background())
		refused, d := make(chan bool), downstream(t)
		go func() {
			_, ok := l.Admit(ctx, d)
			refused <- !ok
		}()
		cancel()
		select {
		case r := <-refused:
			if !r {
				t.Error("admitted over the limit")
			}
		case <-time.After(testnet.Limit):
			t.Fatal("Admit still waiting after its context ended")
		}
	})
}
