//! At a small scale, what the indexes must keep: 300 installs in two namespaces all reach Active,
//! each Plugin counts its own installs and each version lists exactly the installs that run it
//! (also after some are deleted), and then the operator makes no mutating request over 30 s,
//! counted from the API server's own /metrics. Alone in its test binary, so no other test
//! writes meanwhile (cargo runs test binaries one after another).
mod support;

use std::{collections::BTreeMap, time::Duration};

use devtools::testkit::wait_until;
use futures::{StreamExt, stream};
use kube::{Api, Client, ResourceExt, api::DeleteParams};
use plugin_operator::resources::{Phase, Plugin, PluginInstall, PluginVersion};
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

/// Installs per namespace: the same plugin name in both, so that an index mixing namespaces
/// would show in the counts.
const FIRST: usize = 200;
const SECOND: usize = 100;
/// Installs of the first namespace deleted once all are Active.
const DELETED: usize = 10;

async fn create_installs(client: &Client, namespace: &str, count: usize) {
    stream::iter(0..count)
        .for_each_concurrent(16, |i| async move {
            install(
                client,
                namespace,
                &format!("echo-{i:03}"),
                json!({"plugin": "echo", "config": {"n": i}}),
            )
            .await;
        })
        .await;
}

/// Waits until the namespace's installs are `expected` in number and all Active.
async fn all_active(client: &Client, namespace: &str, expected: usize) {
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), namespace);
    wait_until(
        &format!("{expected} installs Active in {namespace}"),
        Duration::from_secs(300),
        || {
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
                if active == expected && installs.len() == expected {
                    Ok(())
                } else {
                    Err(format!("{active} of {} Active", installs.len()))
                }
            }
        },
    )
    .await;
}

/// Waits until the Plugin `echo` of `namespace` counts `expected` installs and its version
/// 1.0.0 lists exactly `names` as its users.
async fn counted(client: &Client, namespace: &str, names: &[String]) {
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), namespace);
    let versions: Api<PluginVersion> = Api::namespaced(client.clone(), namespace);
    let mut expected: Vec<String> = names.iter().map(|n| format!("{namespace}/{n}")).collect();
    expected.sort();
    let listed = format!("used by {}", expected.join(", "));
    wait_until(
        &format!("{namespace}: the Plugin counts {} installs", names.len()),
        Duration::from_secs(120),
        || {
            let (plugins, versions, listed) = (plugins.clone(), versions.clone(), listed.clone());
            async move {
                let plugin = plugins.get("echo").await.map_err(|e| e.to_string())?;
                let count = plugin.status.as_ref().map(|s| s.installs);
                let version = versions
                    .get("echo-1.0.0")
                    .await
                    .map_err(|e| e.to_string())?;
                let in_use = condition_of_version(&version, "InUse");
                if count == Some(names.len() as i32) && in_use.as_deref() == Some(listed.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "plugin counts {count:?}; version says {:?}",
                        in_use.map(|m| m.chars().take(120).collect::<String>())
                    ))
                }
            }
        },
    )
    .await;
}

fn condition_of_version(version: &PluginVersion, type_: &str) -> Option<String> {
    version
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
}

fn names(count: usize, skip: usize) -> Vec<String> {
    (skip..count).map(|i| format!("echo-{i:03}")).collect()
}

#[tokio::test]
async fn three_hundred_installs_are_active_counted_and_cost_no_writes_at_rest() {
    let client = setup().await;
    let first = namespace(&client, "scale-a").await;
    let second = namespace(&client, "scale-b").await;
    for ns in [&first.name, &second.name] {
        plugin(&client, ns, "echo").await;
        version(&client, ns, "echo", "1.0.0", "ready").await;
    }
    tokio::join!(
        create_installs(&client, &first.name, FIRST),
        create_installs(&client, &second.name, SECOND)
    );
    tokio::join!(
        all_active(&client, &first.name, FIRST),
        all_active(&client, &second.name, SECOND)
    );
    let (all_first, all_second) = (names(FIRST, 0), names(SECOND, 0));
    tokio::join!(
        counted(&client, &first.name, &all_first),
        counted(&client, &second.name, &all_second)
    );

    // Deletions leave the indexes too: the counts drop, in that namespace only.
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), &first.name);
    for name in names(DELETED, 0) {
        api.delete(&name, &DeleteParams::default())
            .await
            .expect("delete an install");
    }
    for name in names(DELETED, 0) {
        wait_gone(&api, &name).await;
    }
    counted(&client, &first.name, &names(FIRST, DELETED)).await;
    counted(&client, &second.name, &all_second).await;
    let left = api.list(&Default::default()).await.expect("list").items;
    assert_eq!(
        left.iter().map(|i| i.name_any()).collect::<Vec<_>>(),
        names(FIRST, DELETED)
    );

    // Settled: the write count holds still for 5 s (events and the last status writes land).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
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

    // The measurement itself: a fixed 30 s window at rest.
    let before = mutating_requests(&client).await;
    // The counter sees the operator's writes: setting the installs up took at least four applies
    // and a status write each.
    let installs = (FIRST + SECOND) as u64;
    assert!(
        total(&before) >= 5 * installs,
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
        "mutating requests on the operator's resources over 30 s at rest with {} installs: {}",
        installs as usize - DELETED,
        total(&after) - total(&before)
    );
    assert!(
        changed.is_empty(),
        "the operator wrote at rest: {changed:?}"
    );
    all_active(&client, &first.name, FIRST - DELETED).await;
    all_active(&client, &second.name, SECOND).await;
}
