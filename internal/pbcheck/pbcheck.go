// Package pbcheck is Sift's one mechanism for turning down protobuf
// configuration it does not implement, so that configuration is never
// silently dropped, and for validating the values every decoder shares
// (durations, protoc-gen-validate rules).
//
// A Policy gives, per message type, a Rule for each field: Use (implemented),
// Ignore (accepted and ignored, with the reason written beside the field), or
// Reject (not supported, with the reason). Check returns an error for a set
// field with no rule or a Reject rule, and for a listed message carrying
// fields this build does not know (sent by a control plane with a newer
// API), naming the field by its path from the root message, e.g.
//
//	filter_chains[1].transport_socket: not supported by Sift
//	load_assignment.policy.drop_overloads: not supported by Sift (drop overloads are not supported)
//
// Callers prefix the resource ("upstream: cluster %q: ..."). Ignored lists
// the set fields a Policy accepts without effect, with their reasons, for a
// debug log or a config dump.
package pbcheck

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

type ruleKind uint8

const (
	used ruleKind = iota + 1
	ignored
	rejected
)

// Rule says what Sift does with one field. The zero Rule is not valid: make
// one with Use, Ignore or Reject.
type Rule struct {
	kind ruleKind
	why  string
}

// Use: Sift implements the field with Envoy's semantics (its decoder checks
// the value). A set message field is entered and checked in turn.
func Use() Rule { return Rule{kind: used} }

// Ignore: the field is accepted and has no effect, because why. Keep it for
// fields Envoy itself treats as optional or advisory (tuning, statistics,
// descriptive names) or that are inert given what Sift rejects elsewhere.
// The field's value is not entered.
func Ignore(why string) Rule { return Rule{kind: ignored, why: why} }

// Reject: the field is not supported, because why; Check's error says so.
func Reject(why string) Rule { return Rule{kind: rejected, why: why} }

// Message is the rules for one message type's fields, by field name. A
// field with no rule is not supported.
type Message map[protoreflect.Name]Rule

// Fields returns a Message that uses each field of a comma-separated list
// ("" for none).
func Fields(list string) Message { return Message{}.add(list, Use()) }

// Ignore adds an Ignore(why) rule for each field of the comma-separated
// list to m, and returns m.
func (m Message) Ignore(list, why string) Message { return m.add(list, Ignore(why)) }

// Reject adds a Reject(why) rule for each field of the comma-separated list
// to m, and returns m.
func (m Message) Reject(list, why string) Message { return m.add(list, Reject(why)) }

func (m Message) add(list string, r Rule) Message {
	for _, name := range strings.Split(list, ",") {
		if name = strings.TrimSpace(name); name != "" {
			m[protoreflect.Name(name)] = r
		}
	}
	return m
}

// Policy maps a message's full name (e.g. "envoy.config.listener.v3.Listener")
// to the rules for its fields. Messages not in the map are accepted whole
// (their message fields are still entered): list every message whose fields
// carry behaviour. A Policy is read-only once built and safe for concurrent
// use.
type Policy map[protoreflect.FullName]Message

// Check walks m depth first, fields in declaration order, and returns an
// error for the first field p does not accept (see the package doc).
// Values of google.protobuf.Any are not entered: an extension's typed config
// is checked by the extension that decodes it.
func (p Policy) Check(m proto.Message) error {
	return p.walk(m.ProtoReflect(), "", nil)
}

// CheckAt is Check for a message held by the field at path (e.g.
// "load_assignment" for an EDS ClusterLoadAssignment checked as its
// cluster's): errors name fields from there.
func (p Policy) CheckAt(m proto.Message, path string) error {
	return p.walk(m.ProtoReflect(), path, nil)
}

// IgnoredField is a set field that a Policy accepts without effect.
type IgnoredField struct {
	Path string // from the root message, as in Check's errors
	Why  string
}

// Ignored returns the set fields of m (which Check accepts) that p ignores,
// with the reasons, in Check's order.
func (p Policy) Ignored(m proto.Message) []IgnoredField {
	var out []IgnoredField
	_ = p.walk(m.ProtoReflect(), "", &out)
	return out
}

// LogIgnored logs each field of m that p ignores at debug level on log (nil:
// slog.Default()), with its path, the reason and args as attributes. It
// costs a walk of m only when debug logging is enabled.
func (p Policy) LogIgnored(log *slog.Logger, m proto.Message, args ...any) {
	if log == nil {
		log = slog.Default()
	}
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	for _, f := range p.Ignored(m) {
		log.Debug("config field accepted and ignored", append([]any{"field", f.Path, "reason", f.Why}, args...)...)
	}
}

func (p Policy) walk(m protoreflect.Message, path string, out *[]IgnoredField) error {
	d := m.Descriptor()
	rules, listed := p[d.FullName()]
	if u := m.GetUnknown(); listed && len(u) > 0 {
		num, _, _ := protowire.ConsumeTag(u)
		return fmt.Errorf("%s: unknown field number %d (newer API?): not supported by Sift", orRoot(path, d), num)
	}
	fields := d.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		fieldPath := join(path, string(fd.Name()))
		if listed {
			r, ok := rules[fd.Name()]
			switch {
			case !ok:
				return fmt.Errorf("%s: not supported by Sift", fieldPath)
			case r.kind == rejected:
				return fmt.Errorf("%s: not supported by Sift (%s)", fieldPath, r.why)
			case r.kind == ignored:
				if out != nil {
					*out = append(*out, IgnoredField{Path: fieldPath, Why: r.why})
				}
				continue
			}
		}
		if err := p.enter(fd, m.Get(fd), fieldPath, out); err != nil {
			return err
		}
	}
	return nil
}

// enter checks the messages held by field fd of value v.
func (p Policy) enter(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string, out *[]IgnoredField) error {
	switch {
	case fd.IsList():
		if fd.Message() == nil {
			return nil
		}
		l := v.List()
		for i := 0; i < l.Len(); i++ {
			if err := p.walk(l.Get(i).Message(), fmt.Sprintf("%s[%d]", path, i), out); err != nil {
				return err
			}
		}
	case fd.IsMap():
		if fd.MapValue().Message() == nil {
			return nil
		}
		type entry struct {
			key string
			val protoreflect.Message
		}
		var entries []entry
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			entries = append(entries, entry{fmt.Sprint(k.Interface()), mv.Message()})
			return true
		})
		slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(a.key, b.key) })
		for _, e := range entries {
			if err := p.walk(e.val, fmt.Sprintf("%s[%s]", path, e.key), out); err != nil {
				return err
			}
		}
	case fd.Message() != nil && fd.Message().FullName() != "google.protobuf.Any":
		return p.walk(v.Message(), path, out)
	}
	return nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// orRoot names the root message, which has no path, by its type.
func orRoot(path string, d protoreflect.MessageDescriptor) string {
	if path == "" {
		return string(d.Name())
	}
	return path
}

// Audit returns an error listing every rule that names no field of its
// message, and every message that is not a registered type: typos, which
// would reject a field the policy means to accept. Tests call it; the types
// must be linked in (imported by the package under test).
func (p Policy) Audit() error {
	var bad []string
	for _, name := range sortedKeys(p) {
		md, err := lookup(name)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		for _, f := range sortedKeys(p[name]) {
			if md.Fields().ByName(f) == nil {
				bad = append(bad, fmt.Sprintf("%s has no field %s", name, f))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("pbcheck: policy: %s", strings.Join(bad, "; "))
	}
	return nil
}

// Unruled returns the fields of p's messages that have no rule
// ("Message.field"), for a policy that wants a decision on every field, so
// that a new go-control-plane release fails its test until its new fields
// are decided. Messages that are not registered types are skipped (Audit
// reports them).
func (p Policy) Unruled() []string {
	var out []string
	for _, name := range sortedKeys(p) {
		md, err := lookup(name)
		if err != nil {
			continue
		}
		for i := 0; i < md.Fields().Len(); i++ {
			if f := md.Fields().Get(i).Name(); !hasRule(p[name], f) {
				out = append(out, fmt.Sprintf("%s.%s", name, f))
			}
		}
	}
	return out
}

func hasRule(m Message, f protoreflect.Name) bool {
	_, ok := m[f]
	return ok
}

func lookup(name protoreflect.FullName) (protoreflect.MessageDescriptor, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		return nil, fmt.Errorf("%s: no such registered type (misspelt, or its package not imported)", name)
	}
	md, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a message", name)
	}
	return md, nil
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Validate runs the message's protoc-gen-validate rules — the constraints
// Envoy itself enforces on its API (required fields, ranges, string
// lengths) — when the generated type has them. Embedded google.protobuf.Any
// values are not entered: their decoders validate them in turn.
func Validate(m proto.Message) error {
	v, ok := m.(interface{ ValidateAll() error })
	if !ok {
		return nil
	}
	if err := v.ValidateAll(); err != nil {
		md := m.ProtoReflect().Descriptor()
		return fmt.Errorf("invalid %s: %s", md.Name(), strings.Join(describeViolations(md, "", err), "; "))
	}
	return nil
}

// pgvError is a protoc-gen-validate violation: a field (its Go name, with
// [index] or [key] for repeated fields and maps), the rule it broke, and for
// an embedded message, the violations inside it.
type pgvError interface {
	Field() string
	Reason() string
	Cause() error
}

// describeViolations renders protoc-gen-validate's errors as "field.path:
// reason" with the proto field names users write (connect_timeout, not
// ConnectTimeout), one entry per violated rule.
func describeViolations(md protoreflect.MessageDescriptor, path string, err error) []string {
	if multi, ok := err.(interface{ AllErrors() []error }); ok {
		var out []string
		for _, e := range multi.AllErrors() {
			out = append(out, describeViolations(md, path, e)...)
		}
		return out
	}
	v, ok := err.(pgvError)
	if !ok {
		return []string{orRoot(path, md) + ": " + err.Error()}
	}
	goName, index, _ := strings.Cut(v.Field(), "[")
	if index != "" {
		index = "[" + index
	}
	name, next := goName, protoreflect.MessageDescriptor(nil)
	if fd := fieldByGoName(md, goName); fd != nil {
		name = string(fd.Name())
		if fd.Message() != nil && !fd.IsMap() {
			next = fd.Message()
		} else if fd.IsMap() && fd.MapValue().Message() != nil {
			next = fd.MapValue().Message()
		}
	}
	if path != "" {
		name = path + "." + name
	}
	name += index
	if cause := v.Cause(); cause != nil && next != nil {
		if _, nested := cause.(pgvError); nested {
			return describeViolations(next, name, cause)
		}
		if _, nested := cause.(interface{ AllErrors() []error }); nested {
			return describeViolations(next, name, cause)
		}
	}
	return []string{name + ": " + v.Reason()}
}

// fieldByGoName finds the field whose generated Go name is goName
// (connect_timeout → ConnectTimeout; compared without case and underscores).
func fieldByGoName(md protoreflect.MessageDescriptor, goName string) protoreflect.FieldDescriptor {
	key := strings.ToLower(goName)
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if strings.ReplaceAll(string(fd.Name()), "_", "") == key {
			return fd
		}
	}
	return nil
}
