package route

import (
	"fmt"
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Edits are header additions and removals at one level (route, virtual
// host, route configuration).
type Edits struct {
	Remove []string // canonical names
	Add    []HeaderAdd
}

// Empty reports whether e changes nothing.
func (e *Edits) Empty() bool { return len(e.Remove) == 0 && len(e.Add) == 0 }

// AppendAction is HeaderValueOption.append_action.
type AppendAction uint8

// The append actions, as Envoy's HeaderValueOption.HeaderAppendAction names
// them.
const (
	AppendIfExistsOrAdd AppendAction = iota
	AddIfAbsent
	OverwriteIfExistsOrAdd
	OverwriteIfExists
)

// HeaderAdd is a decoded HeaderValueOption.
type HeaderAdd struct {
	Name      string // canonical
	Value     string
	Action    AppendAction
	KeepEmpty bool
}

func decodeEdits(add []*corev3.HeaderValueOption, remove []string, field string) (Edits, error) {
	var e Edits
	for _, r := range remove {
		if r == "" || strings.HasPrefix(r, ":") || strings.EqualFold(r, "host") {
			return e, fmt.Errorf("%s_to_remove: %q may not be removed", field, r)
		}
		e.Remove = append(e.Remove, http.CanonicalHeaderKey(r))
	}
	for i, hv := range add {
		path := fmt.Sprintf("%s_to_add[%d]", field, i)
		name := hv.GetHeader().GetKey()
		if name == "" || strings.HasPrefix(name, ":") || strings.EqualFold(name, "host") {
			return e, fmt.Errorf("%s.header.key: %q may not be set", path, name)
		}
		v := hv.GetHeader().GetValue()
		if len(hv.GetHeader().GetRawValue()) > 0 {
			v = string(hv.GetHeader().GetRawValue())
		}
		lit, err := literal(v)
		if err != nil {
			return e, fmt.Errorf("%s.header.value: %w", path, err)
		}
		a := HeaderAdd{Name: http.CanonicalHeaderKey(name), Value: lit, KeepEmpty: hv.GetKeepEmptyValue()}
		switch hv.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			a.Action = AppendIfExistsOrAdd
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			a.Action = AddIfAbsent
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			a.Action = OverwriteIfExistsOrAdd
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			a.Action = OverwriteIfExists
		}
		if ap := hv.GetAppend(); ap != nil {
			if hv.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				return e, fmt.Errorf("%s: append and append_action are both set", path)
			}
			if !ap.GetValue() {
				a.Action = OverwriteIfExistsOrAdd
			}
		}
		e.Add = append(e.Add, a)
	}
	return e, nil
}

// literal decodes a header value: Envoy's header values are format strings
// whose "%COMMAND%" operators Sift does not implement; "%%" is a literal '%'.
func literal(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("%q: format operators (%%...%%) are not supported by Sift; write %%%% for a literal %%", v)
	}
	return b.String(), nil
}

// Apply edits h: removals first, then additions.
func (e *Edits) Apply(h http.Header) {
	for _, name := range e.Remove {
		delete(h, name)
	}
	for _, a := range e.Add {
		if a.Value == "" && !a.KeepEmpty {
			continue
		}
		_, exists := h[a.Name]
		switch a.Action {
		case AppendIfExistsOrAdd:
			h[a.Name] = append(h[a.Name], a.Value)
		case AddIfAbsent:
			if !exists {
				h[a.Name] = []string{a.Value}
			}
		case OverwriteIfExistsOrAdd:
			h[a.Name] = []string{a.Value}
		case OverwriteIfExists:
			if exists {
				h[a.Name] = []string{a.Value}
			}
		}
	}
}

// ApplyRequest applies the request edits of the route, its virtual host and
// the table, in that order (Envoy's default: the most general level wins).
func (t *Table) ApplyRequest(r *Route, h http.Header) {
	r.RequestHeaders.Apply(h)
	r.VirtualHost.RequestHeaders.Apply(h)
	t.RequestHeaders.Apply(h)
}

// ApplyResponse applies the response edits of the route, its virtual host
// and the table, in that order.
func (t *Table) ApplyResponse(r *Route, h http.Header) {
	r.ResponseHeaders.Apply(h)
	r.VirtualHost.ResponseHeaders.Apply(h)
	t.ResponseHeaders.Apply(h)
}
