package controlv1

import (
	"context"

	"google.golang.org/grpc"
)

// Hand-written gRPC bindings of insights.proto's Insights service (no
// protoc-gen-go-grpc needed: one unary method).

// InsightsServer is sift-control's side of the Insights service.
type InsightsServer interface {
	ReportLearned(context.Context, *ReportLearnedRequest) (*ReportLearnedResponse, error)
}

// InsightsReportLearnedMethod is the full method name.
const InsightsReportLearnedMethod = "/sift.control.v1.Insights/ReportLearned"

// InsightsServiceDesc describes the service for grpc.Server.RegisterService.
var InsightsServiceDesc = grpc.ServiceDesc{
	ServiceName: "sift.control.v1.Insights",
	HandlerType: (*InsightsServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "ReportLearned",
		Handler: func(srv any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
			in := new(ReportLearnedRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			if intercept == nil {
				return srv.(InsightsServer).ReportLearned(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: InsightsReportLearnedMethod}
			return intercept(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(InsightsServer).ReportLearned(ctx, req.(*ReportLearnedRequest))
			})
		},
	}},
	Metadata: "sift/control/v1/insights.proto",
}

// RegisterInsightsServer registers srv on s.
func RegisterInsightsServer(s grpc.ServiceRegistrar, srv InsightsServer) {
	s.RegisterService(&InsightsServiceDesc, srv)
}

// ReportLearned calls the Insights service over cc.
func ReportLearned(ctx context.Context, cc grpc.ClientConnInterface, in *ReportLearnedRequest, opts ...grpc.CallOption) (*ReportLearnedResponse, error) {
	out := new(ReportLearnedResponse)
	if err := cc.Invoke(ctx, InsightsReportLearnedMethod, in, out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}
