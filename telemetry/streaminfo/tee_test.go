package streaminfo

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/siftmesh/sift/filters"
)

// connsOnly implements ConnHook alone; all every hook.
type connsOnly struct{ got *[]string }

func (h connsOnly) OnConn(*Conn) { *h.got = append(*h.got, "conns:conn") }

type all struct{ got *[]string }

func (h all) OnConn(*Conn)                          { *h.got = append(*h.got, "all:conn") }
func (h all) OnConnStart(*filters.ConnInfo)         { *h.got = append(*h.got, "all:start") }
func (h all) OnDetection(*filters.ConnInfo, string) { *h.got = append(*h.got, "all:detection") }
func (h all) OnRequest(*Request)                    { *h.got = append(*h.got, "all:request") }

func TestTee(t *testing.T) {
	// Not parallel: installs the process-wide hook.
	var got []string
	tee := NewTee(connsOnly{&got}, nil, all{&got})
	SetConnHook(tee)
	defer SetConnHook(nil)
	info := &filters.ConnInfo{}
	ReportConnStart(info)
	ReportDetection(info, "dispatched")
	ReportConn(&Conn{Info: info})
	tee.OnRequest(&Request{})
	want := []string{"all:start", "all:detection", "conns:conn", "all:conn", "all:request"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}
