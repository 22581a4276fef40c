// Package yamljson converts YAML documents to JSON for protojson, with YAML
// 1.2 scalars as Envoy's YAML reader has them: only true and false are
// booleans, so `id: n` or `name: no` stay strings. It keeps where each value
// came from, so that an error found in the JSON — by protojson or by a
// validator that names a field path — can name the line and column the user
// wrote.
package yamljson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxNodes bounds the values a document may expand to through aliases (the
// "billion laughs" document is a few lines long).
const maxNodes = 1 << 17

// Pos is where a value is in the YAML document: 1-based line and column, and
// its field path (static_resources.listeners[0].name; "" is the document).
type Pos struct {
	Line, Column int
	Path         string
}

// Document is one YAML document converted to JSON. Immutable.
type Document struct {
	// JSON holds one token per line (a key, a scalar, a bracket), so a JSON
	// line number identifies the YAML value it came from.
	JSON   []byte
	lines  []Pos // lines[i]: the value on JSON line i+1
	byPath map[string]Pos
}

// Convert returns the compact JSON form of one YAML document. An empty
// document is {}.
func Convert(data []byte) ([]byte, error) {
	d, err := Parse(data)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, d.JSON); err != nil {
		return nil, fmt.Errorf("yamljson: %w", err) // a bug: the emitter writes valid JSON
	}
	return out.Bytes(), nil
}

// Parse converts one YAML document (JSON is YAML too) and indexes where each
// value came from. An empty document is {}.
func Parse(data []byte) (*Document, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	e := &emitter{byPath: map[string]Pos{}, expanding: map[*yaml.Node]bool{}}
	if root.Kind == 0 || len(root.Content) == 0 {
		e.token(Pos{Line: 1, Column: 1}, "{}")
	} else if err := e.value(root.Content[0], ""); err != nil {
		return nil, err
	}
	return &Document{JSON: e.buf.Bytes(), lines: e.lines, byPath: e.byPath}, nil
}

// AtJSONLine returns the position of the value on line n of d.JSON.
func (d *Document) AtJSONLine(n int) (Pos, bool) {
	if n < 1 || n > len(d.lines) {
		return Pos{}, false
	}
	return d.lines[n-1], true
}

// Lookup returns the position of the value at a field path
// (static_resources.listeners[0].name).
func (d *Document) Lookup(path string) (Pos, bool) {
	p, ok := d.byPath[path]
	return p, ok
}

var (
	jsonPosition = regexp.MustCompile(`\(line (\d+):\d+\)`)
	pathSegment  = regexp.MustCompile(`^[A-Za-z_@][\w@]*(\[\d+\])*(\.[A-Za-z_@][\w@]*(\[\d+\])*)*$`)
	parenthesis  = regexp.MustCompile(` \([^()]*\)$`)
)

// LocateJSONError returns the position of the value a protojson error
// ("proto: (line 12:5): unknown field ...") points at in d.JSON.
func (d *Document) LocateJSONError(err error) (Pos, bool) {
	m := jsonPosition.FindStringSubmatch(err.Error())
	if m == nil {
		return Pos{}, false
	}
	n, _ := strconv.Atoi(m[1])
	return d.AtJSONLine(n)
}

// Locate finds the deepest value of d that an error message's field path
// names. Messages name paths the way Sift's decoders write them: segments
// separated by ": ", each a dotted path relative to the previous one
// (`static_resources.listeners[0]: listener "a": filter_chains[0]: filters[0]
// (t): tcp_proxy: max_connect_attempts: must be at least 1`); segments that
// are not paths (`listener "a"`) are skipped, a trailing parenthesis (the
// filter's name) is ignored, and a filter's own fields are looked for under
// its typed_config.
func (d *Document) Locate(msg string) (Pos, bool) {
	cur, found := "", false
	for _, seg := range strings.Split(msg, ": ") {
		seg = parenthesis.ReplaceAllString(strings.TrimSpace(seg), "")
		if !pathSegment.MatchString(seg) {
			continue
		}
		// Descend as far as the document goes: a field that is absent
		// (must be set) is located at its parent.
		for i, name := range strings.Split(seg, ".") {
			tries := []string{join(cur, name)}
			if i == 0 {
				tries = append(tries, join(cur, "typed_config."+name))
			}
			next := ""
			for _, try := range tries {
				if _, ok := d.byPath[try]; ok {
					next = try
					break
				}
			}
			if next == "" {
				break
			}
			cur, found = next, true
		}
	}
	if !found {
		return Pos{}, false
	}
	return d.byPath[cur], true
}

func join(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

// emitter writes JSON one token per line, recording each line's position.
type emitter struct {
	buf    bytes.Buffer
	lines  []Pos
	byPath map[string]Pos
	nodes  int
	alias  int // line of the alias being expanded, or 0
	// expanding are the anchored values being expanded through an alias or
	// a merge: one of them met again is a cycle.
	expanding map[*yaml.Node]bool
}

func (e *emitter) token(p Pos, s string) {
	if e.buf.Len() > 0 {
		e.buf.WriteByte('\n')
	}
	e.buf.WriteString(s)
	e.lines = append(e.lines, p)
}

func pos(n *yaml.Node, path string) Pos { return Pos{Line: n.Line, Column: n.Column, Path: path} }

func (e *emitter) value(n *yaml.Node, path string) error {
	if e.nodes++; e.nodes > maxNodes {
		line := n.Line
		if e.alias > 0 {
			line = e.alias
		}
		return fmt.Errorf("line %d: the document expands to more than %d values (aliases)", line, maxNodes)
	}
	if n.Anchor != "" && n.Kind != yaml.AliasNode {
		e.expanding[n] = true
		defer delete(e.expanding, n)
	}
	p := pos(n, path)
	if _, seen := e.byPath[path]; !seen {
		e.byPath[path] = p
	}
	switch n.Kind {
	case yaml.AliasNode:
		if e.expanding[n.Alias] {
			return fmt.Errorf("line %d: %s: alias *%s refers to a value that contains it", n.Line, path, n.Value)
		}
		if e.alias == 0 { // the outermost alias is what the user wrote here
			e.alias = n.Line
			defer func() { e.alias = 0 }()
		}
		return e.value(n.Alias, path)
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			e.token(p, "null")
			return nil
		}
		return e.value(n.Content[0], path)
	case yaml.SequenceNode:
		e.token(p, "[")
		for i, c := range n.Content {
			if i > 0 {
				e.token(pos(c, path), ",")
			}
			if err := e.value(c, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		e.token(p, "]")
		return nil
	case yaml.MappingNode:
		entries, err := e.mappingEntries(n, path)
		if err != nil {
			return err
		}
		e.token(p, "{")
		for i, kv := range entries {
			key, err := json.Marshal(kv.key)
			if err != nil {
				return fmt.Errorf("line %d: %w", kv.keyNode.Line, err)
			}
			sep := ""
			if i > 0 {
				sep = ","
			}
			child := join(path, kv.key)
			if _, seen := e.byPath[child]; !seen { // a field is where its key is
				e.byPath[child] = pos(kv.keyNode, child)
			}
			e.token(pos(kv.keyNode, child), sep+string(key)+":")
			if err := e.value(kv.value, child); err != nil {
				return err
			}
		}
		e.token(p, "}")
		return nil
	case yaml.ScalarNode:
		var v any
		if err := n.Decode(&v); err != nil {
			return err
		}
		if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
			return fmt.Errorf("line %d: %s: %v is not a JSON number", n.Line, path, f)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("line %d: %s: %w", n.Line, path, err)
		}
		e.token(p, string(b))
		return nil
	}
	return fmt.Errorf("line %d: unexpected YAML node kind %d", n.Line, n.Kind)
}

type entry struct {
	key     string
	keyNode *yaml.Node
	value   *yaml.Node
}

// mappingEntries returns a mapping's entries in document order with YAML
// merge keys (<<) applied: explicit keys win over merged ones, earlier
// merged mappings over later ones. A key written twice is an error.
func (e *emitter) mappingEntries(n *yaml.Node, path string) ([]entry, error) {
	var explicit, merged []entry
	at := map[string]int{} // key → line where it was written
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			m, err := mergeSources(v)
			if err != nil {
				return nil, err
			}
			for _, src := range m {
				if e.expanding[src] || src == n {
					return nil, fmt.Errorf("line %d: %s: a merge (<<) refers to a mapping that contains it", k.Line, path)
				}
				e.expanding[src] = true
				es, err := e.mappingEntries(src, path)
				delete(e.expanding, src)
				if err != nil {
					return nil, err
				}
				merged = append(merged, es...)
			}
			continue
		}
		key, err := keyString(k)
		if err != nil {
			return nil, err
		}
		if line, dup := at[key]; dup {
			return nil, fmt.Errorf("line %d: %s: key %q already defined at line %d", k.Line, join(path, key), key, line)
		}
		at[key] = k.Line
		explicit = append(explicit, entry{key: key, keyNode: k, value: v})
	}
	out := explicit
	for _, m := range merged {
		if _, ok := at[m.key]; !ok {
			at[m.key] = m.keyNode.Line
			out = append(out, m)
		}
	}
	return out, nil
}

// mergeSources returns the mappings a merge key's value names.
func mergeSources(v *yaml.Node) ([]*yaml.Node, error) {
	for v.Kind == yaml.AliasNode {
		v = v.Alias
	}
	switch v.Kind {
	case yaml.MappingNode:
		return []*yaml.Node{v}, nil
	case yaml.SequenceNode:
		var out []*yaml.Node
		for _, c := range v.Content {
			for c.Kind == yaml.AliasNode {
				c = c.Alias
			}
			if c.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("line %d: a merge (<<) list must hold mappings", c.Line)
			}
			out = append(out, c)
		}
		return out, nil
	}
	return nil, fmt.Errorf("line %d: a merge (<<) must name a mapping or a list of mappings", v.Line)
}

// keyString returns a mapping key as JSON can hold it: scalars as written
// (1 → "1"); other keys are refused.
func keyString(k *yaml.Node) (string, error) {
	for k.Kind == yaml.AliasNode {
		k = k.Alias
	}
	if k.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("line %d: a mapping key must be a scalar", k.Line)
	}
	var v any
	if err := k.Decode(&v); err != nil {
		return "", err
	}
	if s, ok := v.(string); ok {
		return s, nil
	}
	if v == nil {
		return "", errors.New("line " + strconv.Itoa(k.Line) + ": a mapping key must not be null")
	}
	return fmt.Sprint(v), nil
}
