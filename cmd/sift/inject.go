package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/siftmesh/sift/inject"
)

const injectExamples = `
Examples:
  # Inject a manifest and apply it:
  sift inject deploy.yaml | kubectl apply -f -

  # Everything in a directory, from what the cluster has:
  kubectl get deploy -n shop -o yaml | sift inject - | kubectl apply -f -

  # Mark MySQL's port opaque and leave SSH alone:
  sift inject --opaque-ports 3306 --skip-inbound-ports 22 k8s/
`

var injectAbout = "Usage: sift inject [flags] FILE|DIR|- ...\n\nAdds Sift's sidecar (sift-proxy and an init container running sift iptables) to the\nDeployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and Pods of Kubernetes\nmanifests (multi-document YAML, JSON, Lists), honouring linkerd.io/inject: disabled and\nLinkerd's config.linkerd.io port annotations, and writes them to stdout for kubectl apply.\nOther kinds pass through untouched; injecting twice changes nothing. A summary goes to stderr."

func runInject(args []string, stdout, stderr io.Writer) int {
	fs := flags("inject", injectAbout, injectExamples, stderr)
	d := inject.DefaultOptions()
	proxyImage := fs.String("proxy-image", d.ProxyImage, "the image that runs sift-proxy")
	initImage := fs.String("init-image", d.InitImage, "the image that runs sift iptables")
	control := fs.String("control-plane", d.ControlPlane, "sift-control's xDS address (host:port)")
	uid := fs.Int64("proxy-uid", d.ProxyUID, "the UID sift-proxy runs as")
	opaque := fs.String("opaque-ports", "", "set config.linkerd.io/opaque-ports on every pod template")
	skipIn := fs.String("skip-inbound-ports", "", "set config.linkerd.io/skip-inbound-ports on every pod template")
	skipOut := fs.String("skip-outbound-ports", "", "set config.linkerd.io/skip-outbound-ports on every pod template")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	opts := inject.Options{ProxyImage: *proxyImage, InitImage: *initImage, ControlPlane: *control, ProxyUID: *uid,
		OpaquePorts: *opaque, SkipInboundPorts: *skipIn, SkipOutboundPorts: *skipOut}
	var files []string
	for _, a := range fs.Args() {
		if a == "-" {
			files = append(files, a)
			continue
		}
		fi, err := os.Stat(a)
		if err != nil {
			fmt.Fprintf(stderr, "sift inject: %v\n", err)
			return 1
		}
		if !fi.IsDir() {
			files = append(files, a)
			continue
		}
		var found []string
		filepath.WalkDir(a, func(p string, de os.DirEntry, err error) error {
			if err == nil && !de.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml") || strings.HasSuffix(p, ".json")) {
				found = append(found, p)
			}
			return nil
		})
		sort.Strings(found)
		files = append(files, found...)
	}
	for i, f := range files {
		in, name := io.Reader(os.Stdin), "stdin"
		if f != "-" {
			fh, err := os.Open(f)
			if err != nil {
				fmt.Fprintf(stderr, "sift inject: %v\n", err)
				return 1
			}
			defer fh.Close()
			in, name = fh, f
		}
		if i > 0 {
			fmt.Fprintln(stdout, "---")
		}
		reports, err := inject.Stream(in, stdout, name, opts)
		for _, r := range reports {
			what := r.Kind
			if r.Name != "" {
				what += "/" + r.Name
			}
			fmt.Fprintf(stderr, "%s: document %d: %s: %s\n", name, r.Doc, what, r.Outcome)
		}
		if err != nil {
			fmt.Fprintf(stderr, "sift inject: %v\n", err)
			return 1
		}
	}
	return 0
}
