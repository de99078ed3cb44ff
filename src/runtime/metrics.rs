//! Prometheus metrics of the controllers, served on the admin port's `/metrics`.
use std::{sync::atomic::AtomicU64, time::Duration};

use kube::{ResourceExt, runtime::reflector::Store};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::resources::PluginInstall;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template (`/v1/plugins/{plugin_id}`), never the path itself: ids would make
    /// one series per object.
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// Prometheus metrics of the HTTP API, per route template.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    /// Creates the metrics and registers them (`plugin_operator_http_requests_total`,
    /// `plugin_operator_http_request_duration_seconds`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        let sub = registry.sub_registry_with_prefix("plugin_operator");
        sub.register(
            "http_requests",
            "Requests the HTTP API answered, by route template, method and status",
            metrics.requests.clone(),
        );
        sub.register(
            "http_request_duration_seconds",
            "Time from a request's head to its answer's head, by route template and method",
            metrics.duration.clone(),
        );
        metrics
    }

    /// Metrics that no registry exports (unit tests, the benchmark).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0,
                ])
            }),
        }
    }

    pub fn answered(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstallInfoLabels {
    namespace: String,
    name: String,
    /// The Plugin: its name, or `namespace/name` for one of another namespace (the catalog).
    plugin: String,
    /// The running version (`status.version`), empty before the first one became Active.
    version: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstallLabels {
    namespace: String,
    name: String,
}

/// Per-install metrics for dashboards, read from the installs cache at each scrape, so an
/// install that is gone (or changed phase) leaves no stale series behind. One series per
/// install and metric: the label values are an install's identity, its plugin, version and
/// phase, never anything that grows on its own.
///
/// - `plugin_operator_install_info{namespace,name,plugin,version,phase}`: 1 per install.
/// - `plugin_operator_install_restarts{namespace,name}`: `status.restarts`.
/// - `plugin_operator_install_phase_changed_timestamp_seconds{namespace,name}`:
///   `status.phaseChangedAt` (installs whose status has none are left out).
#[derive(Debug)]
pub struct InstallMetrics {
    installs: Store<PluginInstall>,
}

impl InstallMetrics {
    pub fn register(registry: &mut Registry, installs: Store<PluginInstall>) {
        registry
            .sub_registry_with_prefix("plugin_operator")
            .register_collector(Box::new(Self { installs }));
    }
}

impl Collector for InstallMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = Family::<InstallInfoLabels, Gauge>::default();
        let restarts = Family::<InstallLabels, Gauge>::default();
        let changed = Family::<InstallLabels, Gauge<f64, AtomicU64>>::default();
        for install in self.installs.state() {
            let namespace = install.namespace().unwrap_or_default();
            let name = install.name_any();
            let status = install.status.clone().unwrap_or_default();
            let reference = &install.spec.plugin;
            let plugin = match reference.namespace() {
                Some(ns) if ns != namespace => format!("{ns}/{}", reference.name()),
                _ => reference.name().to_owned(),
            };
            let labels = InstallLabels {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            info.get_or_create(&InstallInfoLabels {
                namespace,
                name,
                plugin,
                version: status.version.clone().unwrap_or_default(),
                phase: status
                    .phase
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
            })
            .set(1);
            restarts
                .get_or_create(&labels)
                .set(i64::from(status.restarts));
            if let Some(at) = &status.phase_changed_at {
                changed
                    .get_or_create(&labels)
                    .set(at.0.as_millisecond() as f64 / 1000.0);
            }
        }
        info.encode(encoder.encode_descriptor(
            "install_info",
            "One series per install: its plugin, running version and phase",
            None,
            info.metric_type(),
        )?)?;
        restarts.encode(encoder.encode_descriptor(
            "install_restarts",
            "Restarts the operator made of an install (status.restarts)",
            None,
            restarts.metric_type(),
        )?)?;
        changed.encode(encoder.encode_descriptor(
            "install_phase_changed_timestamp_seconds",
            "When an install's phase last changed (status.phaseChangedAt), Unix seconds",
            None,
            changed.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod install_metrics_tests {
    use kube::runtime::{reflector, watcher};
    use prometheus_client::encoding::text::encode;
    use serde_json::json;

    use super::*;

    fn install(name: &str, plugin: serde_json::Value, status: serde_json::Value) -> PluginInstall {
        serde_json::from_value(json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
            "metadata": {"name": name, "namespace": "team-a", "uid": name},
            "spec": {"plugin": plugin},
            "status": status,
        }))
        .expect("an install")
    }

    #[test]
    fn one_series_per_install_from_the_cache_at_scrape_time() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(install(
            "billing",
            json!({"name": "billing", "namespace": "plugin-catalog"}),
            json!({"phase": "Active", "version": "1.2.0", "restarts": 2,
                   "phaseChangedAt": "2026-12-02T20:00:00Z"}),
        )));
        writer.apply_watcher_event(&watcher::Event::InitApply(install(
            "echo",
            json!("echo"),
            json!({}),
        )));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let mut registry = Registry::default();
        InstallMetrics::register(&mut registry, store);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoded");
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let mut expected = vec![
            r#"plugin_operator_install_info{namespace="team-a",name="billing",plugin="plugin-catalog/billing",version="1.2.0",phase="Active"} 1"#,
            r#"plugin_operator_install_info{namespace="team-a",name="echo",plugin="echo",version="",phase=""} 1"#,
            r#"plugin_operator_install_restarts{namespace="team-a",name="billing"} 2"#,
            r#"plugin_operator_install_restarts{namespace="team-a",name="echo"} 0"#,
            r#"plugin_operator_install_phase_changed_timestamp_seconds{namespace="team-a",name="billing"} 1796241600.0"#,
        ];
        let mut series = series;
        series.sort_unstable();
        expected.sort_unstable();
        assert_eq!(series, expected, "{text}");
    }
}
