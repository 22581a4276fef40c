package mesh

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of TCP ports, First <= Last.
type PortRange struct {
	First, Last uint16
}

// PortSet is a set of ports kept as sorted, non-overlapping, non-adjacent
// ranges. The zero PortSet is empty. A PortSet is immutable once built.
type PortSet struct {
	ranges []PortRange
}

// DefaultOpaquePorts is Linkerd's install-wide default list of opaque ports:
// SMTP (25, 587), MySQL (3306) and Galera (4444), PostgreSQL (5432), Redis
// (6379), ElasticSearch (9300) and Memcache (11211).
const DefaultOpaquePorts = "25,587,3306,4444,5432,6379,9300,11211"

// ParsePortSet parses Linkerd's port-list syntax, as used by the
// config.linkerd.io/opaque-ports and skip-*-ports annotations: a
// comma-separated list of ports and inclusive ranges ("25,587,4000-4100").
// Blank items are ignored, so "" is the empty set. Port 0 is invalid.
func ParsePortSet(s string) (PortSet, error) {
	var items []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return PortSetOf(items...)
}

// PortSetOf builds a set from items, each a port ("3306") or an inclusive
// range ("4000-4100").
func PortSetOf(items ...string) (PortSet, error) {
	rs := make([]PortRange, 0, len(items))
	for _, item := range items {
		r, err := parsePortRange(item)
		if err != nil {
			return PortSet{}, err
		}
		rs = append(rs, r)
	}
	return newPortSet(rs), nil
}

// MustParsePortSet is ParsePortSet for constants; it panics on error.
func MustParsePortSet(s string) PortSet {
	ps, err := ParsePortSet(s)
	if err != nil {
		panic(err)
	}
	return ps
}

func parsePortRange(item string) (PortRange, error) {
	item = strings.TrimSpace(item)
	first, last, isRange := strings.Cut(item, "-")
	lo, err := parsePort(first)
	if err != nil {
		return PortRange{}, fmt.Errorf("%q: %w", item, err)
	}
	hi := lo
	if isRange {
		if hi, err = parsePort(last); err != nil {
			return PortRange{}, fmt.Errorf("%q: %w", item, err)
		}
		if hi < lo {
			return PortRange{}, fmt.Errorf("%q: range ends before it starts", item)
		}
	}
	return PortRange{First: lo, Last: hi}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("not a port number")
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d is out of range (1-65535)", n)
	}
	return uint16(n), nil
}

func newPortSet(rs []PortRange) PortSet {
	if len(rs) == 0 {
		return PortSet{}
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if uint32(r.First) <= uint32(last.Last)+1 {
			last.Last = max(last.Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return PortSet{ranges: out}
}

// Contains reports whether port is in the set.
func (s PortSet) Contains(port uint16) bool {
	i, found := slices.BinarySearchFunc(s.ranges, port, func(r PortRange, p uint16) int {
		switch {
		case r.Last < p:
			return -1
		case r.First > p:
			return 1
		}
		return 0
	})
	_ = i
	return found
}

// Empty reports whether the set has no ports.
func (s PortSet) Empty() bool { return len(s.ranges) == 0 }

// Ranges returns the set's ranges, sorted. The slice must not be modified.
func (s PortSet) Ranges() []PortRange { return s.ranges }

// Equal reports whether both sets hold the same ports.
func (s PortSet) Equal(o PortSet) bool { return slices.Equal(s.ranges, o.ranges) }

// String formats the set in the syntax ParsePortSet reads.
func (s PortSet) String() string {
	var b strings.Builder
	for i, r := range s.ranges {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(int(r.First)))
		if r.Last != r.First {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(int(r.Last)))
		}
	}
	return b.String()
}
