package ca

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const webID = "spiffe://cluster.local/ns/shop/sa/web"

// waitBlocked waits until Run is waiting on the manual clock.
func waitBlocked(t *testing.T, clock *ManualClock) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for clock.Waiters() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Run never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

// expectChanged expects a Changed notification (Run notifies before waiting
// again, so the notification is there once Run is blocked).
func expectChanged(t *testing.T, c *CA, clock *ManualClock, want bool) {
	t.Helper()
	waitBlocked(t, clock)
	select {
	case <-c.Changed():
		if !want {
			t.Fatal("Changed notified, want no notification")
		}
	default:
		if want {
			t.Fatal("no Changed notification")
		}
	}
}

func TestRenewalTiming(t *testing.T) {
	t.Parallel()
	clock := NewManualClock(t0)
	c := openCA(t, t.TempDir(), clock, func(o *Options) { o.PollInterval = 100 * time.Hour })
	first, err := c.Leaf("shop/web-0", webID)
	if err != nil {
		t.Fatal(err)
	}
	renewAt := t0.Add(time.Duration(0.7 * float64(24*time.Hour))) // 16h48m
	if !first.RenewAt.Equal(renewAt) || !c.NextEvent().Equal(renewAt) {
		t.Fatalf("RenewAt = %v, NextEvent = %v, want %v", first.RenewAt, c.NextEvent(), renewAt)
	}

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); c.Run(stop) }()
	defer func() { close(stop); <-done }()

	// Just before 70 %: the same certificate, no notification.
	waitBlocked(t, clock)
	clock.Set(renewAt.Add(-time.Second))
	if l, _ := c.Leaf("shop/web-0", webID); l != first {
		t.Fatal("leaf renewed before 70 % of its lifetime")
	}
	expectChanged(t, c, clock, false)

	// At 70 %: Run notifies, and the next Leaf is a new certificate.
	clock.Set(renewAt)
	expectChanged(t, c, clock, true)
	second, err := c.Leaf("shop/web-0", webID)
	if err != nil {
		t.Fatal(err)
	}
	if second == first || second.Certificate.SerialNumber.Cmp(first.Certificate.SerialNumber) == 0 {
		t.Fatal("leaf not renewed at 70 % of its lifetime")
	}
	if !second.Certificate.NotAfter.Equal(renewAt.Add(24 * time.Hour)) {
		t.Errorf("renewed NotAfter = %v, want %v", second.Certificate.NotAfter, renewAt.Add(24*time.Hour))
	}
	if again, _ := c.Leaf("shop/web-0", webID); again != second {
		t.Error("a renewed leaf is renewed again at once")
	}
	if !c.NextEvent().Equal(second.RenewAt) {
		t.Errorf("NextEvent = %v, want %v", c.NextEvent(), second.RenewAt)
	}
}

func TestRotationWithOverlap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := NewManualClock(t0)
	bundleOut := filepath.Join(t.TempDir(), "bundle.pem")
	c := openCA(t, dir, clock, func(o *Options) { o.PollInterval = time.Minute; o.BundleOut = bundleOut })
	oldRoot := c.Bundle()[0]
	// bundleFile checks that the published bundle is the bundle now.
	bundleFile := func(step string, want int) {
		t.Helper()
		data, err := os.ReadFile(bundleOut)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(data), "BEGIN CERTIFICATE"); n != want || string(data) != string(c.BundlePEM()) {
			t.Errorf("%s: bundle file has %d certificates (want %d) or differs from the bundle", step, n, want)
		}
	}
	bundleFile("before", 1)
	oldLeaf, err := c.Leaf("shop/web-0", webID)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); c.Run(stop) }()
	defer func() { close(stop); <-done }()
	waitBlocked(t, clock)

	// `sift-control ca rotate` in another process, two hours of overlap.
	start := t0.Add(time.Minute)
	clock.Set(start)
	newFP, err := StartRotation(dir, 2*time.Hour, "", "", clock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := StartRotation(dir, 2*time.Hour, "", "", clock); err == nil {
		t.Fatal("a second rotation started while one is in progress")
	}

	// Picked up at the next poll: the bundle carries both roots, leaves
	// still come from the old root (peers must learn the new root first).
	clock.Advance(time.Minute)
	expectChanged(t, c, clock, true)
	bundle := c.Bundle()
	if len(bundle) != 2 || !bundle[0].Equal(oldRoot) || fingerprint(bundle[1]) != newFP {
		t.Fatalf("bundle during overlap = %d roots, want old then new", len(bundle))
	}
	bundleFile("overlap", 2)
	if l, _ := c.Leaf("shop/web-0", webID); l != oldLeaf {
		t.Fatal("leaf re-issued before half of the overlap")
	}
	if err := verify(oldLeaf, bundle, clock.Now()); err != nil {
		t.Fatalf("old leaf refused by the overlap bundle: %v", err)
	}

	// Half of the overlap: leaves switch to the new root; a client with the
	// overlap bundle accepts both the old and the new leaves.
	clock.Set(start.Add(time.Hour))
	expectChanged(t, c, clock, true)
	newLeaf, err := c.Leaf("shop/web-0", webID)
	if err != nil {
		t.Fatal(err)
	}
	if newLeaf == oldLeaf {
		t.Fatal("leaf not re-issued by the new root")
	}
	bundle = c.Bundle()
	if len(bundle) != 2 {
		t.Fatalf("bundle after the switch has %d roots, want 2", len(bundle))
	}
	for name, l := range map[string]*Leaf{"old": oldLeaf, "new": newLeaf} {
		if err := verify(l, bundle, clock.Now()); err != nil {
			t.Errorf("%s leaf refused during overlap: %v", name, err)
		}
	}
	if err := verify(newLeaf, []*x509.Certificate{oldRoot}, clock.Now()); err == nil {
		t.Error("new leaf verifies with the old root alone")
	}

	// End of the overlap: the old root is dropped, on disk too.
	clock.Set(start.Add(2 * time.Hour))
	expectChanged(t, c, clock, true)
	bundle = c.Bundle()
	if len(bundle) != 1 || fingerprint(bundle[0]) != newFP {
		t.Fatalf("bundle after the overlap = %d roots, want the new root only", len(bundle))
	}
	bundleFile("after", 1)
	if err := verify(oldLeaf, bundle, clock.Now()); err == nil {
		t.Error("old leaf still accepted after the old root was dropped")
	}
	if err := verify(newLeaf, bundle, clock.Now()); err != nil {
		t.Errorf("new leaf refused after the overlap: %v", err)
	}
	if l, _ := c.Leaf("shop/web-0", webID); l != newLeaf {
		t.Error("leaf re-issued at the end of the overlap although its root did not change")
	}
	for _, name := range []string{NextRootFile, RotationFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s still exists after the rotation (%v)", name, err)
		}
	}
	restarted := openCA(t, dir, clock)
	if b := restarted.Bundle(); len(b) != 1 || fingerprint(b[0]) != newFP {
		t.Error("after a restart the root is not the new root")
	}
}

// TestRotationResumesAcrossRestart: a rotation recorded on disk is followed
// by a restarted CA, and finished at open when its overlap passed meanwhile.
func TestRotationResumesAcrossRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := NewManualClock(t0)
	openCA(t, dir, clock)
	newFP, err := StartRotation(dir, 2*time.Hour, "", "", clock)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(90 * time.Minute)
	mid := openCA(t, dir, clock)
	if b := mid.Bundle(); len(b) != 2 {
		t.Fatalf("restarted mid-rotation: bundle has %d roots, want 2", len(b))
	}
	l, err := mid.Leaf("shop/web-0", webID)
	if err != nil {
		t.Fatal(err)
	}
	if fingerprint(mid.next.cert) != newFP || l.issuer != mid.next {
		t.Error("restarted after half of the overlap: leaves not from the new root")
	}
	clock.Advance(time.Hour)
	after := openCA(t, dir, clock)
	if b := after.Bundle(); len(b) != 1 || fingerprint(b[0]) != newFP {
		t.Error("restarted after the overlap: the rotation was not finished")
	}
}

// TestUnusedLeavesAreForgotten: a leaf nobody renews after the notification
// (its workload left) leaves the soonest-expiry metric's set at the next
// wake; the renewed one stays.
func TestUnusedLeavesAreForgotten(t *testing.T) {
	t.Parallel()
	clock := NewManualClock(t0)
	c := openCA(t, t.TempDir(), clock)
	if _, err := c.Leaf("shop/web-0", webID); err != nil {
		t.Fatal(err)
	}
	gone, err := c.Leaf("shop/old-0", webID)
	if err != nil {
		t.Fatal(err)
	}
	has := func(holder string) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.leaves["workload "+holder+" "+webID]
		return ok
	}
	// The wake at the renewal time (what Run does): both due, both kept.
	clock.Set(gone.RenewAt)
	if due, _ := c.due(t0, clock.Now()); !due || !has("shop/web-0") || !has("shop/old-0") {
		t.Fatalf("at renewal: due %v, web-0 kept %v, old-0 kept %v", due, has("shop/web-0"), has("shop/old-0"))
	}
	// The controller regenerates: web-0 is renewed, old-0 left the mesh.
	if _, err := c.Leaf("shop/web-0", webID); err != nil {
		t.Fatal(err)
	}
	// The next wake forgets old-0.
	last := clock.Now()
	clock.Advance(time.Second)
	if due, _ := c.due(last, clock.Now()); due || !has("shop/web-0") || has("shop/old-0") {
		t.Errorf("next wake: due %v, web-0 kept %v, old-0 kept %v; want false, true, false", due, has("shop/web-0"), has("shop/old-0"))
	}
}

// TestRotationWaitsForProxies: with a rotation gate (the controller's view
// of the proxies' ACKs), leaves switch to the new root only once every proxy
// has acknowledged the trust bundle with both roots, and the old root is
// dropped only once every proxy has acknowledged a leaf of the new root —
// however long past the overlap's times that is.
func TestRotationWaitsForProxies(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := NewManualClock(t0)
	c := openCA(t, dir, clock)
	oldRoot := c.Bundle()[0]
	acked := map[string]string{"a": c.SecurityState(), "b": c.SecurityState()}
	var asked []string
	c.SetRotationGate(func(state string) []string {
		asked = append(asked, state)
		var out []string
		for _, p := range []string{"a", "b"} {
			if acked[p] != state {
				out = append(out, p)
			}
		}
		return out
	})
	start := t0.Add(time.Minute)
	clock.Set(start)
	if _, err := StartRotation(dir, 2*time.Hour, "", "", clock); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Reload(); !ok || err != nil {
		t.Fatalf("Reload = %v, %v", ok, err)
	}
	introduced := c.SecurityState()
	acked["a"] = introduced // b has not acknowledged the new bundle yet

	issuedByOld := func() bool {
		t.Helper()
		l, err := c.Leaf("shop/web-0", webID)
		if err != nil {
			t.Fatal(err)
		}
		return verify(l, []*x509.Certificate{oldRoot}, clock.Now()) == nil
	}
	clock.Set(start.Add(90 * time.Minute)) // past half the overlap
	if !issuedByOld() || c.SecurityState() != introduced {
		t.Fatal("leaves switched to the new root while proxy b lacks the new trust bundle")
	}
	if len(asked) == 0 || asked[len(asked)-1] != introduced {
		t.Fatalf("the gate was asked about %q, want the introduced state %q", asked, introduced)
	}
	acked["b"] = introduced
	if issuedByOld() {
		t.Fatal("leaves still from the old root once every proxy has the new bundle")
	}
	switched := c.SecurityState()
	if switched == introduced {
		t.Fatal("the security state did not change with the switch")
	}

	clock.Set(start.Add(5 * time.Hour)) // well past the overlap
	acked["a"] = switched
	if n := len(c.Bundle()); n != 2 {
		t.Fatalf("bundle has %d roots while proxy b has no leaf of the new root, want 2", n)
	}
	acked["b"] = switched
	b := c.Bundle()
	if len(b) != 1 || b[0].Equal(oldRoot) {
		t.Fatal("the old root stayed after every proxy acknowledged a leaf of the new root")
	}
	if _, err := os.Stat(filepath.Join(dir, RotationFile)); !os.IsNotExist(err) {
		t.Errorf("rotation file left after the rotation finished (%v)", err)
	}
}
