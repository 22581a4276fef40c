package pbcheck

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
)

// Least values for Duration's minimum.
const (
	// NonNegative allows zero (which Envoy often reads as "disabled").
	NonNegative time.Duration = 0
	// Positive requires a duration above zero.
	Positive time.Duration = time.Nanosecond
)

// Duration converts the optional google.protobuf.Duration field named field
// (its path, for the error): def when d is nil; otherwise its value, or an
// error naming field when d is not a valid Duration (seconds out of
// ±10000 years, nanos out of range or of the other sign) or is below minimum
// (NonNegative, Positive, or any least value). def is returned as is.
func Duration(d *durationpb.Duration, field string, def, minimum time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: invalid duration: %w", field, err)
	}
	v := d.AsDuration()
	if v >= minimum {
		return v, nil
	}
	switch minimum {
	case NonNegative:
		return 0, fmt.Errorf("%s: %v: must not be negative", field, v)
	case Positive:
		return 0, fmt.Errorf("%s: %v: must be positive", field, v)
	}
	return 0, fmt.Errorf("%s: %v: must be at least %v", field, v, minimum)
}

// Backoff converts Envoy's back-off pair — base_interval and max_interval of
// a RetryBackOff, BackoffStrategy or Cluster.RefreshRate — held by the field
// at path: base_interval must be set and at least minimum; max_interval
// defaults to 10 times base_interval, as in Envoy, and must not be less
// than it.
func Backoff(path string, base, max *durationpb.Duration, minimum time.Duration) (b, m time.Duration, err error) {
	if base == nil {
		return 0, 0, fmt.Errorf("%s.base_interval: must be set", path)
	}
	if b, err = Duration(base, path+".base_interval", 0, minimum); err != nil {
		return 0, 0, err
	}
	if m, err = Duration(max, path+".max_interval", 10*b, minimum); err != nil {
		return 0, 0, err
	}
	if m < b {
		return 0, 0, fmt.Errorf("%s.max_interval: %v: must not be less than base_interval %v", path, m, b)
	}
	return b, m, nil
}
