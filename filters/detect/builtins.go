package detect

import (
	"slices"
	"strings"
)

// Builtins returns the built-in sniffers in the order the detect filter asks
// them: tls, h2, http1. Their languages are disjoint (a ClientHello starts
// with 0x16, which is not an HTTP token character, and the HTTP/2 preface is
// not an HTTP/1.x request line), so at most one of them ever matches a given
// input and the order only decides who is asked first. The slice is new on
// every call; the caller may append plugin sniffers to it.
func Builtins() []Sniffer { return []Sniffer{TLS(), H2(), HTTP1()} }

// BuiltinNames returns the names of the built-in sniffers, sorted.
func BuiltinNames() []string {
	names := make([]string, 0, 3)
	for _, s := range Builtins() {
		names = append(names, s.Name())
	}
	slices.Sort(names)
	return names
}

// Builtin returns the built-in sniffer called name ("tls", "http1", "h2").
func Builtin(name string) (Sniffer, bool) {
	for _, s := range Builtins() {
		if s.Name() == name {
			return s, true
		}
	}
	return nil, false
}

// knownSniffers is BuiltinNames joined, for error messages.
var knownSniffers = strings.Join(BuiltinNames(), ", ")
