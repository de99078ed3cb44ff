//! Prometheus metrics of the controllers, served on the admin port's `/metrics`.
use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: String,
    error: String,
}

#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<KindLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabel, Histogram>,
    writes: Family<KindLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            }),
            writes: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("plugin_operator");
        sub.register(
            "reconciles",
            "Reconciles run, by kind",
            metrics.reconciles.clone(),
        );
        sub.register(
            "reconcile_failures",
            "Reconciles that failed and were retried, by kind and error",
            metrics.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time a reconcile took, by kind",
            metrics.duration.clone(),
        );
        sub.register(
            "writes",
            "Writes the controllers made to the API server, by kind",
            metrics.writes.clone(),
        );
        metrics
    }

    pub fn reconciled(&self, kind: &str, took: Duration) {
        let label = KindLabel {
            kind: kind.to_owned(),
        };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    pub fn reconcile_failed(&self, kind: &str, error: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                kind: kind.to_owned(),
                error: error.to_owned(),
            })
            .inc();
    }

    pub fn wrote(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
}
