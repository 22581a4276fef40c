package host

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal has the kernel kill the plugin when sift-proxy dies,
// even by SIGKILL. (Linux sends it when the thread that forked exits; Go
// keeps its threads, and the SDK's own parent watch covers the rest.)
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
