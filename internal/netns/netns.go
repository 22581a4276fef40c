// Package netns sets up Linux network namespaces for end-to-end tests of
// transparent interception: named namespaces (`ip netns add`), veth links,
// iptables rules inside a namespace, and sockets opened from this process
// inside a namespace (Listen, DialContext) without starting a process.
//
// It needs root, iproute2 and iptables; Check says what is missing.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// runDir is where `ip netns add` pins named namespaces (iproute2's
// NETNS_RUN_DIR).
const runDir = "/var/run/netns"

// Check reports why namespaces cannot be used here: not root, or ip or
// iptables not installed. nil means go ahead.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces and iptables)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("needs the ip command (iproute2)")
	}
	if _, err := Iptables(); err != nil {
		return err
	}
	return nil
}

// Iptables returns the iptables command to use: iptables (whichever backend
// the system's alternative selects), else iptables-legacy or iptables-nft.
func Iptables() (string, error) {
	for _, name := range []string{"iptables", "iptables-legacy", "iptables-nft"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("needs iptables (apt-get install iptables; .ci/run installs it)")
}

// NS is a named network namespace.
type NS struct {
	Name string
}

// Add creates the namespace name with its loopback interface up.
func Add(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	n := &NS{Name: name}
	if err := n.IP("link", "set", "lo", "up"); err != nil {
		n.Delete()
		return nil, err
	}
	return n, nil
}

// Delete removes the namespace. Sockets still open in it keep it alive
// until they close; processes in it should be stopped first.
func (n *NS) Delete() error {
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// IP runs `ip -n NAME args...`.
func (n *NS) IP(args ...string) error {
	return run(append([]string{"ip", "-n", n.Name}, args...))
}

// Run runs argv inside the namespace (`ip netns exec NAME argv...`) and
// returns its output with the error when it fails.
func (n *NS) Run(argv ...string) error {
	return run(append([]string{"ip", "netns", "exec", n.Name}, argv...))
}

// Iptables runs iptables (see the package function) inside the namespace.
func (n *NS) Iptables(args ...string) error {
	ipt, err := Iptables()
	if err != nil {
		return err
	}
	return n.Run(append([]string{ipt, "-w"}, args...)...)
}

// Command returns a command running name inside the namespace. `ip netns
// exec` execs it in place: the process's pid is the command's.
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Veth links a and b with a veth pair: aName in a, bName in b, both up.
func Veth(a *NS, aName string, b *NS, bName string) error {
	if err := a.IP("link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return err
	}
	if err := a.IP("link", "set", aName, "up"); err != nil {
		return err
	}
	return b.IP("link", "set", bName, "up")
}

func run(argv []string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Do runs fn on an OS thread that has entered the namespace, then returns
// the thread to this process's namespace. Sockets fn creates belong to the
// namespace for their whole life, whichever thread uses them later. fn must
// not start goroutines that create sockets (they would run elsewhere).
//
// The Go runtime never clones new threads from a locked thread, so the
// namespace does not spread; if the thread cannot be returned, it stays
// locked and the runtime ends it with the goroutine.
func (n *NS) Do(fn func() error) error {
	target, err := os.Open(filepath.Join(runDir, n.Name))
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back from %s: %w", n.Name, err)) // thread stays locked: discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// DialContext connects from inside the namespace, as a process there would:
// its packets traverse the namespace's routes and iptables OUTPUT rules. It
// fits http.Transport.DialContext.
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// List returns the names of the namespaces `ip netns` knows.
func List() ([]string, error) {
	entries, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}
