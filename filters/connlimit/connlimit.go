// Package connlimit is Envoy's envoy.filters.network.connection_limit: it
// caps the connections open at once through the filter chain that holds it,
// closing (after an optional delay) the ones over the limit. Place it before
// the chain's terminal filter.
package connlimit

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/pbcheck"
)

func init() {
	filters.RegisterConnectionFilter(&connlimitv3.ConnectionLimit{}, func(cfg proto.Message, _ filters.BuildContext) (filters.ConnectionFilter, error) {
		l, err := New(cfg.(*connlimitv3.ConnectionLimit))
		if err != nil {
			return nil, fmt.Errorf("connection_limit: %w", err)
		}
		return l, nil
	})
}

// runtime_enabled needs Envoy's runtime, which Sift does not have.
var policy = pbcheck.Policy{
	"envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit": pbcheck.Fields("stat_prefix, max_connections, delay"),
}

// Limit counts the connections through one filter chain configuration. It is
// safe for concurrent use.
type Limit struct {
	max   int64
	delay time.Duration

	active  atomic.Int64
	limited atomic.Uint64
}

var _ filters.ConnectionFilter = (*Limit)(nil)

// New validates cfg: stat_prefix is required, max_connections at least 1.
func New(cfg *connlimitv3.ConnectionLimit) (*Limit, error) {
	if err := policy.Check(cfg); err != nil {
		return nil, err
	}
	if cfg.GetStatPrefix() == "" {
		return nil, errors.New("stat_prefix: must be set")
	}
	if cfg.GetMaxConnections().GetValue() < 1 {
		return nil, errors.New("max_connections: must be at least 1")
	}
	l := &Limit{max: int64(min(cfg.GetMaxConnections().GetValue(), 1<<62))}
	var err error
	if l.delay, err = pbcheck.Duration(cfg.GetDelay(), "delay", 0, pbcheck.NonNegative); err != nil {
		return nil, err
	}
	return l, nil
}

// Admit implements filters.ConnectionFilter.
func (l *Limit) Admit(ctx context.Context, _ *filters.Downstream) (func(), bool) {
	if l.active.Add(1) <= l.max {
		return func() { l.active.Add(-1) }, true
	}
	l.active.Add(-1)
	l.limited.Add(1)
	if l.delay > 0 {
		t := time.NewTimer(l.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return nil, false
}

// Active is the number of connections open through the filter now.
func (l *Limit) Active() int64 { return l.active.Load() }

// Limited counts the connections refused.
func (l *Limit) Limited() uint64 { return l.limited.Load() }
