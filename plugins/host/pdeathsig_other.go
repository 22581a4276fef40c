//go:build !linux

package host

import "os/exec"

// setParentDeathSignal does nothing here: the SDK's parent watch ends an
// orphaned plugin.
func setParentDeathSignal(*exec.Cmd) {}
