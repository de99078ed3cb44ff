//! Quiet when nothing changes: with 50 Active installs, the operator makes no mutating request
//! over 30 s, counted from the API server's own /metrics. Alone in its test binary, so no other
//! test writes meanwhile (cargo runs test binaries one after another).
mod support;

use std::{collections::BTreeMap, time::Duration};

use devtools::testkit::wait_until;
use kube::Client;
use plugin_operator::resources::Phase;
use serde_json::json;
use support::*;

/// Resources the operator writes.
const OPERATOR_RESOURCES: &[&str] = &[
    "plugininstalls",
    "plugins",
    "pluginversions",
    "deployments",
    "services",
    "serviceaccounts",
    "configmaps",
    "events",
];
const MUTATING_VERBS: &[&str] = &["POST", "PUT", "PATCH", "DELETE", "APPLY"];

/// Mutating requests on the operator's resources so far, by `verb resource/subresource`.
async fn mutating_requests(client: &Client) -> BTreeMap<String, u64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(request)
        .await
        .expect("API server /metrics");
    let mut counts = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            let key = format!("{name}=\"");
            line.split(&key)
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let (verb, resource, subresource) =
            (label("verb"), label("resource"), label("subresource"));
        if !MUTATING_VERBS.contains(&verb.as_str())
            || !OPERATOR_RESOURCES.contains(&resource.as_str())
        {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *counts
            .entry(format!("{verb} {resource}/{subresource}"))
            .or_insert(0) += value as u64;
    }
    counts
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

#[tokio::test]
async fn fifty_active_installs_cost_no_writes() {
    let client = setup().await;
    let ns = namespace(&client, "steady").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    const INSTALLS: usize = 50;
    for i in 0..INSTALLS {
        install(
            &client,
            &ns.name,
            &format!("echo-{i}"),
            json!({"plugin": "echo", "config": {"n": i}}),
        )
        .await;
    }
    let api: kube::Api<plugin_operator::resources::PluginInstall> =
        kube::Api::namespaced(client.clone(), &ns.name);
    wait_until("50 installs Active", Duration::from_secs(240), || {
        let api = api.clone();
        async move {
            let installs = api
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            let active = installs
                .iter()
                .filter(|i| phase_of(i) == Some(Phase::Active))
                .count();
            if active == INSTALLS {
                Ok(())
            } else {
                Err(format!("{active} of {INSTALLS} Active"))
            }
        }
    })
    .await;

    // Settled: the write count holds still for 5 s (events and the last status writes land).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = total(&mutating_requests(&client).await);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = total(&mutating_requests(&client).await);
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes did not settle: {} in the last 5 s",
            now - last
        );
        last = now;
    }

    // The measurement itself: a fixed 30 s window of steady state.
    let before = mutating_requests(&client).await;
    // The counter sees the operator's writes: setting the installs up took at least four applies
    // and a status write each.
    assert!(
        total(&before) >= 5 * INSTALLS as u64,
        "the metric counts writes: {before:?}"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = mutating_requests(&client).await;
    let changed: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: +{}", v - before.get(k).copied().unwrap_or(0)))
        .collect();
    println!(
        "mutating requests on the operator's resources over 30 s of steady state: {}",
        total(&after) - total(&before)
    );
    assert!(
        changed.is_empty(),
        "the operator wrote in steady state: {changed:?}"
    );
    let installs = api.list(&Default::default()).await.expect("list").items;
    assert!(
        installs.iter().all(|i| phase_of(i) == Some(Phase::Active)),
        "all still Active"
    );
}
