//! A cold start writes nothing: 200 settled installs, the operator killed and started again; the
//! new process reconciles every object and makes no write and no Event (counted in the API
//! server's audit log and in the operator's own metrics). Runs the real binary, alone in its test
//! binary (cargo runs test binaries one after another, so no other test writes meanwhile).
mod support;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use devtools::testkit::{self, local_kubeconfig_path, wait_until};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use plugin_operator::resources::{Phase, Plugin, PluginInstall, PluginVersion};
use serde_json::json;
use support::*;

const INSTALLS: usize = 200;
const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// An operator process, killed when dropped.
struct Operator {
    child: Child,
    admin: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &str) -> Operator {
    let logs = local_kubeconfig_path()
        .parent()
        .expect("cluster dir")
        .join("logs");
    let log =
        std::fs::File::create(logs.join(format!("operator-restart-{name}.log"))).expect("log file");
    let admin = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_plugin-operator"))
        .args(["run", "--no-leader-election", "--identity", name])
        .args(["--api-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &admin])
        .env("KUBECONFIG", testkit::local_kubeconfig_path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start plugin-operator");
    Operator { child, admin }
}

/// The operator's own counters, `name{labels}` → value.
async fn metrics(operator: &Operator) -> Result<Vec<(String, f64)>, String> {
    let text = reqwest::get(format!("http://{}/metrics", operator.admin))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}

fn sum(metrics: &[(String, f64)], prefix: &str) -> f64 {
    metrics
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Writes in `namespace` received after `since`, from the API server's audit log.
fn writes_since(namespace: &str, since: Timestamp) -> Vec<String> {
    audit_events()
        .into_iter()
        .filter(|e| {
            e["objectRef"]["namespace"] == namespace
                && WRITE_VERBS.iter().any(|v| e["verb"] == *v)
                && e["requestReceivedTimestamp"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .is_some_and(|t| t > since)
        })
        .map(|e| {
            format!(
                "{} {}/{} {}",
                e["verb"].as_str().unwrap_or(""),
                e["objectRef"]["resource"].as_str().unwrap_or(""),
                e["objectRef"]["name"].as_str().unwrap_or(""),
                e["objectRef"]["subresource"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Waits until no write lands in `namespace` for a whole `quiet` period.
async fn settled(namespace: &str, quiet: Duration) {
    wait_until("writes to settle", Duration::from_secs(240), || async {
        let since = Timestamp::now() - quiet;
        let recent = writes_since(namespace, since);
        if recent.is_empty() {
            Ok(())
        } else {
            Err(format!("{} writes in the last {quiet:?}", recent.len()))
        }
    })
    .await;
}

#[tokio::test]
async fn a_restart_over_two_hundred_settled_installs_writes_nothing() {
    let client = testkit::client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "restart").await;
    let first = start("restart-first");
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    for i in 0..INSTALLS {
        install(
            &client,
            &ns.name,
            &format!("echo-{i}"),
            json!({"plugin": "echo"}),
        )
        .await;
    }
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), &ns.name);
    wait_until("every install Active", Duration::from_secs(480), || async {
        let list = installs
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let active = list
            .items
            .iter()
            .filter(|i| phase_of(i) == Some(Phase::Active))
            .count();
        if active == INSTALLS {
            Ok(())
        } else {
            Err(format!("{active} of {INSTALLS} Active"))
        }
    })
    .await;
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), &ns.name);
    wait_until(
        "the Plugin counts them",
        Duration::from_secs(60),
        || async {
            let plugin = plugins.get("echo").await.map_err(|e| e.to_string())?;
            match plugin.status.as_ref().map(|s| s.installs) {
                Some(n) if usize::try_from(n) == Ok(INSTALLS) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    settled(&ns.name, Duration::from_secs(5)).await;
    let versions: Api<PluginVersion> = Api::namespaced(client.clone(), &ns.name);
    let finalizers = |v: &PluginVersion| v.metadata.finalizers.clone().unwrap_or_default();
    let before = finalizers(&versions.get("echo-1.0.0").await.expect("version"));
    assert!(!before.is_empty(), "the version in use holds its finalizer");

    // Kill the operator (no goodbye) and start another.
    drop(first);
    let restarted_at = Timestamp::now();
    let second = start("restart-second");
    // It reconciles every object once from its fresh caches...
    let counts = wait_until(
        "every object reconciled",
        Duration::from_secs(180),
        || async {
            let metrics = metrics(&second).await?;
            let install = sum(
                &metrics,
                "plugin_operator_reconciles_total{kind=\"PluginInstall\"",
            );
            let plugin = sum(&metrics, "plugin_operator_reconciles_total{kind=\"Plugin\"");
            let version = sum(
                &metrics,
                "plugin_operator_reconciles_total{kind=\"PluginVersion\"",
            );
            if install >= INSTALLS as f64 && plugin >= 1.0 && version >= 1.0 {
                Ok(metrics)
            } else {
                Err(format!(
                    "reconciled {install} installs, {plugin} plugins, {version} versions"
                ))
            }
        },
    )
    .await;
    // ... and writes nothing: not in its own count, not in the API server's audit log.
    let operator_writes = sum(&counts, "plugin_operator_writes_total");
    assert_eq!(operator_writes, 0.0, "the operator counted writes");
    let writes = writes_since(&ns.name, restarted_at);
    assert!(
        writes.is_empty(),
        "{} writes after the restart, first: {:?}",
        writes.len(),
        writes.first()
    );
    let after = finalizers(&versions.get("echo-1.0.0").await.expect("version"));
    assert_eq!(after, before, "no finalizer removed");
    let active = installs
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|i| phase_of(i) == Some(Phase::Active))
        .count();
    assert_eq!(active, INSTALLS);
}
