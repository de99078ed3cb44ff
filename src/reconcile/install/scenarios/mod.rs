//! Scenario tests of World → Plan, one per case of the lifecycle (SPEC §3), each named for its
//! case, with an injected clock. The harness ([`harness::Cluster`]) plays the rest of the system.
mod harness;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use std::time::Duration;

use kube::ResourceExt;
use serde_json::json;

use super::{
    ChildrenPlan, CredentialsPlan,
    plan::{EXTERNAL_RECHECK_ACTIVE, EXTERNAL_RECHECK_CONNECTING, IN_PROGRESS_RECHECK, RESYNC},
};
use crate::resources::{
    ConditionStatus, Phase, RolloutOutcome,
    conditions::{self, reason},
    names::{annotations, credentials},
};
use harness::*;

#[test]
fn first_start() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Starting));
    assert_eq!(transition(&plan), Some((None, Phase::Starting)));
    assert_eq!(plan.requeue, IN_PROGRESS_RECHECK);
    let ChildrenPlan::Apply(children) = &plan.children else {
        panic!("children to apply: {:?}", plan.children)
    };
    assert_eq!(cluster.deployed_version(), "1.0.0");
    assert_eq!(children.service.name_any(), "echo");
    assert_eq!(children.config_map.name_any(), "echo-config");
    // The credentials Secret is planned with the children, from the observed world.
    let CredentialsPlan::Create(secret) = &plan.credentials else {
        panic!("credentials to create")
    };
    let data = secret.data.as_ref().expect("data");
    assert_eq!(data[credentials::CLIENT_ID].0, b"tenant-a.echo");
    assert_eq!(data[credentials::CLIENT_SECRET].0, b"a-fresh-client-secret");
    let status = cluster.status();
    assert_eq!(status.target_version.as_deref(), Some("1.0.0"));
    assert_eq!(status.version, None);
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].outcome, RolloutOutcome::Progressing);
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://echo.tenant-a.svc:8080")
    );
    assert_eq!(
        cluster.condition(conditions::READY),
        (ConditionStatus::False, "Starting".into())
    );
    // Once made, the credentials are kept.
    let again = cluster.reconcile();
    assert!(matches!(again.credentials, CredentialsPlan::Keep));
    assert_eq!(again.transition, None);
}

#[test]
fn starting_connecting_active() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.reconcile();
    cluster.kubelet(&[PodState::Pending]);
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Starting));
    assert_eq!(plan.transition, None);

    cluster.kubelet(&[PodState::Running]);
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Connecting));
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Starting), Phase::Connecting))
    );

    cluster.clock.advance(7);
    cluster.kubelet(&[PodState::Ready]);
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Connecting), Phase::Active))
    );
    assert_eq!(plan.requeue, RESYNC);
    let status = cluster.status();
    assert_eq!(status.version.as_deref(), Some("1.0.0"));
    assert_eq!(status.target_version, None);
    assert_eq!(status.history[0].outcome, RolloutOutcome::Succeeded);
    let now = Time(Timestamp::from_second(START + 7).expect("time"));
    assert_eq!(status.activated_at.as_ref(), Some(&now));
    let ready = conditions::find_condition(&status.conditions, conditions::READY).expect("Ready");
    assert_eq!(ready.last_transition_time, now);
    assert_eq!(
        cluster.condition(conditions::DEGRADED),
        (ConditionStatus::False, reason::HEALTHY.into())
    );
    // Settled: the same world plans the same status.
    let plan = cluster.reconcile();
    assert_eq!(plan.transition, None);
    assert_eq!(&plan.status, cluster.status());
}

#[test]
fn ready_pods_wait_for_the_service_to_turn_active() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.service_held_back = true;
    cluster.reconcile();
    cluster.kubelet(&[PodState::Ready]);
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Connecting));
    let ready =
        conditions::find_condition(&cluster.status().conditions, conditions::READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.message.as_str()),
        ("False", "version 1.0.0 is running; waiting for its Service")
    );
    assert_eq!(cluster.status().version, None);
    // No recheck: the Service's create wakes the install when it is answered.
    assert_eq!(plan.requeue, RESYNC);

    cluster.service = true;
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Connecting), Phase::Active))
    );
    assert_eq!(cluster.status().version.as_deref(), Some("1.0.0"));
}

#[test]
fn crash_restarting_active() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.active();
    let (before, _) = cluster.template();

    cluster.clock.advance(60);
    cluster.kubelet(&[PodState::Crashed]);
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Active), Phase::Restarting))
    );
    assert_eq!(cluster.status().restarts, 1);
    assert_eq!(cluster.last_failure(), reason::CONTAINER_RESTARTED);
    let (after, _) = cluster.template();
    assert_ne!(before, after, "the one restart rolls the pods");
    let restart = cluster
        .deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(annotations::RESTART).cloned());
    assert_eq!(restart.as_deref(), Some("1"));

    cluster.kubelet(&[PodState::Running]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Restarting));

    cluster.clock.advance(5);
    cluster.kubelet(&[PodState::Ready]);
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Restarting), Phase::Active))
    );
    assert_eq!(cluster.status().restarts, 1);
}

#[test]
fn crash_restarting_error() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.active();
    cluster.clock.advance(60);
    cluster.kubelet(&[PodState::Crashed]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Restarting));

    cluster.kubelet(&[PodState::Waiting("CrashLoopBackOff")]);
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Restarting), Phase::Error))
    );
    assert_eq!(cluster.last_failure(), reason::CRASH_LOOP);
    assert_eq!(
        cluster.condition(conditions::READY),
        (ConditionStatus::False, reason::CRASH_LOOP.into())
    );
    // No further restart of the operator's own.
    for _ in 0..3 {
        cluster.clock.advance(30);
        let plan = cluster.reconcile();
        assert_eq!(plan.transition, None);
        assert_eq!(cluster.phase(), Some(Phase::Error));
    }
    assert_eq!(cluster.status().restarts, 1);
}

#[test]
fn progress_deadline() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.reconcile();
    cluster.kubelet(&[PodState::Running]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Connecting));

    cluster.clock.advance(300);
    cluster.deadline_exceeded();
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Connecting), Phase::Error))
    );
    assert_eq!(cluster.last_failure(), reason::PROGRESS_DEADLINE_EXCEEDED);
    assert_eq!(cluster.status().history[0].outcome, RolloutOutcome::Failed);
}

#[test]
fn pull_error_and_crash_loop_at_once() {
    let mut cluster = Cluster::new(json!({"replicas": 2}), vec![version("1.0.0")]);
    cluster.reconcile();
    cluster.kubelet(&[
        PodState::Waiting("ImagePullBackOff"),
        PodState::Waiting("CrashLoopBackOff"),
    ]);
    // A failure as soon as it is seen, not after the progress deadline.
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Starting), Phase::Error))
    );
    assert_eq!(cluster.last_failure(), reason::IMAGE_PULL_FAILED);
    let failure = cluster.status().last_failure.clone().expect("a failure");
    assert!(failure.message.contains("ImagePullBackOff"), "{failure:?}");
    assert_eq!(failure.reported_by, "operator");
}

#[test]
fn invalid_config_keeps_the_last_good_deployment() {
    let schema = json!({"configSchema": {
        "type": "object",
        "properties": {"retries": {"type": "integer", "maximum": 5}},
    }});
    let mut cluster = Cluster::new(
        json!({"config": {"retries": 3}}),
        vec![version_in(NS, "1.0.0", "formal", schema)],
    );
    cluster.active();
    let good = cluster.deployment.clone();

    cluster.edit(|spec| spec["config"] = json!({"retries": 9}));
    let plan = cluster.reconcile();
    assert!(
        matches!(plan.children, ChildrenPlan::Keep),
        "nothing that runs changes"
    );
    assert_eq!(cluster.deployment, good);
    assert_eq!(cluster.phase(), Some(Phase::Error));
    assert_eq!(cluster.last_failure(), reason::CONFIG_INVALID);
    let (valid, why) = cluster.condition(conditions::CONFIG_VALID);
    assert_eq!(
        (valid, why.as_str()),
        (ConditionStatus::False, "ConfigInvalid")
    );
    assert_eq!(cluster.status().version.as_deref(), Some("1.0.0"));

    // Fixed: back to the version that runs.
    cluster.edit(|spec| spec["config"] = json!({"retries": 4}));
    cluster.reconcile();
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Active));
    assert_eq!(
        cluster.condition(conditions::CONFIG_VALID).0,
        ConditionStatus::True
    );
}

#[test]
fn inactive_and_back() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.active();

    cluster.clock.advance(10);
    cluster.edit(|spec| spec["active"] = json!(false));
    let plan = cluster.reconcile();
    assert!(matches!(plan.children, ChildrenPlan::RemoveDeployment));
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Active), Phase::Inactive))
    );
    let deactivated = Time(Timestamp::from_second(START + 15).expect("time"));
    assert_eq!(cluster.status().deactivated_at.as_ref(), Some(&deactivated));
    assert!(cluster.deployment.is_none());

    cluster.edit(|spec| spec["active"] = json!(true));
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Inactive), Phase::Starting))
    );
    assert!(matches!(plan.children, ChildrenPlan::Apply(_)));
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Active));
    assert_eq!(cluster.status().deactivated_at.as_ref(), Some(&deactivated));
}

#[test]
fn external_healthy_and_unhealthy() {
    let external = plugin(
        NS,
        "echo",
        json!({"mode": "external", "endpoint": "https://plugins.example/echo"}),
    );
    let mut cluster = Cluster::with_plugin(external, json!({}), vec![]);
    cluster.external_health = Some(Err("https://plugins.example/echo did not answer".into()));
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Connecting));
    assert!(matches!(plan.children, ChildrenPlan::External(_)));
    assert_eq!(plan.requeue, EXTERNAL_RECHECK_CONNECTING);
    assert_eq!(cluster.status().version, None, "no version registered");
    assert!(
        matches!(plan.credentials, CredentialsPlan::Create(_)),
        "external installs get credentials too"
    );

    cluster.external_health = Some(Ok(()));
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Connecting), Phase::Active))
    );
    assert_eq!(plan.requeue, EXTERNAL_RECHECK_ACTIVE);
    assert_eq!(
        cluster.status().endpoint.as_deref(),
        Some("https://plugins.example/echo")
    );

    cluster.external_health = Some(Err("https://plugins.example/echo answered 503".into()));
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Active), Phase::Connecting))
    );
    assert_eq!(cluster.status().restarts, 0, "nothing to restart");
}

/// A report on the install, as notify-failure writes it, at the cluster's time.
fn report(cluster: &mut Cluster, by: &str) {
    let at = cluster.clock.clock.now();
    cluster.install.annotations_mut().insert(
        annotations::REPORTED_FAILURE.into(),
        json!({"reportedBy": by, "at": at.to_string(), "message": format!("{by} reported a failure")})
            .to_string(),
    );
}

#[test]
fn external_reported_failure_rechecks_then_active_or_error() {
    let external = plugin(
        NS,
        "echo",
        json!({"mode": "external", "endpoint": "https://plugins.example/echo"}),
    );
    let versions = vec![version("1.0.0"), version("1.2.0"), draft("2.0.0")];
    let mut cluster = Cluster::with_plugin(external, json!({}), versions);
    cluster.external_health = Some(Ok(()));
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Active));
    let ChildrenPlan::External(service_account) = &plan.children else {
        panic!(
            "an external install gets its ServiceAccount: {:?}",
            plan.children
        )
    };
    assert_eq!(service_account.name_any(), "echo");
    assert!(
        service_account
            .annotations()
            .contains_key(annotations::APPLIED)
    );
    assert_eq!(
        cluster.status().version.as_deref(),
        Some("1.2.0"),
        "the newest formal version"
    );

    // A report while Active: Restarting, checked again at once; it answers: Active.
    cluster.clock.advance(10);
    report(&mut cluster, "sup-1");
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Active), Phase::Restarting))
    );
    assert_eq!(plan.requeue, Duration::ZERO);
    let failure = cluster.status().last_failure.clone().expect("lastFailure");
    assert_eq!(failure.reason, "FailureReported");
    assert_eq!(failure.reported_by, "sup-1");
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Restarting), Phase::Active))
    );
    // Within the same second: the handled report does not count again; another one does.
    let plan = cluster.reconcile();
    assert_eq!(transition(&plan), None);
    assert_eq!(cluster.phase(), Some(Phase::Active));

    // Another report a second later, after the periodic check saw the endpoint fail
    // (Connecting); the re-check fails too: Error.
    cluster.clock.advance(1);
    cluster.external_health = Some(Err("https://plugins.example/echo answered 503".into()));
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Connecting));
    report(&mut cluster, "sup-2");
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Restarting));
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Restarting), Phase::Error))
    );
    let failure = cluster.status().last_failure.clone().expect("lastFailure");
    assert_eq!(failure.reason, "EndpointUnreachable");
    assert_eq!(failure.reported_by, "sup-2");
    assert_eq!(cluster.status().restarts, 0, "nothing to restart");
    // Error while it does not answer; Active again once it does.
    cluster.clock.advance(30);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Error));
    cluster.external_health = Some(Ok(()));
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Active));
    // The old report, older than this activation, is not counted again when it fails.
    cluster.clock.advance(30);
    cluster.external_health = Some(Err("https://plugins.example/echo answered 503".into()));
    cluster.reconcile();
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Connecting));

    // An exact draft is the version it answers to.
    cluster.edit(|spec| spec["version"] = json!("2.0.0"));
    cluster.reconcile();
    assert_eq!(cluster.status().version.as_deref(), Some("2.0.0"));
}

#[test]
fn auto_upgrade() {
    let mut cluster = Cluster::new(json!({"upgradeMode": "Auto"}), vec![version("1.0.0")]);
    cluster.active();

    cluster.versions.push(version("1.1.0"));
    let plan = cluster.reconcile();
    assert_eq!(cluster.deployed_version(), "1.1.0");
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Active), Phase::Starting))
    );
    let status = cluster.status();
    assert_eq!(
        status.version.as_deref(),
        Some("1.0.0"),
        "until 1.1.0 is Active"
    );
    assert_eq!(status.target_version.as_deref(), Some("1.1.0"));

    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    let status = cluster.status();
    assert_eq!(status.phase, Some(Phase::Active));
    assert_eq!(status.version.as_deref(), Some("1.1.0"));
    let outcomes: Vec<_> = status
        .history
        .iter()
        .map(|h| (h.version.as_str(), h.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("1.0.0", RolloutOutcome::Succeeded),
            ("1.1.0", RolloutOutcome::Succeeded)
        ]
    );
}

#[test]
fn manual_with_available_version() {
    let mut cluster = Cluster::new(json!({"version": "^1"}), vec![version("1.0.0")]);
    cluster.active();

    cluster.versions.push(version("1.1.0"));
    let plan = cluster.reconcile();
    assert_eq!(plan.transition, None);
    assert_eq!(cluster.deployed_version(), "1.0.0");
    let status = cluster.status();
    assert_eq!(status.version.as_deref(), Some("1.0.0"));
    assert_eq!(status.available_version.as_deref(), Some("1.1.0"));
    assert_eq!(
        cluster.condition(conditions::UPGRADE_AVAILABLE),
        (ConditionStatus::True, reason::AWAITING_APPROVAL.into())
    );
}

#[test]
fn manual_approved() {
    let mut cluster = Cluster::new(
        json!({"version": "^1"}),
        vec![version("1.0.0"), version("1.1.0"), version("1.2.0")],
    );
    // A first install starts on the newest.
    cluster.active();
    assert_eq!(cluster.status().version.as_deref(), Some("1.2.0"));
    cluster.versions.push(version("1.3.0"));
    cluster.reconcile();
    assert_eq!(cluster.status().available_version.as_deref(), Some("1.3.0"));

    cluster.edit(|spec| spec["approvedVersion"] = json!("1.3.0"));
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Active), Phase::Starting))
    );
    assert_eq!(cluster.deployed_version(), "1.3.0");
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    let status = cluster.status();
    assert_eq!(status.version.as_deref(), Some("1.3.0"));
    assert_eq!(status.available_version, None);
    assert_eq!(
        cluster.condition(conditions::UPGRADE_AVAILABLE),
        (ConditionStatus::False, reason::UP_TO_DATE.into())
    );
}

#[test]
fn draft_only_by_exact_name() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0"), draft("2.0.0")]);
    cluster.active();
    assert_eq!(cluster.status().version.as_deref(), Some("1.0.0"));
    assert_eq!(cluster.status().available_version, None);

    cluster.edit(|spec| spec["version"] = json!("2.0.0"));
    cluster.reconcile();
    assert_eq!(cluster.deployed_version(), "2.0.0");
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    assert_eq!(cluster.status().version.as_deref(), Some("2.0.0"));
}

/// Auto on 1.0.0; 1.1.0 appears and crash-loops: reverted to 1.0.0.
fn failed_upgrade() -> Cluster {
    let mut cluster = Cluster::new(json!({"upgradeMode": "Auto"}), vec![version("1.0.0")]);
    cluster.active();
    cluster.versions.push(version("1.1.0"));
    cluster.reconcile();
    assert_eq!(cluster.deployed_version(), "1.1.0");
    cluster.kubelet(&[PodState::Waiting("CrashLoopBackOff")]);
    cluster.reconcile();
    cluster
}

#[test]
fn failed_upgrade_reverted_and_not_retried() {
    let mut cluster = failed_upgrade();
    assert_eq!(cluster.deployed_version(), "1.0.0", "reverted");
    let status = cluster.status();
    assert_eq!(status.failed_versions, ["1.1.0"]);
    assert_eq!(status.version.as_deref(), Some("1.0.0"));
    assert_eq!(status.target_version, None);
    assert_eq!(status.phase, Some(Phase::Starting));
    assert_eq!(
        status
            .history
            .last()
            .map(|h| (h.version.as_str(), h.outcome)),
        Some(("1.1.0", RolloutOutcome::Failed))
    );
    assert_eq!(
        cluster.condition(conditions::DEGRADED),
        (ConditionStatus::True, reason::ROLLED_BACK.into())
    );

    cluster.kubelet(&[PodState::Ready]);
    for _ in 0..3 {
        cluster.clock.advance(30);
        cluster.reconcile();
        assert_eq!(
            cluster.deployed_version(),
            "1.0.0",
            "never retried by itself"
        );
    }
    let status = cluster.status();
    assert_eq!(status.phase, Some(Phase::Active));
    assert_eq!(status.available_version, None);
    assert_eq!(
        cluster.condition(conditions::DEGRADED).1,
        reason::ROLLED_BACK,
        "a reverted upgrade stays announced"
    );
}

#[test]
fn exact_name_retries_a_failed_version() {
    let mut cluster = failed_upgrade();
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    assert_eq!(cluster.status().failed_versions, ["1.1.0"]);

    cluster.edit(|spec| spec["version"] = json!("1.1.0"));
    cluster.reconcile();
    assert!(cluster.status().failed_versions.is_empty());
    assert_eq!(cluster.deployed_version(), "1.1.0");
    assert_eq!(cluster.status().target_version.as_deref(), Some("1.1.0"));
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    assert_eq!(cluster.status().version.as_deref(), Some("1.1.0"));
    assert_eq!(
        cluster.condition(conditions::DEGRADED),
        (ConditionStatus::False, reason::HEALTHY.into())
    );
}

#[test]
fn catalog_plugin_refused_in_another_namespace() {
    // Another tenant's plugin: refused, nothing is made.
    let other = plugin("tenant-b", "echo", json!({}));
    let mut cluster = Cluster::with_plugin(
        other,
        json!({"plugin": {"name": "echo", "namespace": "tenant-b"}}),
        vec![version_in("tenant-b", "1.0.0", "formal", json!({}))],
    );
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Error));
    assert_eq!(cluster.last_failure(), reason::PLUGIN_NOT_INSTALLABLE);
    assert!(matches!(plan.children, ChildrenPlan::Keep));
    assert!(matches!(plan.credentials, CredentialsPlan::Keep));
    let failure = cluster.status().last_failure.clone().expect("a failure");
    assert!(failure.message.contains(CATALOG), "{failure:?}");

    // The same plugin in the catalog namespace may be installed from here.
    let shared = plugin(CATALOG, "echo", json!({}));
    let mut cluster = Cluster::with_plugin(
        shared,
        json!({"plugin": {"name": "echo", "namespace": CATALOG}}),
        vec![version_in(CATALOG, "1.0.0", "formal", json!({}))],
    );
    cluster.active();
    assert_eq!(cluster.status().version.as_deref(), Some("1.0.0"));
}

#[test]
fn credentials_rotate_when_the_install_asks() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.active();
    let made = cluster.credentials.clone().expect("credentials");
    cluster.credentials = Some(ObjectMeta {
        resource_version: Some("41".into()),
        ..made
    });
    cluster
        .install
        .annotations_mut()
        .insert(credentials::ROTATE_ANNOTATION.into(), "1".into());
    let plan = cluster.reconcile();
    let CredentialsPlan::Rotate(secret) = &plan.credentials else {
        panic!("a rotation")
    };
    assert_eq!(secret.metadata.resource_version.as_deref(), Some("41"));
    assert_eq!(secret.annotations()[credentials::ROTATION_ANNOTATION], "1");
    assert!(matches!(
        cluster.reconcile().credentials,
        CredentialsPlan::Keep
    ));
}

#[test]
fn quota_refusal_shows_in_ready_until_a_write_passes() {
    use crate::runtime::call::ApiRefusal;
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    let mut plan = cluster.reconcile();
    let message = "writing Service tenant/echo: services \"echo\" is forbidden: exceeded quota: \
                   no-services, requested: services=1, used: services=0, limited: services=0";
    let now = cluster.clock.clock.now_in_seconds();
    // The first refusal changes Ready: announced.
    let old = cluster.install.status.clone();
    let announce = super::refused(
        &mut plan.status,
        old.as_ref(),
        ApiRefusal::QuotaExceeded.reason(),
        message,
        now,
        Some(1),
    );
    assert!(announce);
    cluster.install.status = Some(plan.status.clone());
    let (ready, why) = cluster.condition(conditions::READY);
    assert_eq!(ready, ConditionStatus::False);
    assert_eq!(why, reason::QUOTA_EXCEEDED);
    assert_eq!(ready_message(&cluster), message);
    // The same refusal again: nothing new to announce, and the status it leads to is the same.
    let old = cluster.install.status.clone();
    let mut again = cluster.reconcile();
    assert!(!super::refused(
        &mut again.status,
        old.as_ref(),
        ApiRefusal::QuotaExceeded.reason(),
        message,
        now,
        Some(1),
    ));
    assert_eq!(Some(&again.status), old.as_ref());
    // Once the write passes (the quota was raised), the plan's own Ready comes back.
    cluster.reconcile();
    let (ready, why) = cluster.condition(conditions::READY);
    assert_eq!(ready, ConditionStatus::False);
    assert_eq!(why, reason::STARTING);
}

fn ready_message(cluster: &Cluster) -> String {
    conditions::find_condition(&cluster.status().conditions, conditions::READY)
        .map(|c| c.message.clone())
        .expect("Ready")
}

#[test]
fn a_name_that_cannot_name_a_service_is_refused() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.install.metadata.name = Some("billing.export".into());
    let plan = cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Error));
    assert!(matches!(plan.children, ChildrenPlan::Keep));
    assert_eq!(cluster.last_failure(), "InvalidSpec");
    let why = ready_message(&cluster);
    assert!(
        why.contains("metadata.name") && why.contains("DNS-1035 label"),
        "{why}"
    );
}

#[test]
fn a_name_held_by_a_foreign_object_stops_the_install_until_it_is_freed() {
    use super::ForeignObject;
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.foreign = vec![
        ForeignObject {
            kind: "Service".into(),
            name: "echo".into(),
            owner: None,
        },
        ForeignObject {
            kind: "Secret".into(),
            name: "echo-credentials".into(),
            owner: Some("Deployment/other".into()),
        },
    ];
    let plan = cluster.reconcile();
    // Nothing is written under the names: no child, no credentials.
    assert!(matches!(plan.children, ChildrenPlan::Keep));
    assert!(matches!(plan.credentials, CredentialsPlan::Keep));
    assert!(cluster.deployment.is_none());
    let conflict = plan.name_conflict.expect("a name conflict");
    assert!(conflict.announce, "the first conflict is announced");
    let (ready, why) = cluster.condition(conditions::READY);
    assert_eq!(
        (ready, why.as_str()),
        (ConditionStatus::False, "NameConflict")
    );
    let message = ready_message(&cluster);
    assert_eq!(message, conflict.message);
    assert!(
        message.contains("Service tenant-a/echo (no controller)")
            && message.contains("Secret tenant-a/echo-credentials (controller Deployment/other)")
            && message.contains("never adopts"),
        "{message}"
    );
    // Again: the same status, nothing new to announce.
    let again = cluster.reconcile();
    assert!(!again.name_conflict.expect("still a conflict").announce);
    // The names are freed: the install starts.
    cluster.foreign.clear();
    let plan = cluster.reconcile();
    assert!(plan.name_conflict.is_none());
    assert!(matches!(plan.children, ChildrenPlan::Apply(_)));
    assert!(matches!(plan.credentials, CredentialsPlan::Create(_)));
    assert_eq!(cluster.condition(conditions::READY).1, reason::STARTING);
}

#[test]
fn a_secret_without_consent_keeps_the_last_good_config_running() {
    use super::SecretConfigError;
    use crate::resources::{FailureReason, validate::FieldError};
    let mut cluster = Cluster::new(
        json!({"configFrom": [{"name": "db"}]}),
        vec![version("1.0.0")],
    );
    cluster.reconcile();
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Active));
    let running = cluster.template();
    // The Secret's owner takes its consent back.
    cluster.secret_config = Err(SecretConfigError {
        reason: FailureReason::SecretNotShared,
        error: FieldError::new(
            "spec.configFrom[0].name",
            "Secret db does not allow install echo",
        ),
    });
    cluster.edit(|spec| spec["config"] = json!({"level": 2}));
    let plan = cluster.reconcile();
    assert!(matches!(plan.children, ChildrenPlan::Keep));
    assert_eq!(
        cluster.template(),
        running,
        "the last good config keeps running"
    );
    let (valid, why) = cluster.condition(conditions::CONFIG_VALID);
    assert_eq!(
        (valid, why.as_str()),
        (ConditionStatus::False, "SecretNotShared")
    );
    let message =
        conditions::find_condition(&cluster.status().conditions, conditions::CONFIG_VALID)
            .map(|c| c.message.clone())
            .unwrap_or_default();
    assert!(
        message.contains("spec.configFrom[0].name") && message.contains("Secret db"),
        "{message}"
    );
}

/// The time of the last phase change moves with the phase and only with it.
#[test]
fn phase_changed_at_follows_the_phase() {
    let at = |second: i64| Some(Time(Timestamp::from_second(START + second).expect("time")));
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.reconcile();
    assert_eq!(cluster.status().phase_changed_at, at(0));
    cluster.clock.advance(3);
    cluster.kubelet(&[PodState::Pending]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Starting));
    assert_eq!(
        cluster.status().phase_changed_at,
        at(0),
        "same phase, same time"
    );
    cluster.kubelet(&[PodState::Ready]);
    cluster.clock.advance(4);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Active));
    assert_eq!(cluster.status().phase_changed_at, at(7));
    cluster.clock.advance(100);
    let plan = cluster.reconcile();
    assert_eq!(
        plan.status.phase_changed_at,
        at(7),
        "settled: nothing moves"
    );
}

/// A status written before the field existed gains it only with the next phase change: a
/// restart of the operator over settled installs writes nothing.
#[test]
fn a_status_without_phase_changed_at_is_left_as_it_is() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.active();
    let mut old = cluster.status().clone();
    old.phase_changed_at = None;
    cluster.install.status = Some(old.clone());
    cluster.clock.advance(60);
    let plan = cluster.reconcile();
    assert_eq!(plan.status, old);
}

fn annotate_retry(cluster: &mut Cluster, value: &str) {
    cluster
        .install
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(annotations::RETRY.to_owned(), value.to_owned());
}

/// `retry` on an install in Error: it starts over once, its pods restarted; the same request
/// is not answered twice, and the lifecycle ends in Error again when the plugin still fails.
#[test]
fn retry_of_an_install_in_error_starts_it_over_once() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.reconcile();
    cluster.kubelet(&[PodState::Waiting("CrashLoopBackOff")]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Error));
    let (before, _) = cluster.template();
    // Without a retry, Error stays (the crash-looping pod is still there).
    assert_eq!(cluster.reconcile().transition, None);

    annotate_retry(&mut cluster, "2026-12-02T20:00:00Z");
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Error), Phase::Starting))
    );
    assert_eq!(
        cluster.status().retry_handled.as_deref(),
        Some("2026-12-02T20:00:00Z")
    );
    assert_eq!(cluster.status().restarts, 1);
    let (after, _) = cluster.template();
    assert_ne!(before, after, "the retry rolls the pods");
    let outcomes = |c: &Cluster| -> Vec<RolloutOutcome> {
        c.status().history.iter().map(|h| h.outcome).collect()
    };
    assert_eq!(
        outcomes(&cluster),
        [RolloutOutcome::Failed, RolloutOutcome::Progressing],
        "the retry is a rollout of its own"
    );

    // The new pods crash again: Error, and the same annotation does not retry a second time.
    cluster.kubelet(&[PodState::Waiting("CrashLoopBackOff")]);
    let plan = cluster.reconcile();
    assert_eq!(
        transition(&plan),
        Some((Some(Phase::Starting), Phase::Error))
    );
    assert_eq!(cluster.reconcile().transition, None);
    assert_eq!(cluster.status().restarts, 1);

    // A new value is a new request; this time the plugin comes up.
    annotate_retry(&mut cluster, "2026-12-02T20:05:00Z");
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Starting));
    cluster.kubelet(&[PodState::Ready]);
    cluster.reconcile();
    assert_eq!(cluster.phase(), Some(Phase::Active));
    assert_eq!(cluster.status().version.as_deref(), Some("1.0.0"));
    assert_eq!(
        outcomes(&cluster),
        [
            RolloutOutcome::Failed,
            RolloutOutcome::Failed,
            RolloutOutcome::Succeeded
        ]
    );
}

/// `retry` on an install that is not in Error changes nothing but the answered mark, so that
/// the request does not fire at a later Error.
#[test]
fn retry_outside_error_is_only_marked_answered() {
    let mut cluster = Cluster::new(json!({}), vec![version("1.0.0")]);
    cluster.active();
    let (before, _) = cluster.template();
    annotate_retry(&mut cluster, "r1");
    let plan = cluster.reconcile();
    assert_eq!(plan.transition, None);
    assert_eq!(cluster.status().retry_handled.as_deref(), Some("r1"));
    assert_eq!(cluster.status().restarts, 0);
    assert_eq!(cluster.template().0, before);

    cluster.clock.advance(10);
    cluster.kubelet(&[PodState::Waiting("CrashLoopBackOff")]);
    cluster.reconcile();
    cluster.reconcile();
    let phase = cluster.phase();
    assert!(
        matches!(phase, Some(Phase::Restarting | Phase::Error)),
        "{phase:?}"
    );
    let restarts = cluster.status().restarts;
    cluster.reconcile();
    assert_eq!(
        cluster.status().restarts,
        restarts,
        "the old request is not answered again"
    );
}
