package accesslog

import (
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"
)

// jsonFormat is a compiled json_format / typed_json_format: one JSON object
// per line, keys sorted (Envoy's output order), each string value a format
// string.
type jsonFormat struct {
	pieces []jsonPiece
	// typed keeps numbers as JSON numbers when a value is exactly one
	// operator (typed_json_format); otherwise every value is a string.
	typed bool
}

// jsonPiece is pre-rendered JSON text (keys, punctuation, constants) or a
// value to format.
type jsonPiece struct {
	raw   string
	value textFormat // nil for raw
}

func parseJSONFormat(s *structpb.Struct, typed bool) (*jsonFormat, error) {
	f := &jsonFormat{typed: typed}
	if err := f.object(s, ""); err != nil {
		return nil, err
	}
	// Merge adjacent raw pieces.
	var out []jsonPiece
	for _, p := range f.pieces {
		if p.value == nil && len(out) > 0 && out[len(out)-1].value == nil {
			out[len(out)-1].raw += p.raw
			continue
		}
		out = append(out, p)
	}
	f.pieces = append(out, jsonPiece{raw: "\n"})
	return f, nil
}

func (f *jsonFormat) object(s *structpb.Struct, path string) error {
	keys := make([]string, 0, len(s.GetFields()))
	for k := range s.GetFields() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	f.pieces = append(f.pieces, jsonPiece{raw: "{"})
	for i, k := range keys {
		if i > 0 {
			f.pieces = append(f.pieces, jsonPiece{raw: ","})
		}
		f.pieces = append(f.pieces, jsonPiece{raw: string(appendJSONString(nil, []byte(k))) + ":"})
		if err := f.value(s.GetFields()[k], path+"."+k); err != nil {
			return err
		}
	}
	f.pieces = append(f.pieces, jsonPiece{raw: "}"})
	return nil
}

func (f *jsonFormat) value(v *structpb.Value, path string) error {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		tf, err := parseFormat(k.StringValue)
		if err != nil {
			return fmt.Errorf("%s: %w", path[1:], err)
		}
		if len(tf) == 0 {
			tf = textFormat{{literal: ""}}
		}
		f.pieces = append(f.pieces, jsonPiece{value: tf})
	case *structpb.Value_StructValue:
		return f.object(k.StructValue, path)
	case *structpb.Value_NumberValue:
		f.pieces = append(f.pieces, jsonPiece{raw: strconv.FormatFloat(k.NumberValue, 'g', -1, 64)})
	case *structpb.Value_BoolValue:
		f.pieces = append(f.pieces, jsonPiece{raw: strconv.FormatBool(k.BoolValue)})
	case *structpb.Value_NullValue:
		f.pieces = append(f.pieces, jsonPiece{raw: "null"})
	default:
		return fmt.Errorf("%s: only strings, numbers, booleans, null and nested objects are supported", path[1:])
	}
	return nil
}

// appendJSON appends one JSON line for e; scratch is a reusable buffer.
func (f *jsonFormat) appendJSON(b, scratch []byte, e *entry) ([]byte, []byte) {
	for _, p := range f.pieces {
		if p.value == nil {
			b = append(b, p.raw...)
			continue
		}
		if len(p.value) == 1 && p.value[0].op != nil {
			s := p.value[0]
			var k valueKind
			scratch, k = s.op(scratch[:0], e)
			if s.maxLen > 0 && len(scratch) > s.maxLen {
				scratch = scratch[:s.maxLen]
				k = text
			}
			switch {
			case k == absent:
				b = append(b, "null"...)
			case k == number && f.typed:
				b = append(b, scratch...)
			default:
				b = appendJSONString(b, scratch)
			}
			continue
		}
		scratch = p.value.appendText(scratch[:0], e)
		b = appendJSONString(b, scratch)
	}
	return b, scratch
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b, s []byte) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
