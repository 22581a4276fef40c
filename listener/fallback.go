package listener

import (
	"context"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener/chainmatch"
)

// The generation is the listener filters' filters.Fallback: it knows the
// chains of the configuration the connection was accepted on, and the
// context that ends its connections.
var _ filters.Fallback = (*generation)(nil)

// Preconnect implements filters.Fallback: it opens the upstream of the chain
// that info would get as an opaque connection (transport raw_buffer, no
// application protocol), when that chain's network filter can.
func (g *generation) Preconnect(ctx context.Context, info *filters.ConnInfo) (*filters.EarlyUpstream, error) {
	chain := g.cfg.fallbackChain(info)
	if chain == nil {
		return nil, filters.ErrNoPreconnect
	}
	pc, ok := chain.Network.(filters.Preconnector)
	if !ok {
		return nil, filters.ErrNoPreconnect
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(g.ctx, cancel) // the generation ends: stop connecting
	defer stop()
	return pc.Preconnect(ctx, info)
}

// GuardsHTTP implements filters.Fallback.
func (g *generation) GuardsHTTP() bool { return g.cfg.guardsHTTP }

// fallbackChain is the chain for info's addresses with nothing detected.
func (cfg *Config) fallbackChain(info *filters.ConnInfo) *FilterChain {
	return cfg.chainFor(chainmatch.Input{
		Destination:       info.LocalAddr,
		Source:            info.RemoteAddr,
		TransportProtocol: filters.TransportRawBuffer,
	})
}

// guardsHTTP reports whether a chain of cfg enforces HTTP-level policy that
// an opaque fallback would not (see filters.HTTPPolicy).
func guardsHTTP(cfg *Config) bool {
	for _, c := range append(cfg.Chains[:len(cfg.Chains):len(cfg.Chains)], cfg.DefaultChain) {
		if c == nil {
			continue
		}
		if hp, ok := c.Network.(filters.HTTPPolicy); ok && hp.EnforcesHTTPPolicy() {
			return true
		}
	}
	return false
}

// adoptEarly hands info.Early to chain's network filter when it can adopt
// it, and closes it otherwise.
func adoptEarly(info *filters.ConnInfo, chain *FilterChain) {
	e := info.Early
	if e == nil {
		return
	}
	if chain != nil {
		if a, ok := chain.Network.(filters.EarlyAdopter); ok && a.CanAdopt(e) {
			return
		}
	}
	closeEarly(info)
}

// closeEarly closes an early upstream nobody adopted.
func closeEarly(info *filters.ConnInfo) {
	if info.Early != nil {
		info.Early.Close()
		info.Early = nil
	}
}
