package server

import (
	"context"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	controlv1 "github.com/siftmesh/sift/api/sift/control/v1"
	"github.com/siftmesh/sift/xds"
)

// Reporting learned server-first destinations to the control plane
// (sift.control.v1.Insights, docs/detection.md): on the xDS server's
// connection, whenever the set of learned destinations changes, and again
// every insightsRefresh so a restarted control plane hears it. A control
// plane without the service (any non-Sift one) answers Unimplemented, and
// reporting stops.
const (
	defaultInsightsInterval = 10 * time.Second
	insightsRefresh         = 5 * time.Minute
	insightsCallTimeout     = 5 * time.Second
)

// insightsConn picks the xDS connection reports travel on: the listeners'
// server, else the clusters'.
func insightsConn(sources map[string]*xds.Source) *grpc.ClientConn {
	for _, t := range []string{xds.ListenerType, xds.ClusterType} {
		if s := sources[t]; s != nil {
			return s.Conn
		}
	}
	return nil
}

// reportLearned runs until stop is closed.
func (s *Server) reportLearned(cc grpc.ClientConnInterface, interval time.Duration, stop <-chan struct{}) {
	nodeID := s.bootstrap.GetNode().GetId()
	token := s.bootstrap.GetNode().GetMetadata().GetFields()["sift.node_token"].GetStringValue()
	t := time.NewTicker(interval)
	defer t.Stop()
	var last []string // destinations last reported
	var lastAt time.Time
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		entries, _ := s.learned.Snapshot()
		req := &controlv1.ReportLearnedRequest{NodeId: nodeID, NodeToken: token}
		var dsts []string
		for _, e := range entries {
			if !e.Learned {
				continue
			}
			dsts = append(dsts, e.Destination)
			req.Destinations = append(req.Destinations, &controlv1.LearnedDestination{Destination: e.Destination,
				ServerFirstCount: e.Proofs, LearnedUntil: timestamppb.New(e.LearnedUntil)})
		}
		slices.Sort(dsts)
		if slices.Equal(dsts, last) && (lastAt.IsZero() && len(dsts) == 0 || time.Since(lastAt) < insightsRefresh) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), insightsCallTimeout)
		_, err := controlv1.ReportLearned(ctx, cc, req)
		cancel()
		switch status.Code(err) {
		case codes.OK:
			last, lastAt = dsts, time.Now()
			s.log.Debug("insights: reported learned server-first destinations", "count", len(dsts))
		case codes.Unimplemented:
			s.log.Debug("insights: the control plane does not take reports; not reporting", "err", err)
			return
		default:
			s.log.Debug("insights: report failed; retrying", "err", err)
		}
	}
}
