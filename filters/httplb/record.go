package httplb

import "github.com/siftmesh/sift/telemetry/streaminfo"

// Record is what the HCM knows about one request once it is done: enough
// for metrics, access logs and tracing.
type Record = streaminfo.Request
