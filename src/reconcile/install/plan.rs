//! Plan: from a [`World`] to what one reconcile does. Pure. It decides first (is the spec valid,
//! which version runs, which phase the install is in, whether to restart or revert), then builds
//! what it decided once: the children of a supervised install, and the credentials Secret when
//! one is due.
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{Resource, ResourceExt};
use semver::Version;
use serde_json::{Map, Value};

use super::{ForeignObject, World, outcome::Outcome, views};
use crate::{
    lifecycle::{
        phase::{self, Observation},
        resolve::{self, Resolution, ResolveError},
        versions::Versions,
    },
    resources::{
        ConditionStatus, ConnectionMode, Execution, ExecutionType, FailureOrigin, FailureReason,
        Phase, Plugin, PluginInstall, PluginInstallStatus, PluginVersion, RolloutOutcome,
        VersionSelector,
        conditions::{self, reason},
        names::{self, credentials},
        validate,
    },
};

use super::super::{
    build::{self, BuildError, Children},
    events::Transition,
};

/// How often a settled install is looked at again even without a change.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often an install in progress is looked at again, besides its watches.
pub const IN_PROGRESS_RECHECK: Duration = Duration::from_secs(30);
/// How soon to look again while versions wait for acceptance.
pub const PENDING_RECHECK: Duration = Duration::from_secs(2);
/// How often an external install's endpoint is checked.
pub const EXTERNAL_RECHECK_CONNECTING: Duration = Duration::from_secs(3);
pub const EXTERNAL_RECHECK_ACTIVE: Duration = Duration::from_secs(30);
/// After a reported failure: the endpoint is checked again at once.
pub const EXTERNAL_RECHECK_NOW: Duration = Duration::ZERO;

/// What one reconcile does. Applying it destructures it without `..`, so a part that is planned
/// but never applied does not compile.
#[derive(Debug)]
pub struct Plan {
    pub children: ChildrenPlan,
    pub credentials: CredentialsPlan,
    pub status: PluginInstallStatus,
    /// The phase changed: announce it with an Event.
    pub transition: Option<Transition>,
    /// A child's name is taken by an object the install does not own: nothing was planned for
    /// the children or the credentials, the status says why, and the reconcile fails so that it
    /// is retried with growing delays.
    pub name_conflict: Option<NameConflict>,
    pub requeue: Duration,
}

/// Objects under the names of an install's children that the install does not own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameConflict {
    /// Names every such object, for status, the Event and the log.
    pub message: String,
    /// `Ready` changed with it: announce it with an Event.
    pub announce: bool,
}

/// What a user reads about objects that hold the names of an install's children.
pub fn name_conflict_message(namespace: &str, foreign: &[ForeignObject]) -> String {
    let objects: Vec<String> = foreign
        .iter()
        .map(|f| {
            let owner = f
                .owner
                .as_ref()
                .map_or_else(|| "no controller".to_owned(), |o| format!("controller {o}"));
            format!("{} {namespace}/{} ({owner})", f.kind, f.name)
        })
        .collect();
    format!(
        "{} already exist{} and {} not made by this install; the operator never adopts an object it did not create: delete or rename {}, or give the install another name",
        objects.join(", "),
        if objects.len() == 1 { "s" } else { "" },
        if objects.len() == 1 { "was" } else { "were" },
        if objects.len() == 1 { "it" } else { "them" },
    )
}

/// The status to write when the API server refused a write of the children (a quota, RBAC, an
/// admission denial, an invalid object): the planned one, with `Ready=False`, the refusal's
/// reason and the API server's message, so that a user sees why nothing runs. Pure; returns
/// whether `Ready` changed from what `old` had, which is when to announce it with an Event.
pub fn refused(
    status: &mut PluginInstallStatus,
    old: Option<&PluginInstallStatus>,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> bool {
    conditions::set_condition(
        &mut status.conditions,
        conditions::NewCondition::new(conditions::READY, ConditionStatus::False, reason, message)
            .observed_generation(generation),
        Time(now),
    );
    let ready = |s: &PluginInstallStatus| {
        conditions::find_condition(&s.conditions, conditions::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    old.and_then(ready) != ready(status)
}

#[derive(Debug)]
pub enum ChildrenPlan {
    /// Leave the children as they are (an error keeps the last good state running).
    Keep,
    /// Apply these.
    Apply(Box<Children>),
    /// Remove the Deployment (inactive, or external).
    RemoveDeployment,
    /// An active external install: its ServiceAccount (for its tokens), and no Deployment.
    External(Box<k8s_openapi::api::core::v1::ServiceAccount>),
}

/// The credentials Secret (seed 003). Its `client_secret` is never logged: do not print a plan.
#[derive(Debug)]
pub enum CredentialsPlan {
    /// There are credentials for the rotation the install asks for (or they cannot be made
    /// now).
    Keep,
    /// There are none: create these.
    Create(Box<Secret>),
    /// The install asks for a rotation: replace the Secret (new `client_secret`, no refresh
    /// tokens), guarded by the resourceVersion observed.
    Rotate(Box<Secret>),
}

/// What the decision wants of the children.
pub enum Wanted<'w> {
    Keep,
    RemoveDeployment,
    /// An active external install's ServiceAccount, and no Deployment.
    External(&'w Plugin),
    Run(Rollout<'w>),
}

/// The decision, before anything is built.
pub struct Decision<'w> {
    pub wanted: Wanted<'w>,
    pub status: PluginInstallStatus,
    pub transition: Option<Transition>,
    pub requeue: Duration,
}

/// A version to run, with what it is built from.
pub struct Rollout<'w> {
    install: &'w PluginInstall,
    plugin: String,
    version: Version,
    execution: &'w Execution,
    /// The config after the schema's defaults, without Secret values.
    config: Value,
    restarts: i32,
}

impl Rollout<'_> {
    fn build<T>(
        &self,
        what: impl FnOnce(&build::Inputs<'_>) -> Result<T, BuildError>,
    ) -> Result<T, BuildError> {
        what(&build::Inputs {
            install: self.install,
            plugin_name: &self.plugin,
            version: &self.version.to_string(),
            execution: self.execution,
            config: &self.config,
            restarts: self.restarts,
            replicas: self.install.spec.replicas,
        })
    }
}

/// Decides everything for one install, then builds what it decided. Fails only when a child
/// cannot be serialized (a bug; see [`BuildError`]).
pub fn plan(world: &World) -> Result<Plan, BuildError> {
    let Decision {
        wanted,
        mut status,
        transition,
        requeue,
    } = decide(world)?;
    if !world.foreign.is_empty() {
        // Never adopt: nothing is written under a name another object holds. Removing the
        // Deployment stays allowed (it removes only one the install owns).
        let install = &*world.install;
        let message =
            name_conflict_message(&install.namespace().unwrap_or_default(), &world.foreign);
        let announce = refused(
            &mut status,
            install.status.as_ref(),
            reason::NAME_CONFLICT,
            &message,
            world.now,
            install.meta().generation,
        );
        let children = match wanted {
            Wanted::RemoveDeployment | Wanted::External(_) => ChildrenPlan::RemoveDeployment,
            Wanted::Keep | Wanted::Run(_) => ChildrenPlan::Keep,
        };
        return Ok(Plan {
            children,
            credentials: CredentialsPlan::Keep,
            status,
            transition,
            name_conflict: Some(NameConflict { message, announce }),
            requeue,
        });
    }
    let children = match wanted {
        Wanted::Keep => ChildrenPlan::Keep,
        Wanted::RemoveDeployment => ChildrenPlan::RemoveDeployment,
        Wanted::External(plugin) => ChildrenPlan::External(Box::new(build::service_account(
            &world.install,
            &plugin.name_any(),
        )?)),
        Wanted::Run(rollout) => ChildrenPlan::Apply(Box::new(rollout.build(build::children)?)),
    };
    Ok(Plan {
        children,
        credentials: credentials_plan(world),
        status,
        transition,
        name_conflict: None,
        requeue,
    })
}

/// The credentials an install needs: made once its Plugin is known, made anew when the
/// install's `rotate-credentials` annotation differs from the one the Secret was made for.
fn credentials_plan(world: &World) -> CredentialsPlan {
    let Ok(plugin) = &world.plugin else {
        return CredentialsPlan::Keep;
    };
    let install = &*world.install;
    let fresh =
        || build::credentials_secret(install, &plugin.name_any(), &world.fresh_client_secret);
    match &world.credentials {
        // Unknown: the next reconcile reads again.
        Err(_) => CredentialsPlan::Keep,
        Ok(None) => CredentialsPlan::Create(Box::new(fresh())),
        Ok(Some(existing)) if made_for(existing) != names::credentials_rotation(install) => {
            let mut secret = fresh();
            secret.metadata.resource_version = existing.resource_version.clone();
            CredentialsPlan::Rotate(Box::new(secret))
        }
        Ok(Some(_)) => CredentialsPlan::Keep,
    }
}

/// The `rotate-credentials` value a credentials Secret was made for.
fn made_for(secret: &ObjectMeta) -> &str {
    secret
        .annotations
        .as_ref()
        .and_then(|a| a.get(credentials::ROTATION_ANNOTATION))
        .map_or("", String::as_str)
}

/// The `retry` annotation's value when the operator has not answered it yet.
fn retry_requested(install: &PluginInstall, old: &PluginInstallStatus) -> Option<String> {
    let value = install.annotations().get(names::annotations::RETRY)?;
    (old.retry_handled.as_ref() != Some(value)).then(|| value.clone())
}

/// Decides the status and what the children should be.
fn decide(world: &World) -> Result<Decision<'_>, BuildError> {
    let install = &*world.install;
    let old = install.status.clone().unwrap_or_default();
    let generation = install.meta().generation;
    let spec_changed = generation.is_some() && generation != old.observed_generation;
    let mut status = old.clone();
    status.observed_generation = generation;
    status.plugin = Some(install.spec.plugin.to_string()).filter(|p| !p.is_empty());
    // A spec change ends Error, and so does the fix of what the spec referred to (a Plugin,
    // version or Secret that appears later): only runtime failures keep an install in Error.
    let input_error = old.phase == Some(Phase::Error)
        && old
            .last_failure
            .as_ref()
            .and_then(|f| FailureReason::parse(&f.reason))
            .is_some_and(|r| r.origin() == FailureOrigin::Input);
    // A retry the user asked for (a new `retry` annotation) is answered once: an install in
    // Error starts over as after a spec change, with its pods restarted; in any other phase
    // there is nothing to retry, and the request is only marked answered, so that it does not
    // fire at a later Error.
    let retry = retry_requested(install, &old);
    if let Some(value) = &retry {
        status.retry_handled = Some(value.clone());
    }
    let retried = retry.is_some() && old.phase == Some(Phase::Error);
    if retried {
        status.restarts += 1;
        // A rollout that ended Failed is tried anew: a new history entry, not the old one.
        status.target_version = None;
    }
    let previous = if spec_changed || input_error || retried {
        None
    } else {
        old.phase
    };

    // A spec that names a failed version exactly (again) retries it.
    if spec_changed
        && let Ok(VersionSelector::Exact(exact)) = VersionSelector::parse(&install.spec.version)
    {
        status.forget_failed(&exact);
    }

    let mut outcome = Outcome::new(
        &mut status,
        previous,
        old.phase,
        Time(world.now),
        generation,
    );

    if !install.spec.active {
        outcome.inactive();
        return Ok(outcome.finish(Wanted::RemoveDeployment, RESYNC));
    }
    // An install whose name cannot name its children is refused like an invalid spec.
    let errors: Vec<_> = validate::validate_install_name(&install.name_any())
        .err()
        .into_iter()
        .chain(
            validate::validate_install(&install.spec)
                .err()
                .into_iter()
                .flatten(),
        )
        .collect();
    if !errors.is_empty() {
        outcome.error(
            FailureReason::InvalidSpec,
            &validate::join_errors(&errors),
            None,
        );
        return Ok(outcome.finish(Wanted::Keep, RESYNC));
    }
    let plugin = match &world.plugin {
        Ok(plugin) => plugin,
        Err(refusal) => {
            outcome.error(refusal.reason, &refusal.message, None);
            return Ok(outcome.finish(Wanted::Keep, RESYNC));
        }
    };
    if let Err(errors) = validate::validate_plugin(&plugin.spec) {
        outcome.error(
            FailureReason::InvalidSpec,
            &format!(
                "Plugin {}: {}",
                plugin.name_any(),
                validate::join_errors(&errors)
            ),
            None,
        );
        return Ok(outcome.finish(Wanted::Keep, RESYNC));
    }

    if plugin.spec.connection.mode == ConnectionMode::External {
        return Ok(decide_external(outcome, world, plugin));
    }
    decide_supervised(outcome, world, plugin)
}

/// An external install: no Deployment, its ServiceAccount for tokens, its phase from the health
/// checks of its endpoint. A failure reported (seed 000 notify-failure) while Active (or
/// Connecting: the periodic check may have seen the endpoint fail first) is handled as for a
/// supervised install, with a re-check of the endpoint in place of the restart: Restarting,
/// checked again at once, then Active when it answers or Error when it does not. Without a
/// report, an endpoint that stops answering is Connecting (nothing to restart).
fn decide_external<'w>(
    mut outcome: Outcome<'_>,
    world: &World,
    plugin: &'w Plugin,
) -> Decision<'w> {
    let install = &*world.install;
    outcome.status.endpoint = plugin.spec.connection.endpoint.clone();
    outcome.status.target_version = None;
    outcome.status.version = external_version(world, outcome.status.version.as_deref());
    outcome.config_valid(true, reason::CONFIG_VALID, "config is valid");
    let wanted = Wanted::External(plugin);
    // A report counts when it is newer than the install's last activation and not yet
    // handled. Handled: recorded as the last failure by the same reporter at or after its time,
    // in whole seconds (status keeps no more), since the re-check can turn the install Active
    // again within the second the report came in.
    let activated_at = outcome.status.activated_at.as_ref().map(|t| t.0);
    let handled = |r: &phase::ReportedFailure| {
        outcome.status.last_failure.as_ref().is_some_and(|f| {
            f.reported_by == r.reported_by && f.time.0.as_second() >= r.at.as_second()
        })
    };
    let report = views::reported_failure(install)
        .filter(|r| activated_at.is_none_or(|at| r.at > at))
        .filter(|r| !handled(r));
    let health = world.external_health.as_ref();
    match (outcome.previous, report, health) {
        (Some(Phase::Active | Phase::Connecting), Some(report), _) => {
            outcome.record_failure(&phase::Failure {
                reason: FailureReason::FailureReported,
                message: report.message.clone(),
                reported_by: Some(report.reported_by.clone()),
            });
            outcome.phase(
                Phase::Restarting,
                &format!("{}; checking the external endpoint again", report.message),
            );
            outcome.finish(wanted, EXTERNAL_RECHECK_NOW)
        }
        (_, _, Some(Ok(()))) => {
            outcome.phase(
                Phase::Active,
                "the external endpoint answers its health check",
            );
            outcome.finish(wanted, EXTERNAL_RECHECK_ACTIVE)
        }
        (Some(Phase::Restarting), _, Some(Err(message))) => {
            let reported_by = outcome
                .status
                .last_failure
                .as_ref()
                .map(|f| f.reported_by.clone());
            outcome.error(
                FailureReason::EndpointUnreachable,
                &format!(
                    "after a reported failure, the external endpoint does not answer: {message}"
                ),
                reported_by.as_deref(),
            );
            outcome.finish(wanted, EXTERNAL_RECHECK_ACTIVE)
        }
        // Error lasts until the endpoint answers again (or the spec changes).
        (Some(Phase::Error), _, _) => outcome.finish(wanted, EXTERNAL_RECHECK_ACTIVE),
        (Some(Phase::Restarting), _, None) => outcome.finish(wanted, EXTERNAL_RECHECK_NOW),
        (_, _, Some(Err(message))) => {
            outcome.phase(
                Phase::Connecting,
                &format!("waiting for the external endpoint: {message}"),
            );
            outcome.finish(wanted, EXTERNAL_RECHECK_CONNECTING)
        }
        (_, _, None) => {
            outcome.phase(Phase::Connecting, "waiting for the external endpoint");
            outcome.finish(wanted, EXTERNAL_RECHECK_CONNECTING)
        }
    }
}

/// The version an external install answers to (seeds 000 and 002): the one its `spec.version`
/// resolves to among the plugin's accepted versions, as for a supervised install (newest formal
/// in range; Manual keeps the one it had while in range). `None` when the plugin has no version
/// that matches (an external plugin need not register versions).
fn external_version(world: &World, had: Option<&str>) -> Option<String> {
    let install = &*world.install;
    let selector = VersionSelector::parse(&install.spec.version).ok()?;
    let approved = install.spec.approved();
    let running = had.and_then(|v| Version::parse(v).ok());
    let request = resolve::Request {
        selector: &selector,
        mode: install.spec.upgrade_mode,
        approved: approved.as_ref(),
        running: running.as_ref(),
        failed: &[],
    };
    resolve::resolve(&request, &Versions::new(&world.versions).candidates())
        .ok()
        .map(|r| r.target.to_string())
}

fn decide_supervised<'w>(
    mut outcome: Outcome<'_>,
    world: &'w World,
    plugin: &'w Plugin,
) -> Result<Decision<'w>, BuildError> {
    let install = &*world.install;
    let mode = install.spec.upgrade_mode;
    let versions = Versions::new(&world.versions);
    let candidates = versions.candidates();
    let selector = match VersionSelector::parse(&install.spec.version) {
        Ok(selector) => selector,
        Err(message) => {
            outcome.error(
                FailureReason::InvalidSpec,
                &format!("spec.version: {message}"),
                None,
            );
            return Ok(outcome.finish(Wanted::Keep, RESYNC));
        }
    };
    let approved = install.spec.approved();
    let running = outcome.status.running();
    let mut failed = outcome.status.failed();
    let waiting = |mut outcome: Outcome<'_>| {
        // A first install waits until every version is decided, so a Manual install does not
        // start on a version that is about to be superseded.
        outcome.phase(
            Phase::Starting,
            "waiting for the plugin's versions to be accepted",
        );
        outcome.finish(Wanted::Keep, PENDING_RECHECK)
    };
    if outcome.status.version.is_none() && versions.any_pending() {
        return Ok(waiting(outcome));
    }
    let resolve = |failed: &[Version]| {
        let request = resolve::Request {
            selector: &selector,
            mode,
            approved: approved.as_ref(),
            running: running.as_ref(),
            failed,
        };
        resolve::resolve(&request, &candidates)
    };
    let resolution = match resolve(&failed) {
        Ok(resolution) => resolution,
        Err(_) if versions.any_pending() => return Ok(waiting(outcome)),
        Err(err) => {
            let reason = match err {
                ResolveError::NoMatch(_) => FailureReason::NoMatchingVersion,
                _ => FailureReason::VersionNotFound,
            };
            outcome.error(reason, &format!("spec.version: {err}"), None);
            return Ok(outcome.finish(Wanted::Keep, RESYNC));
        }
    };

    // What the target needs; an invalid version or config changes nothing that runs.
    let Some(current) = prepare(world, plugin, &versions, &resolution.target, &mut outcome) else {
        return Ok(outcome.finish(Wanted::Keep, RESYNC));
    };

    // How the pods of the template wanted now are doing, and what follows.
    let template = current.build(build::template_hash)?;
    let health = health(world, &outcome, &template);
    let decision = phase::decide(outcome.previous, health);
    let target = resolution.target.to_string();
    if running.as_ref() != Some(&resolution.target) {
        outcome.begin_rollout(&target);
    }

    match decision.action {
        phase::Action::None => {}
        phase::Action::Restart(failure) => {
            outcome.record_failure(&failure);
            outcome.status.restarts += 1;
            outcome.phase(
                Phase::Restarting,
                &format!("{}; restarting the plugin once", failure.message),
            );
            let restarted = Rollout {
                restarts: outcome.status.restarts,
                ..current
            };
            return Ok(outcome.finish(Wanted::Run(restarted), IN_PROGRESS_RECHECK));
        }
        phase::Action::Fail(failure) => {
            let Some(previous) = running.clone().filter(|r| *r != resolution.target) else {
                outcome.end_rollout(&target, RolloutOutcome::Failed);
                outcome.error(
                    failure.reason,
                    &failure.message,
                    failure.reported_by.as_deref(),
                );
                return Ok(outcome.finish(Wanted::Run(current), RESYNC));
            };
            // A failed upgrade: remember the version and go back to the one that ran.
            outcome.record_failure(&failure);
            outcome.end_rollout(&target, RolloutOutcome::Failed);
            outcome.status.failed_versions.push(target.clone());
            failed.push(resolution.target.clone());
            // Nothing else in range may run: back to the version that ran.
            let reverted = resolve(&failed).unwrap_or(Resolution {
                target: previous,
                available: None,
            });
            let Some(rollback) = prepare(world, plugin, &versions, &reverted.target, &mut outcome)
            else {
                return Ok(outcome.finish(Wanted::Keep, RESYNC));
            };
            outcome.status.target_version = None;
            outcome.set_available(&reverted, mode);
            outcome.degraded(
                true,
                reason::ROLLED_BACK,
                &format!(
                    "version {target} failed ({}): {}; reverted to {}",
                    failure.reason, failure.message, reverted.target
                ),
            );
            outcome.phase_with_reason(
                Phase::Starting,
                reason::ROLLED_BACK,
                &format!(
                    "rollout of {target} failed; reverting to {}",
                    reverted.target
                ),
            );
            return Ok(outcome.finish(Wanted::Run(rollback), IN_PROGRESS_RECHECK));
        }
    }

    outcome.set_available(&resolution, mode);
    outcome.status.endpoint = Some(names::service_endpoint(
        &install.name_any(),
        &install.namespace().unwrap_or_default(),
        current.execution.port,
    ));
    // Active needs the Service callers reach the plugin by: created in the background, it may
    // come after the pods are ready. The create's answer wakes the install, so there is nothing
    // to look at before (under load Services wait their turn for a minute and more, and a
    // recheck every few seconds was most of the reconciles).
    let requeue = if decision.phase == Phase::Active && !world.service {
        outcome.phase(
            Phase::Connecting,
            &format!("version {target} is running; waiting for its Service"),
        );
        RESYNC
    } else {
        progress(&mut outcome, decision.phase, &target)
    };
    Ok(outcome.finish(Wanted::Run(current), requeue))
}

/// The health of a supervised install: its Deployment and the pods of `template` (the template
/// wanted now), a reported failure, and since when it is Active.
fn health(world: &World, outcome: &Outcome<'_>, template: &str) -> phase::Health {
    let deployment = world
        .deployment
        .as_deref()
        .map(|d| views::deployment_view(d, template));
    let pods = views::pod_views(&world.pods, template);
    let report = views::reported_failure(&world.install);
    let active_since = conditions::find_condition(&outcome.status.conditions, conditions::READY)
        .filter(|c| ConditionStatus::of(c) == ConditionStatus::True)
        .map(|c| c.last_transition_time.0);
    phase::health(&Observation {
        previous: outcome.previous,
        active_since,
        deployment: deployment.as_ref(),
        pods: &pods,
        reported_failure: report.as_ref(),
    })
}

/// Records the phase an install without a restart or a failure is in, running `target`; how
/// soon to look again.
fn progress(outcome: &mut Outcome<'_>, phase: Phase, target: &str) -> Duration {
    match phase {
        Phase::Active => {
            outcome.status.version = Some(target.to_owned());
            outcome.status.target_version = None;
            outcome.end_rollout(target, RolloutOutcome::Succeeded);
            // A reverted upgrade stays announced until a later rollout succeeds.
            let reverted = outcome
                .status
                .history
                .last()
                .is_some_and(|h| h.outcome == RolloutOutcome::Failed);
            if !reverted {
                outcome.degraded(false, reason::HEALTHY, "running as expected");
            }
            outcome.phase(
                Phase::Active,
                &format!("version {target} runs with every replica ready"),
            );
            RESYNC
        }
        // Error lasts until the spec changes or the plugin turns Active by itself.
        Phase::Error => RESYNC,
        other => {
            let message = match other {
                Phase::Restarting => "restarting the plugin".to_owned(),
                Phase::Connecting => format!("version {target} is running; waiting for readiness"),
                _ => format!("starting version {target}"),
            };
            outcome.phase(other, &message);
            IN_PROGRESS_RECHECK
        }
    }
}

/// What running `target` takes: a runnable execution and a valid config. Records why not
/// (unsupported execution, invalid config) in the outcome, and answers `None`.
fn prepare<'w>(
    world: &'w World,
    plugin: &Plugin,
    versions: &Versions<'w>,
    target: &Version,
    outcome: &mut Outcome<'_>,
) -> Option<Rollout<'w>> {
    let version = versions.get(target)?;
    let execution = match &version.spec.execution {
        Some(e)
            if e.execution_type == ExecutionType::Container
                && e.image.as_deref().is_some_and(|i| !i.is_empty()) =>
        {
            e
        }
        Some(e) => {
            outcome.error(
                FailureReason::UnsupportedExecution,
                &format!("version {target}: execution.type {:?} cannot be run by this operator (only Container with an image)", e.execution_type),
                None,
            );
            return None;
        }
        None => {
            outcome.error(
                FailureReason::UnsupportedExecution,
                &format!("version {target} has no execution to run"),
                None,
            );
            return None;
        }
    };
    let config = match effective_config(world, version) {
        Ok(config) => config,
        Err((reason, message)) => {
            outcome.config_valid(false, reason.as_str(), &message);
            outcome.error(reason, &message, None);
            return None;
        }
    };
    outcome.config_valid(
        true,
        reason::CONFIG_VALID,
        "config satisfies the version's configSchema",
    );
    Some(Rollout {
        install: &world.install,
        plugin: plugin.name_any(),
        version: target.clone(),
        execution,
        config,
        restarts: outcome.status.restarts,
    })
}

/// The install's config with the schema's defaults, validated together with the Secret values.
/// Returns the config to store in the ConfigMap (without Secret values).
fn effective_config(
    world: &World,
    version: &PluginVersion,
) -> Result<Value, (FailureReason, String)> {
    let secrets = world
        .secret_config
        .clone()
        .map_err(|e| (e.reason, e.error.to_string()))?;
    let mut config = world
        .install
        .spec
        .config
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let Some(schema) = &version.spec.config_schema else {
        return Ok(config);
    };
    validate::apply_config_defaults(schema, &mut config);
    let mut with_secrets = config.clone();
    if let Value::Object(map) = &mut with_secrets {
        for (key, value) in secrets {
            map.entry(key).or_insert(value);
        }
    }
    let validator = validate::compile_config_schema(schema)
        .map_err(|e| (FailureReason::ConfigInvalid, e.to_string()))?;
    validate::validate_config(&validator, &with_secrets)
        .map_err(|errors| (FailureReason::ConfigInvalid, validate::join_errors(&errors)))?;
    Ok(config)
}
