//! Creating a family and registering it are one step, so no family is ever created and then
//! left out of the registry.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// From 1 ms (digest claims) to 10 minutes (20 MiB on a slow link), with a bound at each value
/// an SLO or alert is written against (0.1, 0.25, 0.5, 1, 2.5, 5 s): `histogram_quantile` is
/// exact only at bucket bounds, and "p99 under 1 s" needs a bucket ending at 1 s.
const DURATION_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The per-caller histogram's bounds: the SLO's 1 s and the alerts' 0.1 and 0.25 s among them,
/// ten series per caller and class.
pub(super) const CLIENT_DURATION_BUCKETS: [f64; 9] =
    [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

/// Creates families and registers each as it is created.
pub(super) struct Reg<'r>(pub(super) &'r Registry);

impl Reg<'_> {
    pub(super) fn keep<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        c: prometheus::Result<C>,
    ) -> prometheus::Result<C> {
        let c = c?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    pub(super) fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.keep(IntCounterVec::new(Opts::new(name, help), labels))
    }

    pub(super) fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.keep(IntCounter::new(name, help))
    }

    pub(super) fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.keep(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    pub(super) fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.keep(IntGauge::new(name, help))
    }

    pub(super) fn durations(&self, name: &str, help: &str) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
        self.keep(HistogramVec::new(opts, &["route"]))
    }
}
