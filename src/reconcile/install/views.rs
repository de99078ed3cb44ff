//! What the cluster shows about an install, reduced to what the lifecycle reads: the views of
//! [`crate::lifecycle::phase`], read from the observed Deployment, pods and annotations. Pure.
use std::sync::Arc;

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt};

use crate::{
    lifecycle::phase::{DeploymentView, PodView, ReportedFailure},
    resources::{
        ConditionStatus, PluginInstall,
        names::{annotations, labels},
    },
};

/// What the Deployment shows, for the lifecycle: against the pod template wanted now.
pub fn deployment_view(deployment: &Deployment, desired_template: &str) -> DeploymentView {
    let spec = deployment.spec.as_ref();
    let status = deployment.status.clone().unwrap_or_default();
    let template_label = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(labels::TEMPLATE));
    let generation = deployment.meta().generation.unwrap_or(0);
    DeploymentView {
        has_desired_template: template_label.map(String::as_str) == Some(desired_template),
        observed: status.observed_generation.unwrap_or(0) >= generation,
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        status_replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        deadline_exceeded: status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Progressing"
                && ConditionStatus::parse(&c.status) == ConditionStatus::False
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }),
    }
}

/// What the lifecycle reads of a Deployment ([`deployment_view`]) and what the writes and the
/// ownership checks compare (the applied hash, the owners), hashed: a change of anything else
/// (a condition's heartbeat, the unavailable count) is no reason to reconcile the install.
pub fn deployment_fingerprint(deployment: &Deployment) -> u64 {
    let spec = deployment.spec.as_ref();
    let status = deployment.status.as_ref();
    let template = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(labels::TEMPLATE));
    let owners: Vec<&str> = deployment
        .owner_references()
        .iter()
        .map(|o| o.uid.as_str())
        .collect();
    let deadline_exceeded = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        });
    fingerprint((
        template,
        deployment.annotations().get(annotations::APPLIED),
        owners,
        deployment.meta().generation,
        spec.and_then(|s| s.replicas),
        status.and_then(|s| s.observed_generation),
        status.and_then(|s| s.replicas),
        status.and_then(|s| s.updated_replicas),
        status.and_then(|s| s.available_replicas),
        deadline_exceeded,
    ))
}

/// What the lifecycle reads of a pod ([`pod_views`]), hashed.
pub fn pod_fingerprint(pod: &Pod) -> u64 {
    fingerprint((
        pod.labels().get(labels::TEMPLATE),
        pod.meta().deletion_timestamp.is_some(),
        pod_view(pod),
    ))
}

/// A hash of what a reader reads of an object, for the watch feeds' predicates.
pub fn fingerprint(value: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The pods of the pod template wanted now, for the lifecycle (pods being deleted left out).
pub fn pod_views(pods: &[Arc<Pod>], desired_template: &str) -> Vec<PodView> {
    pods.iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter(|p| p.labels().get(labels::TEMPLATE).map(String::as_str) == Some(desired_template))
        .map(|p| pod_view(p))
        .collect()
}

fn pod_view(pod: &Pod) -> PodView {
    let status = pod.status.clone().unwrap_or_default();
    let containers = status.container_statuses.unwrap_or_default();
    let expected = pod.spec.as_ref().map_or(1, |s| s.containers.len());
    let ready =
        status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Ready" && ConditionStatus::parse(&c.status) == ConditionStatus::True
        });
    let waiting = containers
        .iter()
        .find_map(|c| c.state.as_ref().and_then(|s| s.waiting.as_ref()));
    PodView {
        name: pod.name_any(),
        ready,
        running: containers.len() >= expected
            && containers
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())),
        waiting_reason: waiting.and_then(|w| w.reason.clone()),
        waiting_message: waiting.and_then(|w| w.message.clone()),
        last_termination: containers
            .iter()
            .filter_map(|c| {
                c.last_state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .as_ref()
                    .map(|t| t.0)
            })
            .max(),
        restart_count: containers.iter().map(|c| c.restart_count).sum(),
    }
}

/// The failure a caller reported on the install (seed 000 `notify-failure`). The annotation is
/// written by the API, or by anyone with `patch`: one that does not read as a report (bad JSON,
/// a bad time) is not a report, and is ignored rather than turned into a failure of the plugin.
pub fn reported_failure(install: &PluginInstall) -> Option<ReportedFailure> {
    let raw = install.annotations().get(annotations::REPORTED_FAILURE)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Report {
        reported_by: String,
        at: String,
        #[serde(default)]
        message: String,
    }
    let report: Report = serde_json::from_str(raw).ok()?;
    let at = report.at.parse::<Timestamp>().ok()?;
    let message = if report.message.is_empty() {
        format!("failure reported by {}", report.reported_by)
    } else {
        report.message
    };
    Some(ReportedFailure {
        reported_by: report.reported_by,
        at,
        message,
    })
}
