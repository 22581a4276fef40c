package tcpproxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// settings is what New keeps of a config, for comparison.
type settings struct {
	Clusters        []string // name:weight
	TotalWeight     uint32
	IdleTimeout     time.Duration
	MaxDuration     time.Duration
	ConnectAttempts int
	BackoffBase     time.Duration
	BackoffMax      time.Duration
}

func settingsOf(p *Proxy) settings {
	s := settings{TotalWeight: p.totalWeight, IdleTimeout: p.idleTimeout, MaxDuration: p.maxDuration,
		ConnectAttempts: p.connectAttempts, BackoffBase: p.backoffBase, BackoffMax: p.backoffMax}
	for _, c := range p.clusters {
		s.Clusters = append(s.Clusters, fmt.Sprintf("%s:%d", c.name, c.weight))
	}
	return s
}

func TestConfig(t *testing.T) {
	t.Parallel()
	// Envoy's defaults: idle_timeout 1 h, one connect attempt, backoff from
	// 1 s up to 10 times the base.
	defaults := settings{Clusters: []string{"c:1"}, IdleTimeout: time.Hour, ConnectAttempts: 1,
		BackoffBase: time.Second, BackoffMax: 10 * time.Second}
	with := func(f func(*settings)) settings {
		s := defaults
		f(&s)
		return s
	}
	tests := []struct {
		name    string
		js      string
		want    settings
		wantErr string // the whole error, as a listener reports it
	}{
		{name: "defaults", js: `{"statPrefix": "s", "cluster": "c"}`, want: defaults},
		{
			name: "weighted clusters",
			js:   `{"statPrefix": "s", "weightedClusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}}`,
			want: with(func(s *settings) { s.Clusters, s.TotalWeight = []string{"a:1", "b:3"}, 4 }),
		},
		{
			name: "idle_timeout 0 disables it",
			js:   `{"statPrefix": "s", "cluster": "c", "idleTimeout": "0s"}`,
			want: with(func(s *settings) { s.IdleTimeout = 0 }),
		},
		{
			name: "timeouts",
			js:   `{"statPrefix": "s", "cluster": "c", "idleTimeout": "90s", "maxDownstreamConnectionDuration": "0.5s"}`,
			want: with(func(s *settings) { s.IdleTimeout, s.MaxDuration = 90*time.Second, 500*time.Millisecond }),
		},
		{
			name: "retries with backoff",
			js:   `{"statPrefix": "s", "cluster": "c", "maxConnectAttempts": 5, "backoffOptions": {"baseInterval": "0.1s", "maxInterval": "0.5s"}}`,
			want: with(func(s *settings) {
				s.ConnectAttempts, s.BackoffBase, s.BackoffMax = 5, 100*time.Millisecond, 500*time.Millisecond
			}),
		},
		{
			name: "max_interval defaults to 10 times base_interval",
			js:   `{"statPrefix": "s", "cluster": "c", "backoffOptions": {"baseInterval": "0.2s"}}`,
			want: with(func(s *settings) { s.BackoffBase, s.BackoffMax = 200*time.Millisecond, 2*time.Second }),
		},
		{
			name: "connect attempts are capped",
			js:   `{"statPrefix": "s", "cluster": "c", "maxConnectAttempts": 1000000}`,
			want: with(func(s *settings) { s.ConnectAttempts = 1000 }),
		},

		{name: "no stat_prefix", js: `{"cluster": "c"}`, wantErr: "tcp_proxy: stat_prefix: must be set"},
		{name: "no cluster", js: `{"statPrefix": "s"}`, wantErr: "tcp_proxy: cluster or weighted_clusters: one must be set"},
		{name: "empty cluster", js: `{"statPrefix": "s", "cluster": ""}`, wantErr: "tcp_proxy: cluster: must not be empty"},
		{
			name:    "no weighted clusters",
			js:      `{"statPrefix": "s", "weightedClusters": {}}`,
			wantErr: "tcp_proxy: weighted_clusters.clusters: at least one cluster is required",
		},
		{
			name:    "weighted cluster without a name",
			js:      `{"statPrefix": "s", "weightedClusters": {"clusters": [{"name": "a", "weight": 1}, {"weight": 1}]}}`,
			wantErr: "tcp_proxy: weighted_clusters.clusters[1].name: must be set",
		},
		{
			name:    "weighted cluster of weight 0",
			js:      `{"statPrefix": "s", "weightedClusters": {"clusters": [{"name": "a"}]}}`,
			wantErr: "tcp_proxy: weighted_clusters.clusters[0].weight: must be at least 1",
		},
		{
			name:    "negative idle_timeout",
			js:      `{"statPrefix": "s", "cluster": "c", "idleTimeout": "-1s"}`,
			wantErr: "tcp_proxy: idle_timeout: -1s: must not be negative",
		},
		{
			name:    "negative max_downstream_connection_duration",
			js:      `{"statPrefix": "s", "cluster": "c", "maxDownstreamConnectionDuration": "-1s"}`,
			wantErr: "tcp_proxy: max_downstream_connection_duration: -1s: must not be negative",
		},
		{
			name:    "zero connect attempts",
			js:      `{"statPrefix": "s", "cluster": "c", "maxConnectAttempts": 0}`,
			wantErr: "tcp_proxy: max_connect_attempts: must be at least 1",
		},
		{
			name:    "zero base_interval",
			js:      `{"statPrefix": "s", "cluster": "c", "backoffOptions": {"baseInterval": "0s"}}`,
			wantErr: "tcp_proxy: backoff_options.base_interval: 0s: must be positive",
		},
		{
			name:    "no base_interval",
			js:      `{"statPrefix": "s", "cluster": "c", "backoffOptions": {"maxInterval": "1s"}}`,
			wantErr: "tcp_proxy: backoff_options.base_interval: must be set",
		},
		{
			name:    "max_interval under base_interval",
			js:      `{"statPrefix": "s", "cluster": "c", "backoffOptions": {"baseInterval": "2s", "maxInterval": "1s"}}`,
			wantErr: "tcp_proxy: backoff_options.max_interval: 1s: must not be less than base_interval 2s",
		},
		{
			name:    "unsupported field",
			js:      `{"statPrefix": "s", "cluster": "c", "tunnelingConfig": {"hostname": "h:443"}}`,
			wantErr: "tcp_proxy: tunneling_config: not supported by Sift",
		},
		{
			name:    "unsupported field of a weighted cluster",
			js:      `{"statPrefix": "s", "weightedClusters": {"clusters": [{"name": "a", "weight": 1, "metadataMatch": {}}]}}`,
			wantErr: "tcp_proxy: weighted_clusters.clusters[0].metadata_match: not supported by Sift",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := build(tt.js)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, settingsOf(p)); diff != "" {
				t.Errorf("settings (-want +got):\n%s", diff)
			}
		})
	}
}
