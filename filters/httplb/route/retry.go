package route

import (
	"fmt"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3" // registers PreviousHostsPredicate
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/siftmesh/sift/internal/pbcheck"
)

// Envoy's default retry_back_off.base_interval.
const defaultRetryBase = 25 * time.Millisecond

// Retry conditions (RetryPolicy.retry_on), as a bit set.
type RetryOn uint16

// The retry_on conditions, by Envoy's names: 5xx, gateway-error, reset,
// connect-failure, retriable-status-codes, refused-stream, retriable-4xx,
// and the gRPC ones (cancelled, deadline-exceeded, resource-exhausted,
// unavailable, internal).
const (
	Retry5xx RetryOn = 1 << iota
	RetryGatewayError
	RetryReset
	RetryConnectFailure
	RetryRetriableStatusCodes
	RetryRefusedStream
	Retry4xx // retriable-4xx: 409
	RetryGRPCCancelled
	RetryGRPCDeadlineExceeded
	RetryGRPCResourceExhausted
	RetryGRPCUnavailable
	RetryGRPCInternal
)

var retryOnNames = map[string]RetryOn{
	"5xx": Retry5xx, "gateway-error": RetryGatewayError, "reset": RetryReset,
	"connect-failure": RetryConnectFailure, "retriable-status-codes": RetryRetriableStatusCodes,
	"refused-stream": RetryRefusedStream, "retriable-4xx": Retry4xx,
	"cancelled": RetryGRPCCancelled, "deadline-exceeded": RetryGRPCDeadlineExceeded,
	"resource-exhausted": RetryGRPCResourceExhausted, "unavailable": RetryGRPCUnavailable,
	"internal": RetryGRPCInternal,
}

// RetryPolicy is a decoded RetryPolicy.
type RetryPolicy struct {
	On            RetryOn
	NumRetries    int           // Envoy's default 1
	PerTryTimeout time.Duration // 0: the route timeout only
	StatusCodes   []int         // retriable_status_codes
	BackoffBase   time.Duration // Envoy's default 25 ms
	BackoffMax    time.Duration // Envoy's default 10 × base
	// AvoidPreviousHosts is Envoy's previous_hosts retry host predicate: a
	// retry re-picks, up to HostSelectionAttempts times, an endpoint this
	// request has not tried yet.
	AvoidPreviousHosts    bool
	HostSelectionAttempts int // Envoy's host_selection_retry_max_attempts, default 1
}

// previousHostsPredicate is the one retry host predicate Sift implements.
const previousHostsPredicate = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

// Backoff returns the wait before retry n (1-based): Envoy's fully jittered
// exponential back-off, a random duration in [0, min(base·2^(n-1), max)].
func (p *RetryPolicy) Backoff(n int) time.Duration {
	d := p.BackoffBase << min(n-1, 20)
	if d > p.BackoffMax || d <= 0 {
		d = p.BackoffMax
	}
	return rand.N(d + 1)
}

// RetriableStatus reports whether status (with gRPC status grpcStatus, -1
// when absent) is a retriable response under the policy.
func (p *RetryPolicy) RetriableStatus(status, grpcStatus int) bool {
	switch {
	case p.On&Retry5xx != 0 && status >= 500 && status <= 599:
		return true
	case p.On&RetryGatewayError != 0 && (status == 502 || status == 503 || status == 504):
		return true
	case p.On&Retry4xx != 0 && status == 409:
		return true
	case p.On&RetryRetriableStatusCodes != 0 && slices.Contains(p.StatusCodes, status):
		return true
	}
	switch grpcStatus {
	case 1:
		return p.On&RetryGRPCCancelled != 0
	case 4:
		return p.On&RetryGRPCDeadlineExceeded != 0
	case 8:
		return p.On&RetryGRPCResourceExhausted != 0
	case 13:
		return p.On&RetryGRPCInternal != 0
	case 14:
		return p.On&RetryGRPCUnavailable != 0
	}
	return false
}

// RetriableConnectFailure reports whether a failure to connect is retried.
func (p *RetryPolicy) RetriableConnectFailure() bool {
	return p.On&(Retry5xx|RetryGatewayError|RetryConnectFailure|RetryReset) != 0
}

// RetriableReset reports whether a reset (no response) is retried.
func (p *RetryPolicy) RetriableReset() bool {
	return p.On&(Retry5xx|RetryGatewayError|RetryReset) != 0
}

// RetriableTimeout reports whether a per-try timeout is retried (Envoy: 5xx
// and gateway-error cover per-try timeouts).
func (p *RetryPolicy) RetriableTimeout() bool {
	return p.On&(Retry5xx|RetryGatewayError) != 0
}

func decodeRetry(rp *routev3.RetryPolicy) (*RetryPolicy, error) {
	p := &RetryPolicy{NumRetries: 1, BackoffBase: defaultRetryBase}
	for _, name := range strings.Split(rp.GetRetryOn(), ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		bit, ok := retryOnNames[name]
		if !ok {
			return nil, fmt.Errorf("retry_on: %q is not supported by Sift (supported: 5xx, gateway-error, reset, connect-failure, "+
				"retriable-status-codes, refused-stream, retriable-4xx, and gRPC's cancelled, deadline-exceeded, resource-exhausted, unavailable, internal)", name)
		}
		p.On |= bit
	}
	if n := rp.GetNumRetries(); n != nil {
		p.NumRetries = int(min(n.GetValue(), 100))
	}
	var err error
	if p.PerTryTimeout, err = pbcheck.Duration(rp.GetPerTryTimeout(), "per_try_timeout", 0, pbcheck.NonNegative); err != nil {
		return nil, err
	}
	for i, c := range rp.GetRetriableStatusCodes() {
		if c < 100 || c > 599 {
			return nil, fmt.Errorf("retriable_status_codes[%d]: %d is not an HTTP status", i, c)
		}
		p.StatusCodes = append(p.StatusCodes, int(c))
	}
	p.HostSelectionAttempts = 1
	if n := rp.GetHostSelectionRetryMaxAttempts(); n > 0 {
		p.HostSelectionAttempts = int(min(n, 100))
	}
	for i, hp := range rp.GetRetryHostPredicate() {
		if url := hp.GetTypedConfig().GetTypeUrl(); url != previousHostsPredicate {
			return nil, fmt.Errorf("retry_host_predicate[%d] (%s): %q is not supported by Sift (only envoy.retry_host_predicates.previous_hosts)", i, hp.GetName(), url)
		}
		p.AvoidPreviousHosts = true
	}
	p.BackoffMax = 10 * p.BackoffBase
	if b := rp.GetRetryBackOff(); b != nil {
		if p.BackoffBase, p.BackoffMax, err = pbcheck.Backoff("retry_back_off", b.GetBaseInterval(), b.GetMaxInterval(), pbcheck.Positive); err != nil {
			return nil, err
		}
	}
	return p, nil
}
