package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/siftmesh/sift/bootstrap"
)

// TestControlPlaneCA runs sift-control as the mesh CA with xDS over TLS:
// `sift-control bootstrap` gives a node what it needs to fetch its own
// certificate (and nothing else), `sift-control ca rotate` puts a second
// root in the bundle that the node receives, and neither keys nor tokens
// reach the logs.
func TestControlPlaneCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshPath, []byte(controlMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(dir, "ca")
	bundleOut := filepath.Join(dir, "published-bundle.pem")
	cp := startControl(t, meshPath, "--ca-dir", caDir, "--xds-tls", "--ca-poll-interval", "50ms", "--ca-bundle-out", bundleOut)

	// The bootstrap of node web-0.shop, with the bundle in a file.
	bootPath, trustPath := filepath.Join(dir, "bootstrap.yaml"), filepath.Join(dir, "trust.pem")
	out, err := exec.Command(siftControlBinary(t), "bootstrap", "--ca-dir", caDir, "--node", "web-0.shop",
		"--xds-address", cp.xds, "--trust-file", trustPath, "-o", bootPath).CombinedOutput()
	if err != nil {
		t.Fatalf("sift-control bootstrap: %v\n%s", err, out)
	}
	if fi, err := os.Stat(bootPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	data, err := os.ReadFile(bootPath)
	if err != nil {
		t.Fatal(err)
	}
	boot, err := bootstrap.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := bootstrap.Validate(boot); err != nil {
		t.Fatalf("the generated bootstrap is invalid: %v", err)
	}
	cluster := boot.GetStaticResources().GetClusters()[0]
	var upstream tlsv3.UpstreamTlsContext
	if err := cluster.GetTransportSocket().GetTypedConfig().UnmarshalTo(&upstream); err != nil {
		t.Fatal(err)
	}
	if got := upstream.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); got != trustPath {
		t.Fatalf("trusted_ca.filename = %q, want %q", got, trustPath)
	}
	trust, err := os.ReadFile(trustPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(trust) {
		t.Fatal("the trust file holds no certificate")
	}

	// A client configured like the bootstrap: TLS trusting the file, the
	// bootstrap's SNI, its node with the token.
	cc, err := grpc.NewClient(cp.xds, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: upstream.GetSni()})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &discoveryv3.DiscoveryRequest{Node: boot.GetNode(), TypeUrl: resource.SecretType, ResourceNames: []string{"default", "ROOTCA"}}
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
	first := recv(t, st.Recv, 30*time.Second)
	secrets := unpack(t, first, func() *tlsv3.Secret { return &tlsv3.Secret{} })
	tc := secrets["default"].GetTlsCertificate()
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if got := pair.Leaf.URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/default" {
		t.Errorf("certificate for %q", got)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the certificate does not verify with the trust file: %v", err)
	}
	if got := string(secrets["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes()); got != string(trust) {
		t.Error("ROOTCA differs from the trust file")
	}

	// web-0's token does not open db's node.
	other, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stolen := &discoveryv3.DiscoveryRequest{Node: boot.GetNode(), TypeUrl: resource.SecretType, ResourceNames: []string{"default"}}
	stolen.Node.Id = "db"
	if err := other.Send(stolen); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("db's node with web-0's token: err = %v, want PermissionDenied", err)
	}
	waitMetric(t, cp.admin, `sift_control_node_auth_failures_total{reason="invalid_token"} 1`)
	waitMetric(t, cp.admin, "sift_control_ca_trust_bundle_roots 1")

	// Rotation: the bundle the node receives carries both roots.
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: req.ResourceNames,
		VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(siftControlBinary(t), "ca", "rotate", "--ca-dir", caDir, "--overlap", "2h").CombinedOutput(); err != nil {
		t.Fatalf("sift-control ca rotate: %v\n%s", err, out)
	}
	second := recv(t, st.Recv, 30*time.Second)
	bundle := unpack(t, second, func() *tlsv3.Secret { return &tlsv3.Secret{} })["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes()
	if n := strings.Count(string(bundle), "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("bundle after ca rotate has %d certificates, want 2", n)
	}
	if !strings.HasPrefix(string(bundle), string(trust)) {
		t.Error("the old root is not first in the overlap bundle")
	}
	waitMetric(t, cp.admin, "sift_control_ca_trust_bundle_roots 2")
	if published, err := os.ReadFile(bundleOut); err != nil || string(published) != string(bundle) {
		t.Errorf("--ca-bundle-out file differs from the pushed bundle (%v)", err)
	}
	body := scrape(t, cp.admin)
	if !strings.Contains(body, `sift_control_ca_certificates_issued_total{kind="workload"}`) || !strings.Contains(body, "sift_control_ca_leaf_expiry_soonest_timestamp_seconds") {
		t.Errorf("CA metrics missing:\n%s", body)
	}

	token := boot.GetNode().GetMetadata().GetFields()["sift.node_token"].GetStringValue()
	logs := cp.logs()
	for _, secret := range []string{token, "PRIVATE KEY", string(tc.GetPrivateKey().GetInlineBytes()[40:80])} {
		if secret != "" && strings.Contains(logs, secret) {
			t.Errorf("sift-control logged a secret (%.12q...)", secret)
		}
	}
}
