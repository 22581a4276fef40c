package plugins

import (
	"testing"

	"google.golang.org/protobuf/proto"

	snifferv1 "github.com/siftmesh/sift/api/sift/plugins/sniffer/v1"
)

// FuzzAnswer: whatever bytes a plugin sends as its Sniff answer, reading
// them gives a known verdict with a bounded Need, or an error; never a
// panic. (gRPC decodes the protobuf; resultOf judges it.)
func FuzzAnswer(f *testing.F) {
	for _, r := range []*snifferv1.SniffResponse{
		{Verdict: snifferv1.SniffResponse_MATCH, Protocol: "redis", Attributes: map[string]string{"command": "PING"}},
		{Verdict: snifferv1.SniffResponse_NEED_MORE, Need: 4},
		{Verdict: snifferv1.SniffResponse_NEED_MORE, Need: 1 << 31},
		{Verdict: snifferv1.SniffResponse_NO_MATCH},
		{Verdict: 42},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp snifferv1.SniffResponse
		if proto.Unmarshal(b, &resp) != nil {
			return // gRPC fails the call: the host counts it as a failed call
		}
		r, err := resultOf(&resp)
		if err != nil {
			return
		}
		if r.Verdict != Match && r.Verdict != NoMatch && r.Verdict != NeedMore {
			t.Fatalf("verdict %v from %v", r.Verdict, &resp)
		}
		if r.Need < 0 || r.Need > maxData {
			t.Fatalf("need %d from %d", r.Need, resp.GetNeed())
		}
	})
}
