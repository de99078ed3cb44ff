//! Settled PluginJobs are deleted after their time to live (`spec.ttlSecondsAfterFinished`, else
//! the operator's `--job-ttl-seconds`), counted from `status.settledAt`, as Kubernetes' TTL
//! controller does for Jobs. A controller of its own (PluginJobs are not in the shared caches:
//! nothing else reads them from a cache) that requeues each settled job for the moment it is
//! due. Only the Lease holder deletes; on gaining the Lease every job is looked at again.
use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Preconditions},
    runtime::{Controller, controller::Action, watcher},
};

use crate::{
    resources::PluginJob,
    runtime::{
        call::{CallError, with_timeout},
        clock::Clock,
        leader::LeaderState,
    },
};

/// What the job controller needs.
pub struct JobTtl {
    pub api: Api<PluginJob>,
    pub leader: LeaderState,
    pub clock: Clock,
    /// Seconds a settled job is kept when its spec names no time to live.
    pub default_ttl_seconds: i64,
}

/// When a job is due for deletion: `None` while it is pending.
pub fn due(job: &PluginJob, default_ttl_seconds: i64) -> Option<Timestamp> {
    let settled = job.settled_at()?;
    let ttl = job
        .spec
        .ttl_seconds_after_finished
        .unwrap_or(default_ttl_seconds)
        .max(0);
    settled
        .checked_add(SignedDuration::from_secs(ttl))
        .ok()
        .or(Some(Timestamp::MAX))
}

async fn reconcile(job: Arc<PluginJob>, ctx: Arc<JobTtl>) -> Result<Action, CallError> {
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let Some(due) = due(&job, ctx.default_ttl_seconds) else {
        return Ok(Action::await_change());
    };
    let now = ctx.clock.now();
    if due > now {
        let wait = Duration::try_from(due.duration_since(now)).unwrap_or(Duration::from_secs(1));
        // Never later than a day: a long TTL is checked again then (the clock may have moved).
        return Ok(Action::requeue(wait.min(Duration::from_secs(86_400))));
    }
    let name = job.name_any();
    let params = DeleteParams {
        // The job that was looked at, not a new one of the same name.
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let api = match job.namespace() {
        Some(ns) => Api::namespaced(ctx.api.clone().into_client(), &ns),
        None => ctx.api.clone(),
    };
    match with_timeout(api.delete(&name, &params)).await {
        Ok(_) => {
            tracing::info!(job = %name, namespace = ?job.namespace(), "settled PluginJob deleted after its time to live");
            Ok(Action::await_change())
        }
        Err(err) if err.is_not_found() || err.is_conflict() => Ok(Action::await_change()),
        Err(err) => Err(err),
    }
}

fn error_policy(job: Arc<PluginJob>, error: &CallError, _: Arc<JobTtl>) -> Action {
    tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), %error, "deleting a settled PluginJob failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the controller until the process stops.
pub async fn run(ctx: JobTtl) {
    let ctx = Arc::new(ctx);
    Controller::new(ctx.api.clone(), watcher::Config::default())
        .reconcile_all_on(ctx.leader.gained())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(value: serde_json::Value) -> PluginJob {
        serde_json::from_value(value).expect("a job")
    }

    #[test]
    fn a_settled_job_is_due_its_ttl_after_it_was_settled() {
        let spec = serde_json::json!({"install": "i", "name": "n", "identifier": "x"});
        let pending = job(serde_json::json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginJob",
            "metadata": {"name": "j", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec, "status": {"status": "pending"}
        }));
        assert_eq!(due(&pending, 60), None);
        let mut settled = pending.clone();
        settled.status = serde_json::from_value(
            serde_json::json!({"status": "done", "settledAt": "2026-01-01T00:10:00Z"}),
        )
        .expect("status");
        let at = |s: &str| s.parse::<Timestamp>().expect("time");
        assert_eq!(due(&settled, 60), Some(at("2026-01-01T00:11:00Z")));
        settled.spec.ttl_seconds_after_finished = Some(0);
        assert_eq!(due(&settled, 60), Some(at("2026-01-01T00:10:00Z")));
        // Settled before settledAt existed: counted from its creation.
        let mut old = settled.clone();
        old.status.as_mut().expect("status").settled_at = None;
        old.spec.ttl_seconds_after_finished = Some(30);
        assert_eq!(due(&old, 60), Some(at("2026-01-01T00:00:30Z")));
    }
}
