//! The API server goes away and comes back (issue 11, end-to-end tests 3 and 4): what changed
//! while the operator could not watch is noticed once it can again.
//!
//! These tests stop and start the cluster's kube-apiserver, so they run on a cluster of their own
//! (`just e2e-faults`: `LOCAL_CLUSTER_DIR=target/fault-cluster`, KUBECONFIG pointing at it) and
//! are ignored by the normal suite. While the operator's API server is stopped, the test writes
//! through a second kube-apiserver on the same etcd (`cluster.sh start-second-apiserver`), so the
//! operator's watches really miss those changes and must find them by relisting.
mod support;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use devtools::testkit::wait_until;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use plugin_operator::resources::{Phase, Plugin, PluginInstall, PluginVersion};
use serde_json::json;
use support::*;

/// The in-use finalizer of PluginVersions.
const IN_USE: &str = "plugin-operator.dev/in-use";
const INSTALL_LABEL: &str = "plugin-operator.dev/install";

/// One test at a time: each stops the API server the other would use.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The fault cluster's control plane, driven through `devtools/scripts/cluster.sh`.
struct ControlPlane {
    dir: PathBuf,
}

impl ControlPlane {
    /// Refuses to run unless `LOCAL_CLUSTER_DIR` names the cluster the tests use: restarting the
    /// API server of the shared development cluster would break every other test on it.
    fn from_env() -> Self {
        let dir = std::env::var("LOCAL_CLUSTER_DIR").unwrap_or_else(|_| {
            panic!(
                "these tests restart the API server: run them with `just e2e-faults` (a cluster \
                 of their own, LOCAL_CLUSTER_DIR and KUBECONFIG set)"
            )
        });
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join(dir);
        let kubeconfig = devtools::testkit::local_kubeconfig_path();
        assert_eq!(
            kubeconfig.parent().and_then(|p| p.canonicalize().ok()),
            dir.canonicalize().ok(),
            "KUBECONFIG must be the kubeconfig of LOCAL_CLUSTER_DIR"
        );
        Self { dir }
    }

    async fn run(&self, command: &'static str) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("devtools/scripts/cluster.sh");
        let dir = self.dir.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(script)
                .arg(command)
                .env("LOCAL_CLUSTER_DIR", dir)
                .status()
        })
        .await
        .expect("cluster.sh ran")
        .expect("cluster.sh started");
        assert!(status.success(), "cluster.sh {command}: {status}");
    }

    /// Starts the second API server and returns a client of it.
    async fn second(&self) -> Client {
        self.run("start-second-apiserver").await;
        let kubeconfig =
            Kubeconfig::read_from(self.dir.join("kubeconfig-second")).expect("second kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("second kubeconfig is valid");
        Client::try_from(config).expect("client builds")
    }
}

/// Plugin `echo` with formal versions, all accepted.
async fn catalog(client: &Client, ns: &str, versions: &[&str]) {
    plugin(client, ns, "echo").await;
    for v in versions {
        version(client, ns, "echo", v, "ready").await;
    }
    let api: Api<PluginVersion> = Api::namespaced(client.clone(), ns);
    for v in versions {
        let name = format!("echo-{v}");
        wait_until(&format!("{name} accepted and held"), DEADLINE, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let version = api.get(&name).await.map_err(|e| e.to_string())?;
                let accepted = version.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Accepted" && c.status == "True")
                });
                if accepted && version.finalizers().iter().any(|f| f == IN_USE) {
                    Ok(())
                } else {
                    Err("not accepted or no finalizer yet".into())
                }
            }
        })
        .await;
    }
}

fn pinned(version: &str) -> serde_json::Value {
    json!({"plugin": "echo", "version": version})
}

/// The number of children of each kind per install (by the install label).
async fn children(client: &Client, ns: &str) -> BTreeMap<String, [usize; 5]> {
    async fn names<K>(client: &Client, ns: &str) -> Result<Vec<String>, String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let list = api
            .list_metadata(&ListParams::default().labels(INSTALL_LABEL))
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| o.labels().get(INSTALL_LABEL).cloned())
            .collect())
    }
    let kinds = [
        names::<Deployment>(client, ns).await,
        names::<Service>(client, ns).await,
        names::<ServiceAccount>(client, ns).await,
        names::<ConfigMap>(client, ns).await,
        names::<Secret>(client, ns).await,
    ];
    let mut counts: BTreeMap<String, [usize; 5]> = BTreeMap::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        for install in kind.unwrap_or_default() {
            counts.entry(install).or_default()[i] += 1;
        }
    }
    counts
}

/// Checks that the installs are Active on their versions and own exactly one Deployment,
/// Service, ServiceAccount, ConfigMap and credentials Secret each, and nothing else has children.
async fn settled(client: &Client, ns: &str, expected: &BTreeMap<&str, &str>) -> Result<(), String> {
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), ns);
    let installs = api
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut names: Vec<String> = installs.items.iter().map(ResourceExt::name_any).collect();
    names.sort();
    let wanted: Vec<String> = expected.keys().map(|n| (*n).to_owned()).collect();
    if names != wanted {
        return Err(format!("installs {names:?}, expected {wanted:?}"));
    }
    for install in &installs.items {
        let name = install.name_any();
        let version = install.status.as_ref().and_then(|s| s.version.as_deref());
        if phase_of(install) != Some(Phase::Active) || version != Some(expected[name.as_str()]) {
            return Err(format!("{name}: {:?} on {version:?}", phase_of(install)));
        }
    }
    let children = children(client, ns).await;
    let owners: Vec<&String> = children.keys().collect();
    if owners != wanted.iter().collect::<Vec<_>>() {
        return Err(format!("children belong to {owners:?}"));
    }
    if let Some((install, counts)) = children.iter().find(|(_, c)| **c != [1; 5]) {
        return Err(format!(
            "{install} has [deployments, services, service accounts, config maps, secrets] = {counts:?}"
        ));
    }
    Ok(())
}

/// How long after `back` every install's Deployment ran its expected version (the operator's
/// part of converging), and how long until kube-controller-manager had observed each of those
/// Deployments (its part, which the pods and so `Active` wait for): two figures of one run.
async fn deployments_written(
    client: &Client,
    ns: &str,
    expected: &BTreeMap<&str, &str>,
    back: Instant,
) -> (Duration, Duration) {
    const VERSION_LABEL: &str = "plugin-operator.dev/version";
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let (mut ours, mut observed) = (None, None);
    // kube-controller-manager's informers come back from an API server restart on client-go's
    // backoff (up to 30 s a try): it has taken 24–82 s here, so its deadline is long.
    while ours.is_none() || observed.is_none() {
        assert!(
            back.elapsed() < Duration::from_secs(240),
            "Deployments not written ({ours:?}) or not observed ({observed:?}) after 240 s"
        );
        if let Ok(list) = api.list(&ListParams::default().labels(INSTALL_LABEL)).await {
            let current: BTreeMap<String, &Deployment> = list
                .items
                .iter()
                .filter_map(|d| Some((d.labels().get(INSTALL_LABEL)?.clone(), d)))
                .collect();
            let wanted: Vec<Option<&&Deployment>> =
                expected.keys().map(|name| current.get(*name)).collect();
            let on_version = expected.iter().zip(&wanted).all(|((_, version), d)| {
                d.and_then(|d| d.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref())
                    .and_then(|labels| labels.get(VERSION_LABEL))
                    .is_some_and(|v| v == version)
            });
            if on_version && ours.is_none() {
                ours = Some(back.elapsed());
            }
            let all_observed = on_version
                && wanted.iter().flatten().all(|d| {
                    let seen = d.status.as_ref().and_then(|s| s.observed_generation);
                    seen.is_some() && seen >= d.metadata.generation
                });
            if all_observed && observed.is_none() {
                observed = Some(back.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (ours.unwrap_or_default(), observed.unwrap_or_default())
}

fn in_use_message(version: &PluginVersion) -> Option<String> {
    version
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "InUse")
        .map(|c| format!("{}: {}", c.status, c.message))
}

#[tokio::test]
#[ignore = "restarts the API server: run by `just e2e-faults` on a cluster of its own"]
async fn deletions_while_the_watches_are_down_are_noticed() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::from_env();
    let client = setup().await;
    let ns = namespace(&client, "gap").await;
    let ns = ns.name.as_str();
    catalog(&client, ns, &["1.0.0", "2.0.0", "3.0.0"]).await;
    for (name, version) in [
        ("keep-a", "1.0.0"),
        ("keep-b", "1.0.0"),
        ("gone-a", "1.0.0"),
        ("gone-b", "2.0.0"),
    ] {
        install(&client, ns, name, pinned(version)).await;
    }
    for name in ["keep-a", "keep-b", "gone-a", "gone-b"] {
        wait_phase(&client, ns, name, Phase::Active).await;
    }
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), ns);
    wait_until("the plugin to count 4 installs", DEADLINE, || async {
        let p = plugins.get("echo").await.map_err(|e| e.to_string())?;
        match p.status.map(|s| s.installs) {
            Some(4) => Ok(()),
            other => Err(format!("installs: {other:?}")),
        }
    })
    .await;

    // The operator's API server goes; through a second one, two installs go, a version in use is
    // deleted (its finalizer holds it) and an unused one goes for good.
    plane.run("stop-apiserver").await;
    let down = Instant::now();
    let second = plane.second().await;
    let installs: Api<PluginInstall> = Api::namespaced(second.clone(), ns);
    for name in ["gone-a", "gone-b"] {
        installs
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete install");
    }
    let versions: Api<PluginVersion> = Api::namespaced(second.clone(), ns);
    versions
        .delete("echo-2.0.0", &DeleteParams::default())
        .await
        .expect("delete version in use");
    versions
        .patch(
            "echo-3.0.0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("drop the unused version's finalizer");
    versions
        .delete("echo-3.0.0", &DeleteParams::default())
        .await
        .expect("delete unused version");
    for name in ["gone-a", "gone-b"] {
        wait_gone(&installs, name).await;
    }
    wait_gone(&versions, "echo-3.0.0").await;
    plane.run("stop-second-apiserver").await;
    plane.run("start-apiserver").await;
    let back = Instant::now();
    let back_at = chrono::Utc::now();
    println!(
        "the operator's API server was down {:.1} s",
        (back - down).as_secs_f64()
    );

    let versions: Api<PluginVersion> = Api::namespaced(client.clone(), ns);
    wait_until("the gap to be noticed", DEADLINE, || async {
        let plugin = plugins.get("echo").await.map_err(|e| e.to_string())?;
        let status = plugin.status.unwrap_or_default();
        if status.installs != 2 || status.versions != ["1.0.0"] {
            return Err(format!(
                "plugin: installs {}, versions {:?}",
                status.installs, status.versions
            ));
        }
        // No install runs 2.0.0 any more: its finalizer is dropped and it is gone.
        if let Some(v) = versions
            .get_opt("echo-2.0.0")
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "echo-2.0.0 still there: finalizers {:?}, {:?}",
                v.finalizers(),
                in_use_message(&v)
            ));
        }
        let kept = versions
            .get("echo-1.0.0")
            .await
            .map_err(|e| e.to_string())?;
        let in_use = in_use_message(&kept).unwrap_or_default();
        if !kept.finalizers().iter().any(|f| f == IN_USE)
            || !in_use.contains(&format!("{ns}/keep-a, {ns}/keep-b"))
            || in_use.contains("gone-a")
        {
            return Err(format!(
                "echo-1.0.0: finalizers {:?}, {in_use}",
                kept.finalizers()
            ));
        }
        Ok(())
    })
    .await;
    let noticed = back.elapsed();
    // The deleted installs' children are garbage-collected (by kube-controller-manager); the
    // others keep theirs.
    let expected = BTreeMap::from([("keep-a", "1.0.0"), ("keep-b", "1.0.0")]);
    // The garbage collector's informers come back on client-go's backoff: up to a minute here.
    wait_until(
        "the children of the deleted installs to go",
        Duration::from_secs(180),
        || settled(&client, ns, &expected),
    )
    .await;
    println!(
        "the gap noticed (plugin counts, in-use finalizers) {:.1} s after the API server was back \
         (the operator); converged, garbage collected, {:.1} s after (kube-controller-manager)",
        noticed.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    // Nothing acted on the deleted installs from a stale cache: no write made their children (or
    // their status) again once the API server was back. (Only kube-controller-manager deletes
    // them, and the node simulator reports on their pods.)
    let stale_writes: Vec<String> = audit_events()
        .iter()
        .filter(|e| {
            let object = &e["objectRef"];
            let at = e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            object["namespace"] == ns
                && object["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("gone-"))
                && object["resource"] != "pods"
                && matches!(e["verb"].as_str(), Some("create" | "patch" | "update"))
                && at.is_some_and(|at| at > back_at)
                && !e["userAgent"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("kube-controller-manager")
        })
        .map(|e| {
            format!(
                "{} {} {} ({})",
                e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"], e["userAgent"]
            )
        })
        .collect();
    assert!(
        stale_writes.is_empty(),
        "writes for installs deleted while the watches were down: {stale_writes:?}"
    );
}

#[tokio::test]
#[ignore = "restarts the API server: run by `just e2e-faults` on a cluster of its own"]
async fn every_install_converges_after_a_restart_under_churn() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::from_env();
    let client = setup().await;
    let ns = namespace(&client, "churn").await;
    let ns = ns.name.as_str();
    catalog(&client, ns, &["1.0.0", "1.1.0"]).await;
    let first: Vec<String> = (0..6).map(|i| format!("old-{i}")).collect();
    for name in &first {
        install(&client, ns, name, pinned("1.0.0")).await;
    }
    for name in &first {
        wait_phase(&client, ns, name, Phase::Active).await;
    }

    // Churn just before the restart: the operator is mid-change when its API server goes.
    for i in 0..3 {
        install(&client, ns, &format!("before-{i}"), pinned("1.0.0")).await;
    }
    patch_install(&client, ns, "old-0", json!({"spec": {"version": "1.1.0"}})).await;
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), ns);
    installs
        .delete("old-1", &DeleteParams::default())
        .await
        .expect("delete install");
    plane.run("stop-apiserver").await;
    let down = Instant::now();

    // Churn while it is down, through the second API server.
    let second = plane.second().await;
    for i in 0..3 {
        install(&second, ns, &format!("during-{i}"), pinned("1.1.0")).await;
    }
    patch_install(&second, ns, "old-2", json!({"spec": {"version": "1.1.0"}})).await;
    Api::<PluginInstall>::namespaced(second.clone(), ns)
        .delete("old-3", &DeleteParams::default())
        .await
        .expect("delete install");
    plane.run("stop-second-apiserver").await;
    plane.run("start-apiserver").await;
    let back = Instant::now();
    println!(
        "the operator's API server was down {:.1} s",
        (back - down).as_secs_f64()
    );

    // And right after it is back, while the watches relist.
    for i in 0..3 {
        install(&client, ns, &format!("after-{i}"), pinned("1.0.0")).await;
    }
    patch_install(&client, ns, "old-4", json!({"spec": {"version": "1.1.0"}})).await;
    installs
        .delete("before-0", &DeleteParams::default())
        .await
        .expect("delete install");

    let expected = BTreeMap::from([
        ("old-0", "1.1.0"),
        ("old-2", "1.1.0"),
        ("old-4", "1.1.0"),
        ("old-5", "1.0.0"),
        ("before-1", "1.0.0"),
        ("before-2", "1.0.0"),
        ("during-0", "1.1.0"),
        ("during-1", "1.1.0"),
        ("during-2", "1.1.0"),
        ("after-0", "1.0.0"),
        ("after-1", "1.0.0"),
        ("after-2", "1.0.0"),
    ]);
    let (ours, controller_manager) = deployments_written(&client, ns, &expected, back).await;
    println!(
        "every Deployment on its version {:.1} s after the API server was back (the operator); \
         all observed by kube-controller-manager {:.1} s after (its deployment controller, beside it)",
        ours.as_secs_f64(),
        controller_manager.as_secs_f64()
    );
    wait_until(
        "every install Active with one of each child",
        Duration::from_secs(120),
        || settled(&client, ns, &expected),
    )
    .await;
    println!(
        "converged {:.1} s after the API server was back",
        back.elapsed().as_secs_f64()
    );

    let plugins: Api<Plugin> = Api::namespaced(client.clone(), ns);
    wait_until("the plugin to count 12 installs", DEADLINE, || async {
        let p = plugins.get("echo").await.map_err(|e| e.to_string())?;
        match p.status.map(|s| s.installs) {
            Some(12) => Ok(()),
            other => Err(format!("installs: {other:?}")),
        }
    })
    .await;
}
