package ca

import (
	"errors"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func nodeWithToken(id, token string) *corev3.Node {
	n := &corev3.Node{Id: id}
	if token != "" {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{NodeTokenMetadataKey: structpb.NewStringValue(token)}}
	}
	return n
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	c := openCA(t, t.TempDir(), NewManualClock(t0))
	other := openCA(t, t.TempDir(), NewManualClock(t0))
	good := c.NodeToken("web-0.shop")
	tests := []struct {
		name    string
		node    *corev3.Node
		wantErr error
	}{
		{name: "own token", node: nodeWithToken("web-0.shop", good)},
		{name: "no node", node: nil, wantErr: ErrNoNodeID},
		{name: "no id", node: nodeWithToken("", good), wantErr: ErrNoNodeID},
		{name: "no token", node: nodeWithToken("web-0.shop", ""), wantErr: ErrNoToken},
		{name: "token of another node", node: nodeWithToken("db-0.shop", good), wantErr: ErrInvalidToken},
		{name: "token of another mesh", node: nodeWithToken("web-0.shop", other.NodeToken("web-0.shop")), wantErr: ErrInvalidToken},
		{name: "truncated", node: nodeWithToken("web-0.shop", good[:len(good)-1]), wantErr: ErrInvalidToken},
		{name: "no version prefix", node: nodeWithToken("web-0.shop", strings.TrimPrefix(good, "v1.")), wantErr: ErrInvalidToken},
		{name: "not a string", node: &corev3.Node{Id: "web-0.shop", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			NodeTokenMetadataKey: structpb.NewNumberValue(1)}}}, wantErr: ErrNoToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := c.Authenticate(tt.node)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Authenticate = %v, want %v", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), good[3:]) {
				t.Errorf("the error %q contains the token", err)
			}
		})
	}
}

func FuzzAuthenticate(f *testing.F) {
	dir := f.TempDir()
	c, err := Open(Options{Dir: dir, Logger: quiet()})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("web-0.shop", c.NodeToken("web-0.shop"))
	f.Add("", "v1.")
	f.Add("a", "v1.AAAA")
	f.Fuzz(func(t *testing.T, id, token string) {
		err := c.Authenticate(nodeWithToken(id, token))
		if (err == nil) != (id != "" && token == c.NodeToken(id)) {
			t.Fatalf("Authenticate(%q) = %v", id, err)
		}
	})
}
