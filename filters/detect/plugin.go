package detect

import (
	"encoding/hex"
	"fmt"
	"time"

	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/plugins"
	"github.com/siftmesh/sift/plugins/host"
)

// DefaultPluginCallTimeout is a plugin Sniff call's default budget.
const DefaultPluginCallTimeout = 25 * time.Millisecond

// PluginConfig is one validated entry of Detect.plugins.
type PluginConfig struct {
	Spec host.Spec
	// CallTimeout is each Sniff call's budget.
	CallTimeout time.Duration
	// MaxBytes caps the bytes shown to the plugin (0: the plugin's own
	// limit, then the filter's).
	MaxBytes int
}

func parsePlugins(pbs []*detectv1.Detect_Plugin) ([]PluginConfig, error) {
	var out []PluginConfig
	for i, pb := range pbs {
		prefix := fmt.Sprintf("detect: plugins[%d].", i)
		pc := PluginConfig{Spec: host.Spec{Path: pb.GetPath(), Args: pb.GetArgs()}}
		if pc.Spec.Path == "" {
			return nil, fmt.Errorf("%spath: must be set", prefix)
		}
		if s := pb.GetSha256(); s != "" {
			sum, err := hex.DecodeString(s)
			if err != nil || len(sum) != 32 {
				return nil, fmt.Errorf("%ssha256: %q is not a hex SHA-256 (64 hex digits)", prefix, s)
			}
			pc.Spec.SHA256 = sum
		}
		var err error
		if pc.CallTimeout, err = pbcheck.Duration(pb.GetCallTimeout(), prefix+"call_timeout", DefaultPluginCallTimeout, pbcheck.Positive); err != nil {
			return nil, err
		}
		if m := pb.GetMaxBytes(); m != nil {
			if m.GetValue() < 1 {
				return nil, fmt.Errorf("%smax_bytes: must be at least 1", prefix)
			}
			pc.MaxBytes = int(min(m.GetValue(), 1<<20))
		}
		out = append(out, pc)
	}
	return out, nil
}

// pluginSniffer asks a plugin process, within a budget per call. Unlike the
// built-ins it blocks, for at most its budget per read round; any failure —
// the plugin down, late, or answering garbage — is NoMatch for this
// connection, and the plugin is not asked about it again.
type pluginSniffer struct {
	p        *host.Plugin
	budget   time.Duration
	maxBytes int
}

// NewPluginSniffer returns a Sniffer that asks p, each call within budget,
// showing it at most maxBytes bytes (≤ 0: the plugin's own limit, or all).
func NewPluginSniffer(p *host.Plugin, budget time.Duration, maxBytes int) Sniffer {
	if maxBytes <= 0 {
		maxBytes = p.Info().MaxBytes
	}
	return &pluginSniffer{p: p, budget: budget, maxBytes: maxBytes}
}

func (s *pluginSniffer) Name() string { return s.p.Info().Name }

func (s *pluginSniffer) Sniff(b []byte, atEOF bool) Result {
	if len(b) == 0 && !atEOF {
		return Result{Verdict: NeedMore} // nothing to ask about yet
	}
	if s.maxBytes > 0 && len(b) >= s.maxBytes {
		b, atEOF = b[:s.maxBytes], true // all it will ever see: it must decide
	}
	r, err := s.p.Sniff(b, atEOF, s.budget)
	if err != nil {
		return Result{Verdict: NoMatch}
	}
	switch r.Verdict {
	case plugins.Match:
		return Result{Verdict: Match, Protocol: r.Protocol, Attributes: r.Attributes}
	case plugins.NeedMore:
		if atEOF {
			return Result{Verdict: NoMatch}
		}
		return Result{Verdict: NeedMore, Need: r.Need}
	}
	return Result{Verdict: NoMatch}
}

// SniffServer implements ServerSniffer for plugins that judge a server's
// greeting: one call, NeedMore or any failure is NoMatch.
func (s *pluginSniffer) SniffServer(greeting []byte) Result {
	if !s.p.Info().ServerFirst || len(greeting) == 0 {
		return Result{Verdict: NoMatch}
	}
	if s.maxBytes > 0 && len(greeting) > s.maxBytes {
		greeting = greeting[:s.maxBytes]
	}
	r, err := s.p.SniffServer(greeting, s.budget)
	if err != nil || r.Verdict != plugins.Match {
		return Result{Verdict: NoMatch}
	}
	return Result{Verdict: Match, Protocol: r.Protocol, Attributes: r.Attributes}
}
