package filters

import "errors"

// ErrPeekCap is returned by Peeker.Peek when the peek buffer is full.
var ErrPeekCap = errors.New("peek byte cap reached")

// ErrPeekInterrupted is returned by Peeker.Peek after Peeker.Interrupt.
var ErrPeekInterrupted = errors.New("peek interrupted")

// ErrNoPreconnect is returned by Fallback.Preconnect when the fallback chain
// cannot open its upstream before the connection is dispatched.
var ErrNoPreconnect = errors.New("fallback chain has no upstream to open early")
