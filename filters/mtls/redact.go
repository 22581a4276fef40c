package mtls

import (
	udpaannotations "github.com/cncf/xds/go/udpa/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
)

// Redacted replaces sensitive values in config dumps, as Envoy prints them.
const Redacted = "[redacted]"

// Redact returns a copy of m whose fields marked (udpa.annotations.sensitive)
// — private keys, session ticket keys, generic secrets — hold "[redacted]"
// in every string and bytes field, as Envoy's /config_dump shows them. It
// descends into Any (typed_config), so a listener's inline TLS context is
// redacted too. m is not modified.
func Redact(m proto.Message) proto.Message {
	if m == nil {
		return nil
	}
	c := proto.Clone(m)
	redact(c.ProtoReflect(), false)
	return c
}

func redact(m protoreflect.Message, sensitive bool) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return // an unknown type: nothing Sift knows to be sensitive
		}
		redact(inner.ProtoReflect(), sensitive)
		opts := proto.MarshalOptions{Deterministic: true}
		if b, err := opts.Marshal(inner); err == nil {
			a.Value = b
		}
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		s := sensitive || isSensitive(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if fd.Message() != nil {
					redact(l.Get(i).Message(), s)
				} else if s {
					l.Set(i, redactedScalar(fd, l.Get(i)))
				}
			}
		case fd.IsMap():
			mp := v.Map()
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Message() != nil {
					redact(mv.Message(), s)
				} else if s {
					mp.Set(k, redactedScalar(fd.MapValue(), mv))
				}
				return true
			})
		case fd.Message() != nil:
			redact(v.Message(), s)
		case s:
			m.Set(fd, redactedScalar(fd, v))
		}
		return true
	})
}

func redactedScalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(Redacted)
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(Redacted))
	}
	return v
}

func isSensitive(fd protoreflect.FieldDescriptor) bool {
	opts, ok := fd.Options().(*descriptorpb.FieldOptions)
	if !ok || opts == nil {
		return false
	}
	s, _ := proto.GetExtension(opts, udpaannotations.E_Sensitive).(bool)
	return s
}
