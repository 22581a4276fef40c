// Package pbcheck rejects protobuf fields Sift does not implement, so that
// configuration is never silently ignored. A Policy lists, per message type,
// the fields Sift implements; a set field outside the list is an error naming
// its path from the root message (e.g. "filter_chains[1].transport_socket").
package pbcheck

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Policy maps a message's full name (e.g. "envoy.config.listener.v3.Listener")
// to the fields Sift implements or knowingly accepts. Messages not in the map
// are accepted whole: list every message whose fields carry behaviour.
type Policy map[protoreflect.FullName][]string

// Check walks m and returns an error for the first set field that p does not
// allow, naming it by its path. Fields of google.protobuf.Any are not entered:
// an extension's typed config is checked by the extension that decodes it.
func (p Policy) Check(m proto.Message) error {
	return p.check(m.ProtoReflect(), "")
}

func (p Policy) check(m protoreflect.Message, path string) error {
	allowed, listed := p[m.Descriptor().FullName()]
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		fieldPath := join(path, name)
		if listed && !contains(allowed, name) {
			err = fmt.Errorf("%s: not supported by Sift", fieldPath)
			return false
		}
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = p.check(l.Get(i).Message(), fmt.Sprintf("%s[%d]", fieldPath, i))
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					err = p.check(mv.Message(), fmt.Sprintf("%s[%v]", fieldPath, k.Interface()))
					return err == nil
				})
			}
		default:
			if fd.Message().FullName() != "google.protobuf.Any" {
				err = p.check(v.Message(), fieldPath)
			}
		}
		return err == nil
	})
	return err
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Fields returns the names in a comma-separated list, for Policy literals.
func Fields(list string) []string { return strings.Split(strings.ReplaceAll(list, " ", ""), ",") }

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
		return fmt.Errorf("invalid %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	return nil
}
