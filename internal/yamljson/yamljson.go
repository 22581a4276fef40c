// Package yamljson converts YAML documents to JSON for protojson, with YAML
// 1.2 scalars as Envoy's YAML reader has them: only true and false are
// booleans, so `id: n` or `name: no` stay strings.
package yamljson

import (
	"encoding/json"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Convert returns the JSON form of one YAML document. An empty document is {}.
func Convert(data []byte) ([]byte, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	if v == nil {
		return []byte("{}"), nil
	}
	v, err := jsonable(v, "")
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// jsonable replaces maps with non-string keys, which JSON cannot hold.
func jsonable(v any, path string) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			c, err := jsonable(e, path+"."+k)
			if err != nil {
				return nil, err
			}
			t[k] = c
		}
		return t, nil
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			ks, ok := k.(string)
			if !ok {
				ks = fmt.Sprint(k)
			}
			c, err := jsonable(e, path+"."+ks)
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	case []any:
		for i, e := range t {
			c, err := jsonable(e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			t[i] = c
		}
		return t, nil
	case float64:
		if t != t || t > 1e308 || t < -1e308 { // NaN and ±Inf have no JSON form
			return nil, fmt.Errorf("%s: %v is not a JSON number", path, t)
		}
	}
	return v, nil
}
