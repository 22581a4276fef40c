package ca

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// NodeTokenMetadataKey is the key of the node token in the xDS node's
// metadata (node.metadata in the proxy's bootstrap).
const NodeTokenMetadataKey = "sift.node_token"

// tokenPrefix versions the token format; tokenContext separates the MAC's
// input from any other use of the key.
const (
	tokenPrefix  = "v1."
	tokenContext = "sift node token v1\x00"
)

// NodeToken returns the token that proves a proxy may use node id nodeID:
// "v1." + base64url(HMAC-SHA256(mesh key, context || node id)). It is a
// bearer credential: whoever holds it gets the node's configuration and
// keys. Never log it.
func (c *CA) NodeToken(nodeID string) string { return nodeToken(c.tokenKey, nodeID) }

func nodeToken(key []byte, nodeID string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(tokenContext))
	m.Write([]byte(nodeID))
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Errors of Authenticate, for callers that count them by reason.
var (
	ErrNoNodeID     = errors.New("no node id")
	ErrNoToken      = errors.New("no node token in node metadata " + NodeTokenMetadataKey)
	ErrInvalidToken = errors.New("the node token is not valid for this node id")
)

// Authenticate checks that node carries, in its metadata under
// NodeTokenMetadataKey, the token of its id. The comparison is constant
// time. Errors wrap ErrNoNodeID, ErrNoToken or ErrInvalidToken and never
// contain the token.
func (c *CA) Authenticate(node *corev3.Node) error {
	id := node.GetId()
	if id == "" {
		return fmt.Errorf("ca: %w", ErrNoNodeID)
	}
	v := node.GetMetadata().GetFields()[NodeTokenMetadataKey]
	got := v.GetStringValue()
	if got == "" {
		return fmt.Errorf("ca: node %q: %w", id, ErrNoToken)
	}
	want := nodeToken(c.tokenKey, id)
	if !strings.HasPrefix(got, tokenPrefix) || !hmac.Equal([]byte(got), []byte(want)) {
		return fmt.Errorf("ca: node %q: %w", id, ErrInvalidToken)
	}
	return nil
}
