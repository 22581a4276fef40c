package detect

import "testing"

// The policy names only real fields and decides every field of the configs
// it lists, so a new go-control-plane release forces a decision.
func TestPolicyComplete(t *testing.T) {
	t.Parallel()
	if err := policy.Audit(); err != nil {
		t.Error(err)
	}
	for _, f := range policy.Unruled() {
		t.Errorf("policy: %s has no rule", f)
	}
}
