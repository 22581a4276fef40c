package admin

import (
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// CommandLineOptions are the process's flags as /server_info reports them
// (Envoy's command_line_options, the fields Sift has).
type CommandLineOptions struct {
	ConfigPath     string `json:"config_path"`
	ConfigYAML     string `json:"config_yaml"`
	LogLevel       string `json:"log_level"`
	LogFormat      string `json:"log_format"`
	DrainTime      string `json:"drain_time"` // "600s"
	Mode           string `json:"mode"`       // "Serve" or "Validate"
	ServiceNode    string `json:"service_node"`
	ServiceCluster string `json:"service_cluster"`
}

// ServerInfo is what /server_info reports beyond the state.
type ServerInfo struct {
	// Node is the bootstrap's node (an *corev3.Node), or nil.
	Node        proto.Message
	Started     time.Time
	CommandLine CommandLineOptions
}

// InfoSource is implemented by Sources that can describe the server: it
// feeds /server_info.
type InfoSource interface {
	ServerInfo() ServerInfo
}

// serverInfoJSON is Envoy's /server_info shape (admin.v3.ServerInfo).
type serverInfoJSON struct {
	Version            string             `json:"version"`
	State              string             `json:"state"`
	UptimeCurrentEpoch string             `json:"uptime_current_epoch"`
	UptimeAllEpochs    string             `json:"uptime_all_epochs"`
	HotRestartVersion  string             `json:"hot_restart_version"`
	CommandLineOptions CommandLineOptions `json:"command_line_options"`
	Node               any                `json:"node"`
}

func (s *Server) serverInfo(w http.ResponseWriter, _ *http.Request) {
	var info ServerInfo
	if is, ok := s.src.(InfoSource); ok {
		info = is.ServerInfo()
	}
	js := serverInfoJSON{Version: Version(), State: State(s.state.Load()).String(),
		HotRestartVersion: "disabled", CommandLineOptions: info.CommandLine, Node: struct{}{}}
	if !info.Started.IsZero() {
		up := fmt.Sprintf("%ds", int64(time.Since(info.Started).Seconds()))
		js.UptimeCurrentEpoch, js.UptimeAllEpochs = up, up
	}
	if info.Node != nil {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(info.Node)
		if err != nil {
			http.Error(w, "server_info: node: "+err.Error(), http.StatusInternalServerError)
			return
		}
		js.Node = rawJSON(b)
	}
	writeJSON(w, js)
}

// rawJSON is pre-encoded JSON.
type rawJSON []byte

func (r rawJSON) MarshalJSON() ([]byte, error) { return r, nil }

// Version is sift-proxy's version as /server_info reports it, in Envoy's
// "revision/version/status/build" shape: the VCS revision and module version
// the binary was built from (when the build recorded them), "Modified" or
// "Clean", and the Go version.
func Version() string {
	rev, ver, status := "unknown", "devel", "Clean"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			ver = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					status = "Modified"
				}
			}
		}
	}
	return rev + "/" + ver + "/" + status + "/" + runtime.Version()
}
