//! Versions and upgrades (SPEC §3 "Upgrades"), end to end: Auto and Manual modes, drafts,
//! a failing upgrade reverted without an outage, delete protection and immutable formal versions.
mod support;

use std::time::Duration;

use devtools::testkit::wait_until;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use plugin_operator::resources::{Phase, PluginInstall, PluginVersion, RolloutOutcome};
use serde_json::json;
use support::*;

fn running(install: &PluginInstall) -> Option<&str> {
    install.status.as_ref()?.version.as_deref()
}

fn available(install: &PluginInstall) -> Option<&str> {
    install.status.as_ref()?.available_version.as_deref()
}

/// The version label of the Deployment's pod template.
fn deployed_version(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get("plugin-operator.dev/version")
        .cloned()
}

#[tokio::test]
async fn auto_moves_to_a_new_formal_version() {
    let client = setup().await;
    let ns = namespace(&client, "up-auto").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "version": "^1", "upgradeMode": "Auto"}),
    )
    .await;
    wait_install(&client, &ns.name, "echo", "Active on 1.0.0", |i| {
        phase_of(i) == Some(Phase::Active) && running(i) == Some("1.0.0")
    })
    .await;

    version(&client, &ns.name, "echo", "1.1.0", "ready").await;
    let moved = wait_install(&client, &ns.name, "echo", "Active on 1.1.0", |i| {
        phase_of(i) == Some(Phase::Active) && running(i) == Some("1.1.0")
    })
    .await;
    let history = &moved.status.as_ref().expect("status").history;
    let outcomes: Vec<(&str, RolloutOutcome)> = history
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
    assert_eq!(available(&moved), None);

    // A new major is outside the range.
    version(&client, &ns.name, "echo", "2.0.0", "ready").await;
    wait_until("2.0.0 accepted", DEADLINE, || {
        accepted(&client, &ns.name, "echo-2.0.0")
    })
    .await;
    let install = get_install(&client, &ns.name, "echo").await;
    assert_eq!(running(&install), Some("1.1.0"));
}

async fn accepted(client: &kube::Client, ns: &str, name: &str) -> Result<(), String> {
    let api: Api<PluginVersion> = Api::namespaced(client.clone(), ns);
    let v = api.get(name).await.map_err(|e| e.to_string())?;
    let ok = v.status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    });
    if ok {
        Ok(())
    } else {
        Err("not accepted yet".into())
    }
}

#[tokio::test]
async fn manual_announces_waits_and_moves_once_approved() {
    let client = setup().await;
    let ns = namespace(&client, "up-manual").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "version": "^1"}),
    )
    .await;
    wait_install(&client, &ns.name, "echo", "Active on 1.0.0", |i| {
        phase_of(i) == Some(Phase::Active) && running(i) == Some("1.0.0")
    })
    .await;

    version(&client, &ns.name, "echo", "1.2.0", "ready").await;
    let waiting = wait_install(&client, &ns.name, "echo", "1.2.0 available", |i| {
        available(i) == Some("1.2.0")
    })
    .await;
    assert_eq!(running(&waiting), Some("1.0.0"));
    assert_eq!(phase_of(&waiting), Some(Phase::Active));
    let upgrade = condition(&waiting, "UpgradeAvailable").expect("UpgradeAvailable");
    assert_eq!(
        (upgrade.status.as_str(), upgrade.reason.as_str()),
        ("True", "AwaitingApproval")
    );
    let deployment = deployment(&client, &ns.name, "echo")
        .await
        .expect("deployment");
    assert_eq!(
        deployed_version(&deployment).as_deref(),
        Some("1.0.0"),
        "nothing rolls out before approval"
    );

    patch_install(
        &client,
        &ns.name,
        "echo",
        json!({"spec": {"approvedVersion": "1.2.0"}}),
    )
    .await;
    let moved = wait_install(&client, &ns.name, "echo", "Active on 1.2.0", |i| {
        phase_of(i) == Some(Phase::Active) && running(i) == Some("1.2.0")
    })
    .await;
    assert_eq!(available(&moved), None);
    assert_eq!(
        condition(&moved, "UpgradeAvailable").map(|c| c.status.as_str()),
        Some("False")
    );
}

#[tokio::test]
async fn drafts_are_ignored_by_ranges_and_run_when_named() {
    let client = setup().await;
    let ns = namespace(&client, "up-draft").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    version_with(
        &client,
        &ns.name,
        "echo",
        "1.5.0",
        "ready",
        json!({"attribution": "draft"}),
    )
    .await;
    install(
        &client,
        &ns.name,
        "ranged",
        json!({"plugin": "echo", "version": "^1", "upgradeMode": "Auto"}),
    )
    .await;
    install(
        &client,
        &ns.name,
        "pinned",
        json!({"plugin": "echo", "version": "1.5.0"}),
    )
    .await;
    let ranged = wait_install(&client, &ns.name, "ranged", "Active", |i| {
        phase_of(i) == Some(Phase::Active)
    })
    .await;
    assert_eq!(running(&ranged), Some("1.0.0"));
    assert_eq!(available(&ranged), None, "a draft is no available upgrade");
    let pinned = wait_install(&client, &ns.name, "pinned", "Active", |i| {
        phase_of(i) == Some(Phase::Active)
    })
    .await;
    assert_eq!(running(&pinned), Some("1.5.0"));
}

#[tokio::test]
async fn a_crash_looping_upgrade_is_reverted_without_an_outage_and_not_retried() {
    let client = setup().await;
    let ns = namespace(&client, "up-revert").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "version": "^1", "upgradeMode": "Auto", "replicas": 2}),
    )
    .await;
    wait_install(&client, &ns.name, "echo", "Active on 1.0.0", |i| {
        phase_of(i) == Some(Phase::Active) && running(i) == Some("1.0.0")
    })
    .await;

    // Watch the Deployment several times a second through the rollout and the revert.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn({
        let deployments = deployments.clone();
        async move {
            let mut samples = Vec::new();
            loop {
                if stopped.try_recv().is_ok() {
                    return samples;
                }
                if let Ok(d) = deployments.get("echo").await {
                    let ready = d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    samples.push((ready, deployed_version(&d)));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    version(&client, &ns.name, "echo", "1.1.0", "crash").await;
    let reverted = wait_install(
        &client,
        &ns.name,
        "echo",
        "1.1.0 failed and reverted",
        |i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.failed_versions.contains(&"1.1.0".to_owned()))
                && phase_of(i) == Some(Phase::Active)
        },
    )
    .await;
    let status = reverted.status.clone().expect("status");
    assert_eq!(status.version.as_deref(), Some("1.0.0"));
    let last = status.history.last().expect("history");
    assert_eq!(
        (last.version.as_str(), last.outcome),
        ("1.1.0", RolloutOutcome::Failed)
    );
    assert!(status.last_failure.is_some_and(|f| f.reason == "CrashLoop"));
    let degraded = condition(&reverted, "Degraded").expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RolledBack")
    );
    let events = wait_events(&client, &ns.name, "echo", "the revert announced", |e| {
        e.iter().filter(|a| *a == "Active").count() >= 2
    })
    .await;
    assert!(events.iter().any(|a| a == "Starting"), "{events:?}");

    // Never retried by itself: for a while after the revert, 1.0.0 stays deployed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < deadline {
        let d = deployments.get("echo").await.expect("deployment");
        assert_eq!(
            deployed_version(&d).as_deref(),
            Some("1.0.0"),
            "the failed version was rolled out again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop.send(());
    let samples = watcher.await.expect("watcher");
    assert!(
        samples.len() > 20,
        "watched the rollout: {} samples",
        samples.len()
    );
    assert!(
        samples.iter().any(|(_, v)| v.as_deref() == Some("1.1.0")),
        "the upgrade was rolled out"
    );
    let outage: Vec<_> = samples.iter().filter(|(ready, _)| *ready == 0).collect();
    assert!(
        outage.is_empty(),
        "no ready replica at some point: {outage:?}"
    );

    // A fixed release is picked up; naming the failed version exactly retries it.
    version(&client, &ns.name, "echo", "1.1.1", "ready").await;
    wait_install(&client, &ns.name, "echo", "Active on 1.1.1", |i| {
        phase_of(i) == Some(Phase::Active) && running(i) == Some("1.1.1")
    })
    .await;
    patch_install(
        &client,
        &ns.name,
        "echo",
        json!({"spec": {"version": "1.1.0"}}),
    )
    .await;
    let retried = wait_install(&client, &ns.name, "echo", "1.1.0 rolled out again", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| s.history.iter().filter(|h| h.version == "1.1.0").count() == 2)
    })
    .await;
    let _ = retried;
}

#[tokio::test]
async fn a_version_in_use_cannot_be_deleted() {
    let client = setup().await;
    let ns = namespace(&client, "up-delete").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    version(&client, &ns.name, "echo", "1.1.0", "ready").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "version": "1.0.0"}),
    )
    .await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;

    let versions: Api<PluginVersion> = Api::namespaced(client.clone(), &ns.name);
    // An unused version goes at once; the running one stays, saying who holds it.
    versions
        .delete("echo-1.1.0", &DeleteParams::default())
        .await
        .expect("delete unused");
    wait_gone(&versions, "echo-1.1.0").await;
    versions
        .delete("echo-1.0.0", &DeleteParams::default())
        .await
        .expect("delete used");
    let held = wait_until("the in-use condition", DEADLINE, || {
        let versions = versions.clone();
        async move {
            let v = versions
                .get("echo-1.0.0")
                .await
                .map_err(|e| e.to_string())?;
            let c = v
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "InUse").cloned());
            match c {
                Some(c)
                    if v.metadata.deletion_timestamp.is_some()
                        && c.message.contains("deletion waits") =>
                {
                    Ok(c)
                }
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        held.message.contains(&format!("{}/echo", ns.name)),
        "{}",
        held.message
    );
    assert_eq!(
        phase_of(&get_install(&client, &ns.name, "echo").await),
        Some(Phase::Active),
        "the install keeps running"
    );

    // Once nothing runs it, it goes.
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), &ns.name);
    installs
        .delete("echo", &DeleteParams::default())
        .await
        .expect("delete install");
    wait_gone(&versions, "echo-1.0.0").await;
}

#[tokio::test]
async fn an_edited_formal_version_is_refused_by_the_api_server_and_nothing_rolls_out() {
    let client = setup().await;
    let ns = namespace(&client, "up-immutable").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo", json!({"plugin": "echo"})).await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    let before = deployment(&client, &ns.name, "echo")
        .await
        .expect("deployment");

    // The CRD's CEL rule refuses the edit at admission. (The operator would refuse a changed
    // spec too, by its fingerprint, should one get past a server without the rule: unit-tested.)
    let versions: Api<PluginVersion> = Api::namespaced(client.clone(), &ns.name);
    let edit = json!({"spec": {"execution": {"image": "registry.example.com/echo:tampered"}}});
    let refused = versions
        .patch("echo-1.0.0", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect_err("the API server refuses the edit");
    match &refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("is immutable"),
                "{}",
                status.message
            );
        }
        other => panic!("not the API server's answer: {other}"),
    }
    let kept = versions.get("echo-1.0.0").await.expect("get version");
    let accepted = kept
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
        .map(|c| c.status.clone());
    assert_eq!(accepted.as_deref(), Some("True"), "still accepted");
    let after = deployment(&client, &ns.name, "echo")
        .await
        .expect("deployment");
    let image = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].image.clone())
    };
    assert_eq!(image(&after), image(&before), "the edit rolled nothing out");
    assert_eq!(
        image(&after).as_deref(),
        Some("registry.example.com/echo:1.0.0")
    );
}
