package yamljson

import "testing"

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
		{name: "infinity", in: "x: .inf\n", wantErr: ".x: +Inf is not a JSON number"},
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

func FuzzConvert(f *testing.F) {
	f.Add([]byte("a: {b: [1, 2, n]}\n"))
	f.Add([]byte("{\"x\": 1}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = Convert(data)
	})
}
