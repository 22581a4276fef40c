package gen

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The s2 pair (plain → mTLS origin → mTLS terminate → backend) as each
// target renders it, checked by text: the settings that make the targets
// equivalent (TLS 1.3 only, X25519, no resumption from the originating side,
// client certificates required and verified).
func TestMTLSSettings(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	top := mtlsPair(25201, 25211, 25300)
	tests := []struct {
		name string
		gen  func(Topology, Env) (string, error)
		want []string
	}{
		{"haproxy", HAProxy, []string{
			"bind 127.0.0.1:25211 ssl crt " + env.Certs.ServerPEM + " ca-file " + env.Certs.CA + " verify required ssl-min-ver TLSv1.3 curves X25519\n",
			"server s0 127.0.0.1:25211 ssl crt " + env.Certs.ClientPEM + " ca-file " + env.Certs.CA + " verify required sni str(" + ServerName + ") verifyhost " + ServerName + " ssl-min-ver TLSv1.3 no-ssl-reuse\n",
			"server s0 127.0.0.1:25300\n",
		}},
		{"nginx", Nginx, []string{
			"listen 127.0.0.1:25211 ssl;",
			"ssl_verify_client on;\n        ssl_protocols TLSv1.3;\n        ssl_ecdh_curve X25519;",
			"ssl_client_certificate " + env.Certs.CA + ";",
			"proxy_ssl on;",
			"proxy_ssl_certificate " + env.Certs.ClientCert + ";",
			"proxy_ssl_verify on;",
			"proxy_ssl_protocols TLSv1.3;\n        proxy_ssl_session_reuse off;",
		}},
		{"sift", Sift, []string{
			"require_client_certificate: true",
			"max_session_keys: 0",
			"sni: " + ServerName,
			"tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3, ecdh_curves: [X25519]}",
			"certificate_chain: {filename: " + env.Certs.ClientCert + "}",
			"trusted_ca: {filename: " + env.Certs.CA + "}",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := tt.gen(top, env)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(cfg, w) {
					t.Errorf("config lacks %q\n%s", w, cfg)
				}
			}
			if tt.name == "sift" && (strings.Count(cfg, "tls_maximum_protocol_version: TLSv1_3") != 2 || strings.Count(cfg, "transport_socket:") != 2) {
				t.Errorf("want TLS on both sides of the pair:\n%s", cfg)
			}
		})
	}
}

func mtlsPair(in, hop, backend int) Topology {
	return Topology{Listeners: []Listener{
		{Name: "mtls_out", Port: in, Kind: MTLSOrigin, Upstreams: []int{hop}},
		{Name: "mtls_in", Port: hop, Kind: MTLSTerminate, Upstreams: []int{backend}},
	}}
}

// Each installed target, run with its generated s2 configuration, carries
// bytes through both hops, and its terminating listener speaks TLS 1.3 with
// X25519, requires a client certificate and accepts the bench client's.
func TestMTLSEndToEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		bin  string // "" = look up name on PATH
		argv func(bin, dir, file string) []string
		gen  func(Topology, Env) (string, error)
	}{
		{"haproxy", "", func(bin, dir, file string) []string { return []string{bin, "-db", "-f", file} }, HAProxy},
		{"nginx", "", func(bin, dir, file string) []string {
			return []string{bin, "-p", dir, "-e", filepath.Join(dir, "err.log"), "-c", file}
		}, Nginx},
		{"sift", os.Getenv("SIFT_PROXY"), func(bin, dir, file string) []string { return []string{bin, "-c", file, "-l", "warning"} }, Sift},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bin := tt.bin
			if tt.name != "sift" {
				bin, _ = exec.LookPath(tt.name)
			}
			if bin == "" {
				t.Skipf("%s not available (sift: set SIFT_PROXY)", tt.name)
			}
			env := testEnv(t)
			os.MkdirAll(filepath.Join(env.WorkDir, "nginx-tmp"), 0o755)
			backend := echoServer(t)
			in, hop := freePort(t), freePort(t)
			cfg, err := tt.gen(mtlsPair(in, hop, backend), env)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(env.WorkDir, tt.name+".conf")
			if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			argv := tt.argv(bin, env.WorkDir, file)
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			var logs bytes.Buffer
			cmd.Stdout, cmd.Stderr = &logs, &logs
			// nginx's worker outlives a killed master: stop politely, and
			// never wait on the log pipe for more than a moment.
			cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
			cmd.WaitDelay = 3 * time.Second
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
			for _, p := range []int{in, hop} {
				if err := waitListening(p, 10*time.Second); err != nil {
					t.Fatalf("%v\n%s", err, logs.String())
				}
			}

			// Two hops, plaintext at both ends.
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", in), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := bytes.Repeat([]byte("sift"), 64<<10)
			go c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo through both hops: %v\n%s", err, logs.String())
			}

			// The terminating listener: with the bench client certificate a
			// TLS 1.3 X25519 session that carries bytes; without one, no bytes.
			cases := []struct {
				name    string
				cert    bool
				wantErr bool
			}{{"client certificate", true, false}, {"no client certificate", false, true}}
			for _, cc := range cases {
				st, err := tlsEcho(env.Certs, hop, cc.cert)
				if (err != nil) != cc.wantErr {
					t.Errorf("%s: err = %v, wantErr %v\n%s", cc.name, err, cc.wantErr, logs.String())
					continue
				}
				if err == nil && (st.Version != tls.VersionTLS13 || st.CurveID != tls.X25519) {
					t.Errorf("%s: version %x curve %v, want TLS 1.3 with X25519", cc.name, st.Version, st.CurveID)
				}
			}
		})
	}
}

// tlsEcho handshakes with the terminating listener on port as the bench
// client (with or without its certificate) and echoes a few bytes through it.
func tlsEcho(certs Certs, port int, withCert bool) (tls.ConnectionState, error) {
	caPEM, err := os.ReadFile(certs.CA)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conf := &tls.Config{RootCAs: pool, ServerName: ServerName}
	if withCert {
		kp, err := tls.LoadX509KeyPair(certs.ClientCert, certs.ClientKey)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		conf.Certificates = []tls.Certificate{kp}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", port), conf)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// TLS 1.3 servers refuse a missing client certificate after the
	// client's handshake is done: the refusal shows on the first read.
	if _, err := c.Write([]byte("ping")); err != nil {
		return tls.ConnectionState{}, err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return tls.ConnectionState{}, err
	}
	if string(buf) != "ping" {
		return tls.ConnectionState{}, errors.New("echo mismatch")
	}
	return c.ConnectionState(), nil
}

func echoServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// freePort reserves a loopback port and releases it for the proxy to bind.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitListening(port int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listening on %d after %v", port, within)
}
