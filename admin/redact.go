package admin

import (
	"github.com/cncf/xds/go/udpa/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Redacted replaces sensitive values in /config_dump, as Envoy prints them.
const Redacted = "[redacted]"

// Redact replaces, in place, every string and bytes value under a field
// marked (udpa.annotations.sensitive) — private keys, session ticket keys,
// HMAC secrets, header values marked so — with Redacted, as Envoy's
// /config_dump does. It descends into google.protobuf.Any values whose type
// is linked into the binary (typed_config, transport sockets), re-packing
// them; an Any of an unknown type is left as it is. It returns the first
// error re-packing an Any.
func Redact(m proto.Message) error { return redact(m.ProtoReflect(), false) }

func redact(m protoreflect.Message, sensitive bool) error {
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		return redactAny(m, sensitive)
	}
	type field struct {
		fd protoreflect.FieldDescriptor
		v  protoreflect.Value
	}
	var fields []field // Range must not see the message change under it
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fields = append(fields, field{fd, v})
		return true
	})
	for _, f := range fields {
		s := sensitive || proto.GetExtension(f.fd.Options(), annotations.E_Sensitive).(bool)
		switch {
		case f.fd.IsList():
			l := f.v.List()
			for i := 0; i < l.Len(); i++ {
				if f.fd.Message() != nil {
					if err := redact(l.Get(i).Message(), s); err != nil {
						return err
					}
				} else if s {
					if r, ok := redactedScalar(f.fd); ok {
						l.Set(i, r)
					}
				}
			}
		case f.fd.IsMap():
			mp := f.v.Map()
			var err error
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				if f.fd.MapValue().Message() != nil {
					err = redact(v.Message(), s)
				} else if s {
					if r, ok := redactedScalar(f.fd.MapValue()); ok {
						mp.Set(k, r)
					}
				}
				return err == nil
			})
			if err != nil {
				return err
			}
		case f.fd.Message() != nil:
			if err := redact(f.v.Message(), s); err != nil {
				return err
			}
		case s:
			if r, ok := redactedScalar(f.fd); ok {
				m.Set(f.fd, r)
			}
		}
	}
	return nil
}

// redactAny redacts inside an Any whose type is known, and re-packs it.
func redactAny(m protoreflect.Message, sensitive bool) error {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return nil
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		return nil // a type this binary does not know: left as it is
	}
	if err := redact(inner.ProtoReflect(), sensitive); err != nil {
		return err
	}
	return a.MarshalFrom(inner)
}

func redactedScalar(fd protoreflect.FieldDescriptor) (protoreflect.Value, bool) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(Redacted), true
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(Redacted)), true
	}
	return protoreflect.Value{}, false
}
