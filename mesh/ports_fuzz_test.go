package mesh

import "testing"

// FuzzParsePortSet: port lists come from annotations anyone who can edit a
// pod, service or namespace writes. Parsing never panics, and a parsed set
// prints in a form that parses back to the same set.
func FuzzParsePortSet(f *testing.F) {
	for _, s := range []string{"", DefaultOpaquePorts, "4000-4100, 25", "1-65535", "0", "70000", "5-3", "a,b", ",,", "-", "1-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParsePortSet(s)
		if err != nil {
			return
		}
		again, err := ParsePortSet(ps.String())
		if err != nil {
			t.Fatalf("%q parsed to %q, which does not parse: %v", s, ps.String(), err)
		}
		if !again.Equal(ps) {
			t.Fatalf("%q parsed to %q, which parses to %q", s, ps.String(), again.String())
		}
		for _, r := range ps.Ranges() {
			if r.First == 0 || r.First > r.Last || !ps.Contains(r.First) || !ps.Contains(r.Last) {
				t.Fatalf("%q: bad range %+v", s, r)
			}
		}
	})
}
