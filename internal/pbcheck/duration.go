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
