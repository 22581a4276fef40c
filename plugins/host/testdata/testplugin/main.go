// Command testplugin is a protocol-sniffer plugin that misbehaves on
// request, for the host's tests. It matches data starting with "TEST" as
// protocol "test". -mode: ok, hang (never answers Sniff), garbage (matches
// an undeclared protocol), big (oversized attributes), stderr (writes a
// line to stderr on every call); -api N serves plugin API version N.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/siftmesh/sift/plugins"
)

var (
	mode = flag.String("mode", "ok", "ok, hang, garbage, big, stderr")
	_    = flag.String("id", "", "ignored: tells the host's tests' plugin processes apart")
)

type sniffer struct{}

func (sniffer) Info() plugins.Info {
	return plugins.Info{Name: "test", Version: "0.0.1", Protocols: []string{"test"}, MaxBytes: 32}
}

func (sniffer) Sniff(b []byte, atEOF bool) plugins.Result {
	switch *mode {
	case "hang":
		time.Sleep(time.Hour)
	case "garbage":
		return plugins.Result{Verdict: plugins.Match, Protocol: "not-declared"}
	case "big":
		return plugins.Result{Verdict: plugins.Match, Protocol: "test", Attributes: map[string]string{"x": strings.Repeat("x", 10000)}}
	case "stderr":
		fmt.Fprintf(os.Stderr, "sniffing %d bytes\n", len(b))
	}
	const magic = "TEST"
	n := min(len(b), len(magic))
	switch {
	case string(b[:n]) != magic[:n]:
		return plugins.Result{Verdict: plugins.NoMatch}
	case n < len(magic) && atEOF:
		return plugins.Result{Verdict: plugins.NoMatch}
	case n < len(magic):
		return plugins.Result{Verdict: plugins.NeedMore, Need: len(magic)}
	}
	return plugins.Result{Verdict: plugins.Match, Protocol: "test", Attributes: map[string]string{"len": fmt.Sprint(len(b))}}
}

func main() {
	api := flag.Int("api", plugins.APIVersion, "the plugin API version to serve")
	flag.Parse()
	if *api != plugins.APIVersion {
		hs := plugins.Handshake
		hs.ProtocolVersion = uint(*api)
		plugin.Serve(&plugin.ServeConfig{HandshakeConfig: hs,
			VersionedPlugins: map[int]plugin.PluginSet{*api: {plugins.PluginName: &plugins.GRPCPlugin{Impl: sniffer{}}}},
			GRPCServer:       plugin.DefaultGRPCServer})
		return
	}
	plugins.Serve(sniffer{})
}
