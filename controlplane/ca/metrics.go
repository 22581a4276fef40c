package ca

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the CA's Prometheus metrics, prefixed sift_control_ca_.
type metrics struct {
	issued *prometheus.CounterVec // kind: workload|server
}

func newMetrics(c *CA, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sift_control_ca_certificates_issued_total",
			Help: "Certificates issued (first issue, renewal, or re-issue after a root switch), by kind (workload, server)."}, []string{"kind"}),
	}
	soonest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sift_control_ca_leaf_expiry_soonest_timestamp_seconds",
		Help: "Unix time at which the soonest-expiring current certificate expires (0: none issued)."}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		var soonest float64
		for _, l := range c.leaves {
			if t := float64(l.Certificate.NotAfter.Unix()); soonest == 0 || t < soonest {
				soonest = t
			}
		}
		return soonest
	})
	roots := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sift_control_ca_trust_bundle_roots",
		Help: "Certificates in the trust bundle (2 during a rotation's overlap)."}, func() float64 {
		return float64(len(c.Bundle()))
	})
	rootExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sift_control_ca_signer_expiry_timestamp_seconds",
		Help: "Unix time at which the certificate that signs leaves now expires."}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return float64(c.signerLocked(c.clock.Now()).cert.NotAfter.Unix())
	})
	waiting := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sift_control_ca_rotation_waiting_proxies",
		Help: "Proxies a root rotation waits for: they have not acknowledged the secrets of its current phase (0: none, or no rotation)."}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.rotation == nil {
			return 0
		}
		return float64(c.waiting)
	})
	if reg != nil {
		for _, col := range []prometheus.Collector{m.issued, soonest, roots, rootExpiry, waiting} {
			if err := reg.Register(col); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
