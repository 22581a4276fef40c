package yamljson

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestConvert(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want, wantErr string
	}{
		{name: "empty", in: "", want: "{}"},
		{name: "yaml 1.2 booleans", in: "a: n\nb: no\nc: on\nd: true\n", want: `{"a":"n","b":"no","c":"on","d":true}`},
		{name: "numbers and lists", in: "port: 10000\nw: [1, 2.5]\n", want: `{"port":10000,"w":[1,2.5]}`},
		{name: "non-string keys", in: "1: a\n", want: `{"1":"a"}`},
		{name: "flow map", in: "{a: {b: c}}", want: `{"a":{"b":"c"}}`},
		{name: "infinity", in: "x: .inf\n", wantErr: "line 1: x: +Inf is not a JSON number"},
		{name: "document order", in: "b: 1\na: 2\n", want: `{"b":1,"a":2}`},
		{name: "alias", in: "a: &x {p: 1}\nb: *x\n", want: `{"a":{"p":1},"b":{"p":1}}`},
		{name: "merge key", in: "base: &b {p: 1, q: 2}\nl: {<<: *b, q: 3}\n", want: `{"base":{"p":1,"q":2},"l":{"q":3,"p":1}}`},
		{name: "merge list", in: "x: &x {p: 1}\ny: &y {p: 2, r: 3}\nl: {<<: [*x, *y]}\n", want: `{"x":{"p":1},"y":{"p":2,"r":3},"l":{"p":1,"r":3}}`},
		{name: "duplicate key", in: "a: 1\nb: 2\na: 3\n", wantErr: `line 3: a: key "a" already defined at line 1`},
		{name: "hex and octal ints", in: "a: 0x10\nb: 0o10\n", want: `{"a":16,"b":8}`},
		{name: "alias cycle", in: "a: &x [1, *x]\n", wantErr: "line 1: a[1]: alias *x refers to a value that contains it"},
		{name: "alias cycle through a map", in: "a: &x {p: {q: *x}}\n", wantErr: "line 1: a.p.q: alias *x refers to a value that contains it"},
		{name: "merge cycle", in: "a: &x {p: 1, <<: *x}\n", wantErr: "line 1: a: a merge (<<) refers to a mapping that contains it"},
		{name: "merge cycle through a value", in: "b: &y {q: {<<: *y}}\n", wantErr: "line 1: b.q: a merge (<<) refers to a mapping that contains it"},
		{name: "alias bomb", in: bomb, wantErr: "line 6: the document expands to more than 131072 values (aliases)"},
		{name: "bad yaml", in: "a: [", wantErr: "yaml: line 1: did not find expected node content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Convert([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Convert() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("Convert() = %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

// bomb expands to 9^9 values through aliases.
const bomb = `a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
j: [*i,*i,*i,*i,*i,*i,*i,*i,*i]
`

const located = `static_resources:
  listeners:
  - name: a
    adress: {socket_address: {address: 127.0.0.1}}
    filter_chains:
    - filters:
      - name: t
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          max_connect_attempts: 0
`

func TestPositions(t *testing.T) {
	t.Parallel()
	d, err := Parse([]byte(located))
	if err != nil {
		t.Fatal(err)
	}
	// Every JSON line maps to a position; the key "adress" is on its own line.
	for i, l := range bytes.Split(d.JSON, []byte("\n")) {
		p, ok := d.AtJSONLine(i + 1)
		if !ok {
			t.Fatalf("JSON line %d (%s) has no position", i+1, l)
		}
		if string(l) == `"adress":` && (p != Pos{Line: 4, Column: 5, Path: "static_resources.listeners[0].adress"}) {
			t.Errorf("the key adress is at %+v", p)
		}
	}
	tests := []struct {
		msg  string
		want Pos
		ok   bool
	}{
		{msg: `static_resources.listeners[0]: listener "a": filter_chains[0]: filters[0] (t): tcp_proxy: max_connect_attempts: must be at least 1`,
			want: Pos{Line: 10, Column: 11, Path: "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.max_connect_attempts"}, ok: true},
		{msg: `static_resources.listeners[0].adress: not supported by Sift`,
			want: Pos{Line: 4, Column: 5, Path: "static_resources.listeners[0].adress"}, ok: true},
		{msg: `static_resources.listeners[0].filter_chains[0].name: must be set`, // absent: its parent
			want: Pos{Line: 6, Column: 7, Path: "static_resources.listeners[0].filter_chains[0]"}, ok: true},
		{msg: `admin: no such thing`},
	}
	for _, tt := range tests {
		got, ok := d.Locate(tt.msg)
		if ok != tt.ok || got != tt.want {
			t.Errorf("Locate(%q) = %+v, %v; want %+v, %v", tt.msg, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzConvert(f *testing.F) {
	f.Add([]byte("a: {b: [1, 2, n]}\n"))
	f.Add([]byte("{\"x\": 1}"))
	f.Add([]byte(located))
	f.Add([]byte("a: &x {p: 1}\nb: {<<: *x, q: [*x]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err != nil {
			return
		}
		if !json.Valid(d.JSON) {
			t.Fatalf("invalid JSON %q from %q", d.JSON, data)
		}
		n := bytes.Count(d.JSON, []byte("\n")) + 1
		for i := 1; i <= n; i++ {
			if _, ok := d.AtJSONLine(i); !ok {
				t.Fatalf("JSON line %d of %d has no position", i, n)
			}
		}
		d.Locate(string(data))
	})
}
