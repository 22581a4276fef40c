package filters

import "errors"

// ErrPeekCap is returned by Peeker.Peek when the peek buffer is full.
var ErrPeekCap = errors.New("peek byte cap reached")
