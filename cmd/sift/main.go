// Command sift is Sift's operator CLI.
//
//	sift iptables [flags]      redirect a workload's TCP through its sidecar (Linkerd's proxy-init)
//	sift inject [flags] FILE…  add Sift's sidecar to Kubernetes manifests
//	sift diagnose [flags]      ask a running sift-proxy what detection decided, and why
//
// Run "sift <command> -h" for a command's flags and examples.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// command is a subcommand: it parses its own flags.
type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"iptables", "redirect a workload's TCP through its sidecar proxy (Linkerd's proxy-init)", runIptables},
	{"inject", "add Sift's sidecar to Kubernetes manifests (for kubectl apply)", runInject},
	{"diagnose", "show what a running sift-proxy decided about recent connections, and why", runDiagnose},
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "sift: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "sift is Sift's operator CLI.\n\nUsage: sift <command> [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun \"sift <command> -h\" for a command's flags and examples.")
}

// flags is a command's flag set: -h prints about, the flags, then examples.
func flags(name, about, examples string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sift "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, about+"\n\nFlags:")
		fs.PrintDefaults()
		fmt.Fprint(stderr, examples)
	}
	return fs
}

// parse parses a command's arguments. When it returns false the command
// ends with code: 0 after -h, 2 after a bad flag (already reported).
func parse(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	return 0, true
}

// failer returns a function that reports a command's error, "sift NAME:
// message", and returns the exit code 1.
func failer(name string, stderr io.Writer) func(format string, a ...any) int {
	return func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sift "+name+": "+format+"\n", a...)
		return 1
	}
}
