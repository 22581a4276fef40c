package pbcheck

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	policy := Policy{
		"envoy.config.listener.v3.Listener":    Fields("name, address, filter_chains, listener_filters_timeout"),
		"envoy.config.listener.v3.FilterChain": Fields("filters"),
	}
	tests := []struct {
		name    string
		msg     proto.Message
		wantErr string
	}{
		{name: "empty", msg: &listenerv3.Listener{}},
		{name: "allowed fields", msg: &listenerv3.Listener{
			Name:                   "l",
			ListenerFiltersTimeout: durationpb.New(1),
			FilterChains:           []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "x"}}}},
		}},
		{name: "top-level field", msg: &listenerv3.Listener{Name: "l", Freebind: wrapBool(true)},
			wantErr: "freebind: not supported by Sift"},
		{name: "nested in list", msg: &listenerv3.Listener{FilterChains: []*listenerv3.FilterChain{
			{}, {TransportSocket: &corev3.TransportSocket{Name: "tls"}},
		}}, wantErr: "filter_chains[1].transport_socket: not supported by Sift"},
		{name: "any not entered", msg: &listenerv3.Listener{FilterChains: []*listenerv3.FilterChain{
			{Filters: []*listenerv3.Filter{{ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "x"}}}}},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := policy.Check(tt.msg)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Errorf("Check() = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func wrapBool(b bool) *wrapperspb.BoolValue { return wrapperspb.Bool(b) }
