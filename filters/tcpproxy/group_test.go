//go:build linux

package tcpproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/testnet"
)

// relayEnds starts n relays between fresh TCP pairs with ctx (in park mode
// when park: the up→down direction returns once it has parked) and
// returns a channel receiving each relay's error when it ends.
func relayEnds(t *testing.T, ctx context.Context, n int, park bool) (<-chan error, []*net.TCPConn) {
	t.Helper()
	ends := make(chan error, n)
	var clients []*net.TCPConn
	for range n {
		client, down := testnet.Pair(t)
		up, server := testnet.Pair(t)
		clients = append(clients, client, server)
		go startRelay(ctx, down, up, Limits{}, park, func(_ Counts, err error) {
			down.Close()
			up.Close()
			ends <- err
		})
	}
	return ends, clients
}

func TestRelayGroupAbortsMembersWhenContextEnds(t *testing.T) {
	for _, park := range []bool{false, true} {
		name := "waiting"
		if park {
			name = "parked"
		}
		t.Run(name, func(t *testing.T) {
			const n = 50
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ends, clients := relayEnds(t, ctx, n, park)
			waitFor(t, "every relay to join the group", func() bool {
				v, ok := groups.Load(groupKey{ctx, 0})
				return ok && v.(*relayGroup).size() == n
			})
			if park {
				// Parked or not, the group reaches them (the park tests
				// check parking itself).
				time.Sleep(2 * parkQuiet)
			}
			cancel()
			for i := range n {
				select {
				case err := <-ends:
					if !errors.Is(err, net.ErrClosed) {
						t.Errorf("relay ended with %v, want the connections closed", err)
					}
				case <-time.After(testnet.Limit):
					t.Fatalf("%d of %d relays still running after their context ended", n-i, n)
				}
			}
			for _, c := range clients {
				c.SetDeadline(time.Now().Add(testnet.Limit))
				if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
					t.Errorf("peer after the relay's abort: %q, %v; want EOF", b, err)
				}
			}
			if _, ok := groups.Load(groupKey{ctx, 0}); ok {
				t.Error("the ended context's group is still registered")
			}
		})
	}
}

func TestRelayGroupLeaveOnEnd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ends, clients := relayEnds(t, ctx, 3, false)
	waitFor(t, "the relays to join", func() bool {
		v, ok := groups.Load(groupKey{ctx, 0})
		return ok && v.(*relayGroup).size() == 3
	})
	// The middle relay's peers close: it ends and leaves; the others stay.
	clients[2].Close()
	clients[3].Close()
	if err := <-ends; err != nil {
		t.Fatalf("relay ended with %v, want a clean end", err)
	}
	v, _ := groups.Load(groupKey{ctx, 0})
	if got := v.(*relayGroup).size(); got != 2 {
		t.Fatalf("group has %d members after one relay ended, want 2", got)
	}
	cancel()
	for range 2 {
		<-ends
	}
}

func TestRelayJoiningAnEndedContextAborts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ends, _ := relayEnds(t, ctx, 5, true)
	for range 5 {
		select {
		case err := <-ends:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("relay on an ended context: %v, want the connections closed", err)
			}
		case <-time.After(testnet.Limit):
			t.Fatal("a relay started on an ended context keeps running")
		}
	}
	waitFor(t, "the ended context's group to go", func() bool { _, ok := groups.Load(groupKey{ctx, 0}); return !ok })
}

func TestRelayWithoutCancelHasNoGroup(t *testing.T) {
	ends, clients := relayEnds(t, context.Background(), 1, false)
	if _, ok := groups.Load(groupKey{context.Background(), 0}); ok {
		t.Error("a context that never ends got a group")
	}
	clients[0].Close()
	clients[1].Close()
	if err := <-ends; err != nil {
		t.Errorf("relay: %v", err)
	}
}

func TestRelayGroupIdleSweep(t *testing.T) {
	// Three relays share one group (context, 1 s idle timeout) and its one
	// timer: the two quiet ones are closed, the busy one is not, and the
	// timer stops once the group is empty.
	const idle = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ends := make(chan int, 3)
	var clients []*net.TCPConn
	for i := range 3 {
		client, down := testnet.Pair(t)
		up, server := testnet.Pair(t)
		clients = append(clients, client, server)
		go startRelay(ctx, down, up, Limits{Idle: idle}, true, func(_ Counts, _ error) {
			down.Close()
			up.Close()
			ends <- i
		})
	}
	key := groupKey{ctx, idle}
	waitFor(t, "the relays to join one group", func() bool {
		v, ok := groups.Load(key)
		return ok && v.(*relayGroup).size() == 3
	})
	stop := make(chan struct{})
	busy := make(chan struct{})
	go func() { // relay 0 carries a byte every 50 ms, far under the timeout
		defer close(busy)
		b := make([]byte, 1)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			clients[0].Write(b)
			clients[1].SetReadDeadline(time.Now().Add(testnet.Limit))
			if _, err := io.ReadFull(clients[1], b); err != nil {
				return
			}
		}
	}()
	for range 2 {
		select {
		case i := <-ends:
			if i == 0 {
				t.Fatal("the busy relay was closed as idle")
			}
		case <-time.After(testnet.Limit):
			t.Fatal("quiet relays outlived their idle timeout")
		}
	}
	v, _ := groups.Load(key)
	g := v.(*relayGroup)
	if got := g.size(); got != 1 {
		t.Errorf("group has %d members, want the busy one", got)
	}
	close(stop)
	<-busy
	select {
	case i := <-ends:
		if i != 0 {
			t.Fatalf("relay %d ended twice", i)
		}
	case <-time.After(testnet.Limit):
		t.Fatal("the relay gone quiet outlived its idle timeout")
	}
	waitFor(t, "the group's timer to stop", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return !g.ticking && g.n == 0
	})
}

// startRelay starts a relay that calls onEnd when it has ended (see
// relay.start).
func startRelay(ctx context.Context, down, up net.Conn, lim Limits, park bool, onEnd func(Counts, error)) {
	o := &funcRelay{onEnd: onEnd}
	o.r.start(ctx, down, up, lim, park, o)
}

type funcRelay struct {
	r     relay
	onEnd func(Counts, error)
}

func (o *funcRelay) relayEnded(c Counts, err error) { o.onEnd(c, err) }
