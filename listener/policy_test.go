package listener

import "testing"

// Every rule of the policy names a real field of its message.
func TestPolicyAudit(t *testing.T) {
	t.Parallel()
	if err := listenerPolicy.Audit(); err != nil {
		t.Error(err)
	}
}
