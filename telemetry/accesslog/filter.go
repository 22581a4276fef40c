package accesslog

import (
	"errors"
	"fmt"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
)

// filter decides whether a record is logged (Envoy's AccessLogFilter).
type filter func(e *entry) bool

// envoyFlags are the response flag names Envoy's response_flag_filter
// accepts.
var envoyFlags = map[string]bool{}

func init() {
	for _, f := range []string{"LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX",
		"RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR"} {
		envoyFlags[f] = true
	}
}

// decodeFilter builds f; field is its path for errors. Fields other than
// the ones below were already rejected by the policy.
func decodeFilter(f *accesslogv3.AccessLogFilter, field string) (filter, error) {
	switch s := f.GetFilterSpecifier().(type) {
	case *accesslogv3.AccessLogFilter_StatusCodeFilter:
		return comparison(s.StatusCodeFilter.GetComparison(), field+".status_code_filter", func(e *entry) uint64 {
			if e.req == nil {
				return 0
			}
			return uint64(e.req.Status)
		})
	case *accesslogv3.AccessLogFilter_DurationFilter:
		return comparison(s.DurationFilter.GetComparison(), field+".duration_filter", func(e *entry) uint64 {
			if e.req != nil {
				return uint64(e.req.Duration.Milliseconds())
			}
			return uint64(e.conn.Duration.Milliseconds())
		})
	case *accesslogv3.AccessLogFilter_NotHealthCheckFilter:
		// Sift has no health-check filter: no request is a health check.
		return func(*entry) bool { return true }, nil
	case *accesslogv3.AccessLogFilter_ResponseFlagFilter:
		want := map[string]bool{}
		for i, fl := range s.ResponseFlagFilter.GetFlags() {
			if !envoyFlags[fl] {
				return nil, fmt.Errorf("%s.response_flag_filter.flags[%d]: %q is not a response flag", field, i, fl)
			}
			want[fl] = true
		}
		return func(e *entry) bool {
			got := responseFlags(e)
			if got == "" {
				return false
			}
			return len(want) == 0 || want[got]
		}, nil
	case *accesslogv3.AccessLogFilter_AndFilter:
		fs, err := decodeFilters(s.AndFilter.GetFilters(), field+".and_filter")
		if err != nil {
			return nil, err
		}
		return func(e *entry) bool {
			for _, f := range fs {
				if !f(e) {
					return false
				}
			}
			return true
		}, nil
	case *accesslogv3.AccessLogFilter_OrFilter:
		fs, err := decodeFilters(s.OrFilter.GetFilters(), field+".or_filter")
		if err != nil {
			return nil, err
		}
		return func(e *entry) bool {
			for _, f := range fs {
				if f(e) {
					return true
				}
			}
			return false
		}, nil
	case nil:
		return nil, fmt.Errorf("%s: a filter must be set", field)
	}
	return nil, fmt.Errorf("%s: not supported by Sift", field)
}

func decodeFilters(fs []*accesslogv3.AccessLogFilter, field string) ([]filter, error) {
	if len(fs) < 2 {
		return nil, fmt.Errorf("%s.filters: at least two filters are required", field)
	}
	out := make([]filter, len(fs))
	for i, f := range fs {
		var err error
		if out[i], err = decodeFilter(f, fmt.Sprintf("%s.filters[%d]", field, i)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func comparison(c *accesslogv3.ComparisonFilter, field string, get func(*entry) uint64) (filter, error) {
	if c == nil {
		return nil, errors.New(field + ".comparison: must be set")
	}
	v := uint64(c.GetValue().GetDefaultValue())
	switch c.GetOp() {
	case accesslogv3.ComparisonFilter_EQ:
		return func(e *entry) bool { return get(e) == v }, nil
	case accesslogv3.ComparisonFilter_GE:
		return func(e *entry) bool { return get(e) >= v }, nil
	case accesslogv3.ComparisonFilter_LE:
		return func(e *entry) bool { return get(e) <= v }, nil
	case accesslogv3.ComparisonFilter_NE:
		return func(e *entry) bool { return get(e) != v }, nil
	}
	return nil, fmt.Errorf("%s.comparison.op: %v is not supported by Sift", field, c.GetOp())
}
