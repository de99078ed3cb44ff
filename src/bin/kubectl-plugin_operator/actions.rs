//! The commands that ask the operator for something, each by a write the operator answers,
//! then following the answer: `approve` (spec.approvedVersion), `retry` and
//! `rotate-credentials` (annotations on the install).
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use plugin_operator::resources::{
    Phase, PluginInstall, PluginInstallStatus, UpgradeMode,
    names::{self, annotations, credentials},
};
use serde_json::json;

use super::{
    ApproveArgs, FIELD_MANAGER, Failure, INSTALLS, WaitArgs, classify, output::age, print,
    split_object,
};

/// Follows one install by a watch until `check` answers (`Some`), or fails after `timeout`.
async fn follow_install<T>(
    api: &Api<PluginInstall>,
    name: &str,
    timeout: Duration,
    mut check: impl FnMut(&PluginInstall) -> Option<Result<T, Failure>>,
) -> Result<Option<T>, Failure> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects();
    let follow = async {
        let mut stream = std::pin::pin!(stream);
        while let Some(install) = stream
            .try_next()
            .await
            .map_err(|e| Failure::Other(format!("watching the install: {e}")))?
        {
            if let Some(answer) = check(&install) {
                return answer.map(Some);
            }
        }
        Ok(None)
    };
    match tokio::time::timeout(timeout, follow).await {
        Ok(answer) => answer,
        Err(_) => Ok(None),
    }
}

/// Reads the install, with the exit codes of a missing or forbidden one.
async fn read(
    api: &Api<PluginInstall>,
    namespace: &str,
    name: &str,
) -> Result<PluginInstall, Failure> {
    api.get(name)
        .await
        .map_err(|e| classify(e, INSTALLS, Some(&format!("{namespace}/{name}"))))
}

async fn patch(
    api: &Api<PluginInstall>,
    namespace: &str,
    name: &str,
    patch: serde_json::Value,
) -> Result<PluginInstall, Failure> {
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        },
        &Patch::Merge(patch),
    )
    .await
    .map_err(|e| classify(e, INSTALLS, Some(&format!("{namespace}/{name}"))))
}

fn phase_of(status: &PluginInstallStatus) -> &'static str {
    status.phase.map_or("Unknown", |p| p.as_str())
}

/// `approve`: sets `spec.approvedVersion` of a Manual install, then follows the rollout and
/// prints each phase it passes, until the version is Active or the operator reverted it.
pub async fn approve(client: &Client, args: ApproveArgs) -> Result<(), Failure> {
    let (namespace, name) = split_object(client, &args.object, args.namespace);
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), &namespace);
    let install = read(&api, &namespace, &name).await?;
    let who = format!("{namespace}/{name}");
    if install.spec.upgrade_mode == UpgradeMode::Auto {
        return Err(Failure::Other(format!(
            "{who} upgrades by itself (upgradeMode: Auto): there is nothing to approve"
        )));
    }
    let status = install.status.clone().unwrap_or_default();
    let Some(version) = args.version.or_else(|| status.available_version.clone()) else {
        return Err(Failure::Other(format!(
            "{who} has no upgrade available (status.availableVersion is empty); name a version to approve"
        )));
    };
    if semver::Version::parse(&version).is_err() {
        return Err(Failure::Other(format!(
            "{version:?} is not a version (MAJOR.MINOR.PATCH)"
        )));
    }
    if status.failed_versions.contains(&version) {
        return Err(Failure::Other(format!(
            "{version} failed on {who} before and is not rolled out again by approval; set spec.version to {version} to try it again"
        )));
    }
    if status.version.as_deref() == Some(version.as_str()) && status.phase == Some(Phase::Active) {
        print(&format!("{who} already runs {version}\n"))?;
        return Ok(());
    }
    let patched = patch(
        &api,
        &namespace,
        &name,
        json!({"spec": {"approvedVersion": version}}),
    )
    .await?;
    let generation = patched.metadata.generation;
    print(&format!(
        "{who}: approved {version}; following the rollout\n"
    ))?;
    let mut last_phase = None;
    let answer = follow_install(&api, &name, args.timeout, |install| {
        let status = install.status.clone().unwrap_or_default();
        if status.observed_generation < generation {
            return None;
        }
        if status.phase != last_phase {
            last_phase = status.phase;
            let message = install
                .status
                .as_ref()
                .and_then(|s| {
                    plugin_operator::resources::conditions::find_condition(
                        &s.conditions,
                        plugin_operator::resources::conditions::READY,
                    )
                })
                .map(|c| c.message.clone())
                .unwrap_or_default();
            if let Err(e) = print(&format!("{who}: {} ({message})\n", phase_of(&status))) {
                return Some(Err(e));
            }
        }
        if status.failed_versions.contains(&version) {
            let why = status
                .last_failure
                .as_ref()
                .map(|f| format!("{}: {}", f.reason, f.message))
                .unwrap_or_default();
            let running = status.version.as_deref().unwrap_or("-");
            return Some(Err(Failure::Reverted(format!(
                "the rollout of {version} on {who} failed ({why}); reverted to {running}"
            ))));
        }
        (status.version.as_deref() == Some(version.as_str()) && status.phase == Some(Phase::Active))
            .then_some(Ok(()))
    })
    .await?;
    match answer {
        Some(()) => print(&format!("{who}: {version} is Active\n")),
        None => Err(Failure::TimedOut(format!(
            "{who}: {version} was not Active within {}; follow it with kubectl plugin-operator status -n {namespace} -w",
            humanize(args.timeout)
        ))),
    }
}

/// `retry`: asks the operator to try an install in Error once more (the `retry` annotation,
/// docs/decisions.md), and waits until the operator has answered it.
pub async fn retry(client: &Client, args: WaitArgs) -> Result<(), Failure> {
    let (namespace, name) = split_object(client, &args.object, args.namespace);
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), &namespace);
    let install = read(&api, &namespace, &name).await?;
    let who = format!("{namespace}/{name}");
    let status = install.status.unwrap_or_default();
    if status.phase != Some(Phase::Error) {
        return Err(Failure::Other(format!(
            "{who} is {}, not Error: there is nothing to retry",
            phase_of(&status)
        )));
    }
    let request = Timestamp::now().to_string();
    patch(
        &api,
        &namespace,
        &name,
        json!({"metadata": {"annotations": {annotations::RETRY: request}}}),
    )
    .await?;
    let answer = follow_install(&api, &name, args.timeout, |install| {
        let status = install.status.clone().unwrap_or_default();
        (status.retry_handled.as_deref() == Some(request.as_str())).then(|| Ok(phase_of(&status)))
    })
    .await?;
    match answer {
        Some(phase) => print(&format!("{who}: retrying ({phase})\n")),
        None => Err(Failure::TimedOut(format!(
            "the operator did not answer the retry of {who} within {}: is it running?",
            humanize(args.timeout)
        ))),
    }
}

/// `rotate-credentials`: sets the rotation annotation and waits until the credentials Secret
/// was made for it (its own annotation names the same rotation). The Secret is watched as
/// metadata: its data never reaches this process.
pub async fn rotate_credentials(client: &Client, args: WaitArgs) -> Result<(), Failure> {
    let (namespace, name) = split_object(client, &args.object, args.namespace);
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), &namespace);
    read(&api, &namespace, &name).await?;
    let who = format!("{namespace}/{name}");
    let rotation = Timestamp::now().to_string();
    patch(
        &api,
        &namespace,
        &name,
        json!({"metadata": {"annotations": {credentials::ROTATE_ANNOTATION: rotation}}}),
    )
    .await?;
    let secret_name = names::credentials_secret_name(&name);
    let secrets: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={secret_name}"));
    let started = Timestamp::now();
    let wait = async {
        let stream = watcher(secrets, config).default_backoff().applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(secret) = stream.next().await {
            match secret {
                Ok(secret)
                    if secret.annotations().get(credentials::ROTATION_ANNOTATION)
                        == Some(&rotation) =>
                {
                    return Ok(());
                }
                Ok(_) => {}
                Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                    if status.code == 403 =>
                {
                    return Err(Failure::Forbidden(status.message));
                }
                Err(_) => {}
            }
        }
        Ok(())
    };
    match tokio::time::timeout(args.timeout, wait).await {
        Ok(Ok(())) => print(&format!(
            "{who}: new credentials in Secret {namespace}/{secret_name} after {} (refresh tokens revoked)\n",
            age(started, Timestamp::now())
        )),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Failure::TimedOut(format!(
            "the operator did not rotate the credentials of {who} within {}: is it running?",
            humanize(args.timeout)
        ))),
    }
}

fn humanize(duration: Duration) -> String {
    let start = Timestamp::UNIX_EPOCH;
    let end = start
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 2),
        ))
        .unwrap_or(start);
    age(start, end)
}
