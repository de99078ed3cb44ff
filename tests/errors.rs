//! Errors users can see: a write the API server refuses for good (here a quota) shows in the
//! install's status and an Event, and is retried with growing delays (counted in the API
//! server's audit log), until the quota allows it.
mod support;

use std::time::Duration;

use devtools::testkit::wait_until;
use k8s_openapi::{api::core::v1::ResourceQuota, jiff::Timestamp};
use kube::{Api, api::DeleteParams};
use plugin_operator::resources::{
    Phase,
    conditions::{READY, reason},
};
use serde_json::{Value, json};
use support::*;

/// The times the API server received a `patch` of Service `namespace/name`, from its audit log.
fn service_patches(namespace: &str, name: &str) -> Vec<Timestamp> {
    let mut times: Vec<Timestamp> = audit_events()
        .into_iter()
        .filter(|e| {
            e["verb"] == "patch"
                && e["objectRef"]["resource"] == "services"
                && e["objectRef"]["namespace"] == namespace
                && e["objectRef"]["name"] == name
        })
        .filter_map(|e| e["requestReceivedTimestamp"].as_str()?.parse().ok())
        .collect();
    times.sort();
    times
}

#[tokio::test]
async fn a_quota_that_forbids_services_shows_in_status_and_events_and_retries_slow_down() {
    let client = setup().await;
    let ns = namespace(&client, "err-quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let _: ResourceQuota = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-services"},
               "spec": {"hard": {"services": "0"}}}),
    )
    .await;
    // Until the quota controller has counted, the API server refuses with "status unknown".
    wait_until("the quota counted", DEADLINE, || async {
        let quota = quotas.get("no-services").await.map_err(|e| e.to_string())?;
        match quota.status.and_then(|s| s.hard) {
            Some(hard) if hard.contains_key("services") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo", json!({"plugin": "echo"})).await;

    let ready = wait_until("Ready=False with the quota's message", DEADLINE, || async {
        let install = get_install(&client, &ns.name, "echo").await;
        match condition(&install, READY) {
            Some(c) if c.reason == reason::QUOTA_EXCEEDED => Ok(c.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains(&format!("Service {}/echo", ns.name))
            && ready.message.contains("exceeded quota: no-services"),
        "{}",
        ready.message
    );
    // Announced by an Event (action Apply, reason QuotaExceeded), once: not once per retry.
    let refusal_events = || async {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), &ns.name);
        let events = api.list(&Default::default()).await.expect("events").items;
        events
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason::QUOTA_EXCEEDED))
            .map(|e| (e.type_, e.action, e.note))
            .collect::<Vec<_>>()
    };
    wait_events(
        &client,
        &ns.name,
        "echo",
        "the refusal announced",
        |actions| actions.iter().any(|a| a == "Apply"),
    )
    .await;

    // Each replica names itself to the API server: the refused applies are the operator's.
    let agent = format!(
        "plugin-operator/{} ({})",
        env!("CARGO_PKG_VERSION"),
        operator().identity
    );
    let agents: Vec<Value> = audit_events()
        .into_iter()
        .filter(|e| {
            e["verb"] == "patch"
                && e["objectRef"]["resource"] == "services"
                && e["objectRef"]["namespace"] == ns.name.as_str()
        })
        .map(|e| e["userAgent"].clone())
        .collect();
    assert!(
        !agents.is_empty() && agents.iter().all(|a| *a == agent.as_str()),
        "Service patches by {agents:?}, expected {agent}"
    );

    // The refused applies, as the API server saw them: the gaps between them grow.
    // A watch event (the status it wrote) may bring a retry or two at once; after that the
    // failures in a row set the delay: 5 s, 10 s, 20 s, 40 s … (±20 %). Wait for two such gaps.
    let gaps_of = |times: &[Timestamp]| -> Vec<Duration> {
        times
            .windows(2)
            .map(|w| Duration::try_from(w[1].duration_since(w[0])).expect("forward"))
            .collect()
    };
    let gaps = wait_until("two retries after a delay", 3 * DEADLINE, || async {
        let gaps = gaps_of(&service_patches(&ns.name, "echo"));
        let delayed: Vec<Duration> = gaps
            .iter()
            .copied()
            .filter(|g| *g >= Duration::from_secs(1))
            .collect();
        if delayed.len() >= 2 {
            Ok(gaps)
        } else {
            Err(format!("gaps so far: {gaps:?}"))
        }
    })
    .await;
    let delayed: Vec<Duration> = gaps
        .iter()
        .copied()
        .skip_while(|g| *g < Duration::from_secs(1))
        .collect();
    assert!(
        delayed.iter().all(|g| *g >= Duration::from_secs(1)),
        "once delayed, every retry waits: {gaps:?}"
    );
    assert!(
        delayed[1].as_secs_f64() > 1.2 * delayed[0].as_secs_f64(),
        "retries slow down: {gaps:?}"
    );
    assert!(delayed[0] >= Duration::from_secs(4), "{gaps:?}");
    let announced = refusal_events().await;
    assert_eq!(
        announced.len(),
        1,
        "one Event, not one per retry: {announced:?}"
    );
    let (type_, _, note) = &announced[0];
    assert_eq!(type_.as_deref(), Some("Warning"));
    assert!(
        note.as_deref()
            .is_some_and(|n| n.contains("exceeded quota")),
        "{note:?}"
    );

    // The quota goes, and the user touches the install: a change is reconciled at once, whatever
    // the delay of the retries (the next of which, about 40 s away, would get there too).
    quotas
        .delete("no-services", &DeleteParams::default())
        .await
        .expect("delete the quota");
    patch_install(
        &client,
        &ns.name,
        "echo",
        json!({"metadata": {"annotations": {"example.com/quota": "raised"}}}),
    )
    .await;
    // Active, and Ready again: the refusal is gone from the status.
    let install = wait_until("Ready once the quota is gone", 3 * DEADLINE, || async {
        let install = get_install(&client, &ns.name, "echo").await;
        let ready = condition(&install, READY).is_some_and(|c| c.status == "True");
        if phase_of(&install) == Some(Phase::Active) && ready {
            Ok(install)
        } else {
            Err(format!("{:?}", install.status))
        }
    })
    .await;
    let ready = condition(&install, READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reason::ACTIVE)
    );
}

#[tokio::test]
async fn an_install_named_unlike_a_service_is_refused_with_the_rule() {
    let client = setup().await;
    let ns = namespace(&client, "err-name").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo.v2", json!({"plugin": "echo"})).await;
    let install = wait_phase(&client, &ns.name, "echo.v2", Phase::Error).await;
    let ready = condition(&install, READY).expect("Ready");
    assert!(
        ready.message.contains("metadata.name") && ready.message.contains("DNS-1035 label"),
        "{}",
        ready.message
    );
    assert!(deployment(&client, &ns.name, "echo.v2").await.is_none());
}
