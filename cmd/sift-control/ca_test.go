package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/controlplane/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func quietCA(t *testing.T, dir string) *ca.CA {
	t.Helper()
	c, err := ca.Open(ca.Options{Dir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBootstrapCommand(t *testing.T) {
	t.Parallel()
	caDir := t.TempDir()
	authority := quietCA(t, caDir)
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantErr    string
		wantTLS    bool
		wantStatic bool
	}{
		{name: "tls, embedded bundle", args: []string{"--ca-dir", caDir, "--node", "web-0.shop"}, wantTLS: true, wantStatic: true},
		{name: "plaintext, dns name", args: []string{"--ca-dir", caDir, "--node", "web-0.shop", "--plaintext", "--xds-address", "sift-control.sift:18000"}},
		{name: "no node", args: []string{"--ca-dir", caDir}, wantCode: 2, wantErr: "--ca-dir and --node are required"},
		{name: "no CA there", args: []string{"--ca-dir", filepath.Join(caDir, "typo"), "--node", "a"}, wantCode: 1, wantErr: "no CA in"},
		{name: "bad address", args: []string{"--ca-dir", caDir, "--node", "a", "--xds-address", "nowhere"}, wantCode: 1, wantErr: "xds address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			if code := runBootstrap(tt.args, &stdout, &stderr); code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			if tt.wantCode != 0 {
				if !strings.Contains(stderr.String(), tt.wantErr) {
					t.Errorf("stderr %q does not contain %q", stderr.String(), tt.wantErr)
				}
				return
			}
			b, err := bootstrap.Parse(stdout.Bytes())
			if err != nil {
				t.Fatalf("output is not a bootstrap: %v\n%s", err, stdout.String())
			}
			if err := bootstrap.Validate(b); err != nil {
				t.Fatalf("invalid bootstrap: %v", err)
			}
			if err := authority.Authenticate(b.GetNode()); err != nil {
				t.Errorf("the bootstrap's node does not authenticate: %v", err)
			}
			c := b.GetStaticResources().GetClusters()[0]
			if got := c.GetTransportSocket() != nil; got != tt.wantTLS {
				t.Errorf("transport socket present = %v, want %v", got, tt.wantTLS)
			}
			if got := c.GetType().String() == "STATIC"; got != tt.wantStatic {
				t.Errorf("cluster type %v", c.GetType())
			}
			if diff := cmp.Diff("sift-control", b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()); diff != "" {
				t.Error(diff)
			}
		})
	}
}

func TestBootstrapCommandWritesFiles(t *testing.T) {
	t.Parallel()
	caDir, out := t.TempDir(), t.TempDir()
	authority := quietCA(t, caDir)
	boot, trust := filepath.Join(out, "b.yaml"), filepath.Join(out, "trust.pem")
	var stdout, stderr bytes.Buffer
	if code := runBootstrap([]string{"--ca-dir", caDir, "--node", "n", "--trust-file", trust, "-o", boot}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stdout.Len() != 0 {
		t.Error("with -o, the bootstrap went to standard output too")
	}
	fi, err := os.Stat(boot)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	got, err := os.ReadFile(trust)
	if err != nil || string(got) != string(authority.BundlePEM()) {
		t.Errorf("trust file = %q (%v), want the bundle", got, err)
	}
}

func TestCARotateCommand(t *testing.T) {
	t.Parallel()
	caDir := t.TempDir()
	quietCA(t, caDir)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{name: "no subcommand", args: nil, wantCode: 2, wantErr: "usage"},
		{name: "no dir", args: []string{"rotate"}, wantCode: 2, wantErr: "--ca-dir is required"},
		{name: "starts", args: []string{"rotate", "--ca-dir", caDir, "--overlap", "1h"}, wantErr: "rotation started"},
		{name: "one at a time", args: []string{"rotate", "--ca-dir", caDir}, wantCode: 1, wantErr: "in progress"},
	}
	for _, tt := range tests { // sequential: the steps build on each other
		var stderr bytes.Buffer
		if code := runCA(tt.args, &stderr); code != tt.wantCode || !strings.Contains(stderr.String(), tt.wantErr) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", tt.name, code, stderr.String(), tt.wantCode, tt.wantErr)
		}
	}
	for _, f := range []string{ca.NextRootFile, ca.RotationFile} {
		if _, err := os.Stat(filepath.Join(caDir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
