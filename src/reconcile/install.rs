//! The PluginInstall controller: fetch → plan (validate, resolve, lifecycle, build) → apply →
//! status. Only fetch, apply and status talk to the API server; [`plan`] is pure.
use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Secret},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{Api, Resource, ResourceExt, runtime::controller::Action};
use semver::Version;
use serde_json::{Map, Value};

use super::{Context, Error, apply, build, events::Transition};
use crate::{
    lifecycle::{
        access::Refusal,
        phase::{self, DeploymentView, Observation, PodView, ReportedFailure},
        resolve::{self, Candidate, Resolution},
        versions::{candidates, is_pending},
    },
    resources::{
        ConnectionMode, Failure, HistoryEntry, NewCondition, Phase, Plugin, PluginInstall,
        PluginInstallStatus, PluginVersion, RolloutOutcome, VersionSelector,
        conditions::{self, ConditionStatus, reason},
        names::{self, FIELD_MANAGER, annotations, credentials, labels},
        validate::{self, FieldError},
    },
    runtime::{cache, call::with_timeout, random},
};

/// How often a settled install is looked at again even without a change.
const RESYNC: Duration = Duration::from_secs(300);
/// How often an install in progress is looked at again, besides its watches.
const IN_PROGRESS_RECHECK: Duration = Duration::from_secs(30);
/// How soon to look again while versions wait for acceptance.
const PENDING_RECHECK: Duration = Duration::from_secs(2);
/// How often an external install's endpoint is checked.
const EXTERNAL_RECHECK_CONNECTING: Duration = Duration::from_secs(3);
const EXTERNAL_RECHECK_ACTIVE: Duration = Duration::from_secs(30);

/// Everything [`plan`] reads, fetched from the caches (and Secrets and the external endpoint).
pub struct World<'a> {
    pub install: &'a PluginInstall,
    pub plugin: Result<Arc<Plugin>, Refusal>,
    /// Versions of the plugin (in the plugin's namespace).
    pub versions: Vec<Arc<PluginVersion>>,
    pub deployment: Option<Arc<Deployment>>,
    pub pods: Vec<Arc<Pod>>,
    /// Values of `configFrom` Secrets, merged; or why they could not be read.
    pub secret_config: Result<Map<String, Value>, FieldError>,
    /// For an external plugin: whether its endpoint answered a health check.
    pub external_health: Option<Result<(), String>>,
    pub now: Timestamp,
}

/// What one reconcile does.
#[derive(Debug)]
pub struct Plan {
    pub children: ChildrenPlan,
    pub status: PluginInstallStatus,
    pub transition: Option<Transition>,
    pub requeue: Duration,
}

#[derive(Debug)]
pub enum ChildrenPlan {
    /// Leave the children as they are (an error keeps the last good state running).
    Keep,
    /// Apply these.
    Apply(Box<build::Children>),
    /// Remove the Deployment (inactive, or external).
    RemoveDeployment,
}

pub async fn reconcile(install: Arc<PluginInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.is_leader() || install.meta().deletion_timestamp.is_some() {
        ctx.recent.installs.forget(&install);
        return Ok(Action::await_change());
    }
    let install = ctx.recent.installs.fresh(install);
    let world = fetch(&install, &ctx).await?;
    // Seed 003 credentials. Not fatal: without them (e.g. RBAC without `create secrets`) the
    // plugin still runs (the volume is optional); the next reconcile tries again.
    if let Ok(plugin) = &world.plugin
        && let Err(err) = ensure_credentials(&ctx.client, &install, &plugin.name_any()).await
    {
        tracing::warn!(install = %install.name_any(), namespace = ?install.namespace(), error = %err, "cannot create or rotate the credentials Secret");
    }
    let plan = plan(&world);
    tracing::debug!(
        install = %install.name_any(),
        namespace = ?install.namespace(),
        phase = ?plan.status.phase,
        pods = world.pods.len(),
        "planned"
    );
    match plan.children {
        ChildrenPlan::Keep => {}
        ChildrenPlan::Apply(ref children) => apply::children(&ctx, children).await?,
        ChildrenPlan::RemoveDeployment => apply::remove_deployment(&ctx, &install).await?,
    }
    apply::status(&ctx, &ctx.recent.installs, &*install, &plan.status).await?;
    if let Some(transition) = &plan.transition {
        ctx.events
            .publish(&install, transition, ctx.clock.now())
            .await;
    }
    Ok(Action::requeue(plan.requeue))
}

// ---------------------------------------------------------------------------------------------
// credentials (seed 003)

/// The install's credentials Secret: created when missing (never overwritten), and made anew
/// (new `client_secret`, every refresh token revoked) when the install's `rotate-credentials`
/// annotation differs from the one recorded on the Secret. A GET when nothing changes; the
/// replace carries the resourceVersion, so a concurrent refresh-token write is not lost silently
/// (409, retried by the next reconcile).
pub async fn ensure_credentials(
    client: &kube::Client,
    install: &PluginInstall,
    plugin: &str,
) -> Result<Secret, Error> {
    use kube::api::PostParams;
    let namespace = install.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let name = names::credentials_secret_name(&install.name_any());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let wanted = names::credentials_rotation(install);
    match with_timeout(api.get_opt(&name)).await? {
        None => {
            let secret = build::credentials_secret(install, plugin, &random::secret()?);
            match with_timeout(api.create(&params, &secret)).await {
                Ok(created) => {
                    tracing::info!(install = %install.name_any(), %namespace, "credentials created");
                    Ok(created)
                }
                Err(err) if err.is_conflict() => Ok(with_timeout(api.get(&name)).await?),
                Err(err) => Err(err.into()),
            }
        }
        Some(existing)
            if existing
                .annotations()
                .get(credentials::ROTATION_ANNOTATION)
                .map_or("", String::as_str)
                != wanted =>
        {
            let mut secret = build::credentials_secret(install, plugin, &random::secret()?);
            secret.metadata.resource_version = existing.metadata.resource_version.clone();
            let replaced = with_timeout(api.replace(&name, &params, &secret)).await?;
            tracing::info!(install = %install.name_any(), %namespace, "credentials rotated; refresh tokens revoked");
            Ok(replaced)
        }
        Some(existing) => Ok(existing),
    }
}

// ---------------------------------------------------------------------------------------------
// fetch

async fn fetch<'a>(install: &'a PluginInstall, ctx: &Context) -> Result<World<'a>, Error> {
    let namespace = install.namespace().unwrap_or_default();
    let name = install.name_any();
    let plugin = ctx.caches.plugin_of(install, &ctx.catalog_namespace);
    let versions = match &plugin {
        Ok(p) => ctx.caches.versions_of_plugin(p),
        Err(_) => Vec::new(),
    };
    let deployment = cache::get(&ctx.caches.deployments, &namespace, &name);
    let pods = cache::select(&ctx.caches.pods, |p| {
        cache::in_namespace(p, &namespace) && p.labels().get(labels::INSTALL) == Some(&name)
    });
    let secret_config = if install.spec.active {
        read_config_secrets(ctx, install).await?
    } else {
        Ok(Map::new())
    };
    let external_health = match &plugin {
        Ok(p) if install.spec.active && p.spec.connection.mode == ConnectionMode::External => {
            match p.spec.connection.endpoint.as_deref() {
                Some(endpoint) => Some(ctx.health_checker.check(endpoint).await),
                None => None,
            }
        }
        _ => None,
    };
    Ok(World {
        install,
        plugin,
        versions,
        deployment,
        pods,
        secret_config,
        external_health,
        now: ctx.clock.now(),
    })
}

/// Reads the `configFrom` Secrets. A missing Secret is a config error (unless optional); an
/// API failure is transient.
async fn read_config_secrets(
    ctx: &Context,
    install: &PluginInstall,
) -> Result<Result<Map<String, Value>, FieldError>, Error> {
    let mut merged = Map::new();
    if install.spec.config_from.is_empty() {
        return Ok(Ok(merged));
    }
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &install.namespace().unwrap_or_default());
    for (index, source) in install.spec.config_from.iter().enumerate() {
        let secret = with_timeout(api.get_opt(&source.name)).await?;
        let optional = source.optional.unwrap_or(false);
        let Some(secret) = secret else {
            if optional {
                continue;
            }
            return Ok(Err(FieldError::new(
                format!("spec.configFrom[{index}].name"),
                format!("Secret {} not found", source.name),
            )));
        };
        let data = secret.data.unwrap_or_default();
        for (key, value) in &data {
            if !source.keys.is_empty() && !source.keys.contains(key) {
                continue;
            }
            let text = String::from_utf8_lossy(&value.0).into_owned();
            merged.insert(key.clone(), Value::String(text));
        }
        if let Some(missing) = source
            .keys
            .iter()
            .find(|k| !data.contains_key(*k))
            .filter(|_| !optional)
        {
            return Ok(Err(FieldError::new(
                format!("spec.configFrom[{index}].keys"),
                format!("Secret {} has no key {missing}", source.name),
            )));
        }
    }
    Ok(Ok(merged))
}

// ---------------------------------------------------------------------------------------------
// plan

/// Decides everything for one install. Pure.
pub fn plan(world: &World<'_>) -> Plan {
    let install = world.install;
    let old = install.status.clone().unwrap_or_default();
    let generation = install.meta().generation;
    let spec_changed = generation.is_some() && generation != old.observed_generation;
    let mut status = old.clone();
    status.observed_generation = generation;
    // A spec change ends Error, and so does the fix of what the spec referred to (a Plugin,
    // version or Secret that appears later): only runtime failures keep an install in Error.
    let input_error = old.phase == Some(Phase::Error)
        && old
            .last_failure
            .as_ref()
            .is_some_and(|f| is_input_error(&f.reason));
    let previous = if spec_changed || input_error {
        None
    } else {
        old.phase
    };
    let now = Time(world.now);

    // A spec that names a failed version exactly (again) retries it.
    if spec_changed
        && let Ok(VersionSelector::Exact(exact)) = VersionSelector::parse(&install.spec.version)
    {
        status.failed_versions.retain(|f| f != &exact.to_string());
    }

    let mut outcome = Outcome::new(&mut status, previous, old.phase, now.clone(), generation);

    if !install.spec.active {
        outcome.inactive();
        return outcome.finish(ChildrenPlan::RemoveDeployment, RESYNC);
    }
    if let Err(errors) = validate::validate_install(&install.spec) {
        outcome.error(reason::INVALID_SPEC, &validate::join_errors(&errors), None);
        return outcome.finish(ChildrenPlan::Keep, RESYNC);
    }
    let plugin = match &world.plugin {
        Ok(plugin) => plugin,
        Err(refusal) => {
            outcome.error(refusal.reason, &refusal.message, None);
            return outcome.finish(ChildrenPlan::Keep, RESYNC);
        }
    };
    if let Err(errors) = validate::validate_plugin(&plugin.spec) {
        outcome.error(
            reason::INVALID_SPEC,
            &format!(
                "Plugin {}: {}",
                plugin.name_any(),
                validate::join_errors(&errors)
            ),
            None,
        );
        return outcome.finish(ChildrenPlan::Keep, RESYNC);
    }

    if plugin.spec.connection.mode == ConnectionMode::External {
        return plan_external(outcome, plugin, world.external_health.as_ref());
    }
    plan_supervised(outcome, world, plugin)
}

fn plan_external(
    mut outcome: Outcome<'_>,
    plugin: &Plugin,
    health: Option<&Result<(), String>>,
) -> Plan {
    outcome.status.endpoint = plugin.spec.connection.endpoint.clone();
    outcome.status.target_version = None;
    outcome.config_valid(true, reason::CONFIG_VALID, "config is valid");
    match health {
        Some(Ok(())) => {
            outcome.phase(
                Phase::Active,
                "the external endpoint answers its health check",
            );
            outcome.finish(ChildrenPlan::RemoveDeployment, EXTERNAL_RECHECK_ACTIVE)
        }
        Some(Err(message)) => {
            outcome.phase(
                Phase::Connecting,
                &format!("waiting for the external endpoint: {message}"),
            );
            outcome.finish(ChildrenPlan::RemoveDeployment, EXTERNAL_RECHECK_CONNECTING)
        }
        None => {
            outcome.phase(Phase::Connecting, "waiting for the external endpoint");
            outcome.finish(ChildrenPlan::RemoveDeployment, EXTERNAL_RECHECK_CONNECTING)
        }
    }
}

fn plan_supervised(mut outcome: Outcome<'_>, world: &World<'_>, plugin: &Plugin) -> Plan {
    let install = world.install;
    let candidates = candidates(&world.versions);
    let selector = match VersionSelector::parse(&install.spec.version) {
        Ok(selector) => selector,
        Err(message) => {
            outcome.error(
                reason::INVALID_SPEC,
                &format!("spec.version: {message}"),
                None,
            );
            return outcome.finish(ChildrenPlan::Keep, RESYNC);
        }
    };
    let approved = install
        .spec
        .approved_version
        .as_deref()
        .and_then(|v| Version::parse(v).ok());
    let running = outcome
        .status
        .version
        .as_deref()
        .and_then(|v| Version::parse(v).ok());
    if outcome.status.version.is_none() && pending_versions(&world.versions) {
        // A first install waits until every version is decided, so a Manual install does not
        // start on a version that is about to be superseded.
        outcome.phase(
            Phase::Starting,
            "waiting for the plugin's versions to be accepted",
        );
        return outcome.finish(ChildrenPlan::Keep, PENDING_RECHECK);
    }
    let mut resolution = match resolve_target(
        &outcome,
        &selector,
        install,
        approved.as_ref(),
        running.as_ref(),
        &candidates,
    ) {
        Ok(resolution) => resolution,
        Err(_) if pending_versions(&world.versions) => {
            outcome.phase(
                Phase::Starting,
                "waiting for the plugin's versions to be accepted",
            );
            return outcome.finish(ChildrenPlan::Keep, PENDING_RECHECK);
        }
        Err(err) => {
            let reason = match err {
                resolve::ResolveError::NoMatch(_) => reason::NO_MATCHING_VERSION,
                _ => reason::VERSION_NOT_FOUND,
            };
            outcome.error(reason, &format!("spec.version: {err}"), None);
            return outcome.finish(ChildrenPlan::Keep, RESYNC);
        }
    };

    // Build what the target needs; an invalid version or config changes nothing that runs.
    let built = match build_for(
        world,
        plugin,
        &resolution.target,
        outcome.status.restarts,
        &mut outcome,
    ) {
        Some(children) => children,
        None => return outcome.finish(ChildrenPlan::Keep, RESYNC),
    };
    let mut children = built;

    let deployment_view = world
        .deployment
        .as_deref()
        .map(|d| deployment_view(d, &children.template_hash));
    let pods = pod_views(&world.pods, &children.template_hash);
    let report = reported_failure(install);
    let active_since = conditions::find_condition(&outcome.status.conditions, conditions::READY)
        .filter(|c| ConditionStatus::of(c) == ConditionStatus::True)
        .map(|c| c.last_transition_time.0);
    let observation = Observation {
        previous: outcome.previous,
        active_since,
        deployment: deployment_view.as_ref(),
        pods: &pods,
        reported_failure: report.as_ref(),
    };
    let health = phase::health(&observation);
    let decision = phase::decide(outcome.previous, health.clone());
    let target = resolution.target.to_string();
    if outcome.status.version.as_deref() != Some(target.as_str()) {
        outcome.begin_rollout(&target);
    }

    match decision.action {
        phase::Action::None => {}
        phase::Action::Restart(failure) => {
            outcome.record_failure(&failure);
            outcome.status.restarts += 1;
            match build_for(
                world,
                plugin,
                &resolution.target,
                outcome.status.restarts,
                &mut outcome,
            ) {
                Some(rebuilt) => children = rebuilt,
                None => return outcome.finish(ChildrenPlan::Keep, RESYNC),
            }
            outcome.phase(
                Phase::Restarting,
                &format!("{}; restarting the plugin once", failure.message),
            );
            return outcome.finish(ChildrenPlan::Apply(Box::new(children)), IN_PROGRESS_RECHECK);
        }
        phase::Action::Fail(failure) => {
            let upgrade_of = outcome
                .status
                .version
                .clone()
                .filter(|running| *running != target);
            if let Some(running) = upgrade_of {
                // A failed upgrade: remember the version and go back to the one that ran.
                outcome.record_failure(&failure);
                outcome.end_rollout(&target, RolloutOutcome::Failed);
                outcome.status.failed_versions.push(target.clone());
                let failed: Vec<Version> = outcome
                    .status
                    .failed_versions
                    .iter()
                    .filter_map(|v| Version::parse(v).ok())
                    .collect();
                let running_version = Version::parse(&running).ok();
                let request = resolve::Request {
                    selector: &selector,
                    mode: install.spec.upgrade_mode,
                    approved: approved.as_ref(),
                    running: running_version.as_ref(),
                    failed: &failed,
                };
                resolution = match resolve::resolve(&request, &candidates) {
                    Ok(r) => r,
                    Err(_) => Resolution {
                        target: Version::parse(&running).unwrap_or(resolution.target),
                        available: None,
                    },
                };
                match build_for(
                    world,
                    plugin,
                    &resolution.target,
                    outcome.status.restarts,
                    &mut outcome,
                ) {
                    Some(rebuilt) => children = rebuilt,
                    None => return outcome.finish(ChildrenPlan::Keep, RESYNC),
                }
                outcome.status.target_version = None;
                outcome.set_available(&resolution, install.spec.upgrade_mode);
                outcome.degraded(
                    true,
                    reason::ROLLED_BACK,
                    &format!(
                        "version {target} failed ({}): {}; reverted to {}",
                        failure.reason, failure.message, resolution.target
                    ),
                );
                outcome.phase_with_reason(
                    Phase::Starting,
                    reason::ROLLED_BACK,
                    &format!(
                        "rollout of {target} failed; reverting to {}",
                        resolution.target
                    ),
                );
                return outcome
                    .finish(ChildrenPlan::Apply(Box::new(children)), IN_PROGRESS_RECHECK);
            }
            outcome.end_rollout(&target, RolloutOutcome::Failed);
            outcome.error(
                failure.reason,
                &failure.message,
                failure.reported_by.as_deref(),
            );
            return outcome.finish(ChildrenPlan::Apply(Box::new(children)), RESYNC);
        }
    }

    outcome.set_available(&resolution, install.spec.upgrade_mode);
    outcome.status.endpoint = Some(names::service_endpoint(
        &install.name_any(),
        &install.namespace().unwrap_or_default(),
        execution_port(world, &target),
    ));
    let requeue = match decision.phase {
        Phase::Active => {
            outcome.status.version = Some(target.clone());
            outcome.status.target_version = None;
            outcome.end_rollout(&target, RolloutOutcome::Succeeded);
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
        Phase::Error => {
            // Error lasts until the spec changes or the plugin turns Active by itself.
            RESYNC
        }
        other => {
            let message = match (&health, other) {
                (_, Phase::Restarting) => "restarting the plugin".to_owned(),
                (_, Phase::Connecting) => {
                    format!("version {target} is running; waiting for readiness")
                }
                _ => format!("starting version {target}"),
            };
            outcome.phase(other, &message);
            IN_PROGRESS_RECHECK
        }
    };
    outcome.finish(ChildrenPlan::Apply(Box::new(children)), requeue)
}

/// Failures of what the spec names (as opposed to the plugin failing at run time).
fn is_input_error(reason: &str) -> bool {
    [
        reason::INVALID_SPEC,
        reason::PLUGIN_NOT_FOUND,
        reason::PLUGIN_NOT_INSTALLABLE,
        reason::VERSION_NOT_FOUND,
        reason::NO_MATCHING_VERSION,
        reason::UNSUPPORTED_EXECUTION,
        reason::CONFIG_INVALID,
        reason::SECRET_NOT_FOUND,
    ]
    .contains(&reason)
}

/// Versions whose acceptance the operator has not decided yet (just created or changed).
fn pending_versions(versions: &[Arc<PluginVersion>]) -> bool {
    versions.iter().any(|v| is_pending(v))
}

fn resolve_target(
    outcome: &Outcome<'_>,
    selector: &VersionSelector,
    install: &PluginInstall,
    approved: Option<&Version>,
    running: Option<&Version>,
    candidates: &[Candidate],
) -> Result<Resolution, resolve::ResolveError> {
    let failed: Vec<Version> = outcome
        .status
        .failed_versions
        .iter()
        .filter_map(|v| Version::parse(v).ok())
        .collect();
    let request = resolve::Request {
        selector,
        mode: install.spec.upgrade_mode,
        approved,
        running,
        failed: &failed,
    };
    resolve::resolve(&request, candidates)
}

fn find_version<'a>(world: &'a World<'_>, version: &str) -> Option<&'a PluginVersion> {
    world
        .versions
        .iter()
        .map(|v| v.as_ref())
        .find(|v| Version::parse(&v.spec.version).is_ok_and(|p| p.to_string() == version))
}

fn execution_port(world: &World<'_>, version: &str) -> i32 {
    find_version(world, version)
        .and_then(|v| v.spec.execution.as_ref())
        .map_or(crate::resources::plugin_version::DEFAULT_PORT, |e| e.port)
}

/// Builds the children for `target`, or records why it cannot (unsupported execution, invalid
/// config) in the outcome.
fn build_for(
    world: &World<'_>,
    plugin: &Plugin,
    target: &Version,
    restarts: i32,
    outcome: &mut Outcome<'_>,
) -> Option<build::Children> {
    let install = world.install;
    let target_text = target.to_string();
    let version = find_version(world, &target_text)?;
    let execution = match &version.spec.execution {
        Some(e)
            if e.execution_type == crate::resources::ExecutionType::Container
                && e.image.as_deref().is_some_and(|i| !i.is_empty()) =>
        {
            e
        }
        Some(e) => {
            outcome.error(
                reason::UNSUPPORTED_EXECUTION,
                &format!("version {target_text}: execution.type {:?} cannot be run by this operator (only Container with an image)", e.execution_type),
                None,
            );
            return None;
        }
        None => {
            outcome.error(
                reason::UNSUPPORTED_EXECUTION,
                &format!("version {target_text} has no execution to run"),
                None,
            );
            return None;
        }
    };
    let config = match effective_config(world, version) {
        Ok(config) => config,
        Err((reason, message)) => {
            outcome.config_valid(false, reason, &message);
            outcome.error(reason, &message, None);
            return None;
        }
    };
    outcome.config_valid(
        true,
        reason::CONFIG_VALID,
        "config satisfies the version's configSchema",
    );
    Some(build::children(&build::Inputs {
        install,
        plugin_name: &plugin.name_any(),
        version: &target_text,
        execution,
        config: &config,
        restarts,
        replicas: install.spec.replicas,
    }))
}

/// The install's config with the schema's defaults, validated together with the Secret values.
/// Returns the config to store in the ConfigMap (without Secret values).
fn effective_config(
    world: &World<'_>,
    version: &PluginVersion,
) -> Result<Value, (&'static str, String)> {
    let secrets = world
        .secret_config
        .clone()
        .map_err(|e| (reason::SECRET_NOT_FOUND, e.to_string()))?;
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
        .map_err(|e| (reason::CONFIG_INVALID, e.to_string()))?;
    validate::validate_config(&validator, &with_secrets)
        .map_err(|errors| (reason::CONFIG_INVALID, validate::join_errors(&errors)))?;
    Ok(config)
}

fn deployment_view(deployment: &Deployment, desired_template: &str) -> DeploymentView {
    let spec = deployment.spec.as_ref();
    let status = deployment.status.clone().unwrap_or_default();
    let template_label = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(labels::TEMPLATE));
    let generation = deployment.meta().generation.unwrap_or(0);
    DeploymentView {
        has_desired_template: template_label.map(String::as_str) == Some(desired_template),
        observed: status.observed_generation.unwrap_or(0) >= generation,
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        status_replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        deadline_exceeded: status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }),
    }
}

fn pod_views(pods: &[Arc<Pod>], desired_template: &str) -> Vec<PodView> {
    pods.iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter(|p| p.labels().get(labels::TEMPLATE).map(String::as_str) == Some(desired_template))
        .map(|p| pod_view(p))
        .collect()
}

fn pod_view(pod: &Pod) -> PodView {
    let status = pod.status.clone().unwrap_or_default();
    let containers = status.container_statuses.unwrap_or_default();
    let expected = pod.spec.as_ref().map_or(1, |s| s.containers.len());
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let waiting = containers
        .iter()
        .find_map(|c| c.state.as_ref().and_then(|s| s.waiting.as_ref()));
    PodView {
        name: pod.name_any(),
        ready,
        running: containers.len() >= expected
            && containers
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())),
        waiting_reason: waiting.and_then(|w| w.reason.clone()),
        waiting_message: waiting.and_then(|w| w.message.clone()),
        last_termination: containers
            .iter()
            .filter_map(|c| {
                c.last_state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .as_ref()
                    .map(|t| t.0)
            })
            .max(),
        restart_count: containers.iter().map(|c| c.restart_count).sum(),
    }
}

fn reported_failure(install: &PluginInstall) -> Option<ReportedFailure> {
    let raw = install.annotations().get(annotations::REPORTED_FAILURE)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Report {
        reported_by: String,
        at: String,
        #[serde(default)]
        message: String,
    }
    let report: Report = serde_json::from_str(raw).ok()?;
    let at = report.at.parse::<Timestamp>().ok()?;
    let message = if report.message.is_empty() {
        format!("failure reported by {}", report.reported_by)
    } else {
        report.message
    };
    Some(ReportedFailure {
        reported_by: report.reported_by,
        at,
        message,
    })
}

// ---------------------------------------------------------------------------------------------
// status bookkeeping

/// Collects the status changes of one plan.
struct Outcome<'s> {
    status: &'s mut PluginInstallStatus,
    /// The phase the lifecycle continues from (`None` after a spec change).
    previous: Option<Phase>,
    /// The phase the status had: transitions are announced from it.
    old_phase: Option<Phase>,
    now: Time,
    generation: Option<i64>,
}

impl<'s> Outcome<'s> {
    fn new(
        status: &'s mut PluginInstallStatus,
        previous: Option<Phase>,
        old_phase: Option<Phase>,
        now: Time,
        generation: Option<i64>,
    ) -> Self {
        Self {
            status,
            previous,
            old_phase,
            now,
            generation,
        }
    }

    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        conditions::set_condition(
            &mut self.status.conditions,
            NewCondition::new(type_, ConditionStatus::from(status), reason, message)
                .observed_generation(self.generation),
            self.now.clone(),
        );
    }

    fn config_valid(&mut self, valid: bool, reason: &str, message: &str) {
        self.condition(conditions::CONFIG_VALID, valid, reason, message);
    }

    fn degraded(&mut self, degraded: bool, reason: &str, message: &str) {
        self.condition(conditions::DEGRADED, degraded, reason, message);
    }

    fn phase(&mut self, phase: Phase, message: &str) {
        self.phase_with_reason(phase, phase.as_str(), message);
    }

    /// Sets the phase and the Ready/Progressing conditions that follow from it.
    fn phase_with_reason(&mut self, phase: Phase, reason: &str, message: &str) {
        if phase == Phase::Active && self.status.phase != Some(Phase::Active) {
            self.status.activated_at = Some(self.now.clone());
        }
        if phase == Phase::Inactive && self.status.phase != Some(Phase::Inactive) {
            self.status.deactivated_at = Some(self.now.clone());
        }
        self.status.phase = Some(phase);
        let progressing = matches!(
            phase,
            Phase::Starting | Phase::Connecting | Phase::Restarting
        );
        self.condition(conditions::READY, phase == Phase::Active, reason, message);
        self.condition(conditions::PROGRESSING, progressing, reason, message);
    }

    fn record_failure(&mut self, failure: &phase::Failure) {
        let reported_by = failure
            .reported_by
            .clone()
            .unwrap_or_else(|| "operator".to_owned());
        let same = self.status.last_failure.as_ref().is_some_and(|f| {
            f.reason == failure.reason
                && f.message == failure.message
                && f.reported_by == reported_by
        });
        if !same {
            self.status.last_failure = Some(Failure {
                reason: failure.reason.to_owned(),
                message: failure.message.clone(),
                time: self.now.clone(),
                reported_by,
            });
        }
    }

    /// Error: recorded in lastFailure and the conditions; nothing more is restarted.
    fn error(&mut self, reason: &'static str, message: &str, reported_by: Option<&str>) {
        let failure = phase::Failure {
            reason,
            message: message.to_owned(),
            reported_by: reported_by.map(str::to_owned),
        };
        self.record_failure(&failure);
        self.degraded(true, reason, message);
        self.phase_with_reason(Phase::Error, reason, message);
    }

    fn inactive(&mut self) {
        self.status.target_version = None;
        self.degraded(false, reason::INACTIVE, "the install is inactive");
        self.phase(
            Phase::Inactive,
            "spec.active is false: the plugin is stopped",
        );
    }

    fn set_available(&mut self, resolution: &Resolution, mode: crate::resources::UpgradeMode) {
        self.status.available_version = resolution.available.as_ref().map(ToString::to_string);
        match &resolution.available {
            Some(available) => {
                let (reason, message) = match mode {
                    crate::resources::UpgradeMode::Manual => (
                        reason::AWAITING_APPROVAL,
                        format!(
                            "version {available} is available; set spec.approvedVersion to {available} to roll it out"
                        ),
                    ),
                    crate::resources::UpgradeMode::Auto => (
                        reason::NEWER_VERSION,
                        format!("version {available} is available"),
                    ),
                };
                self.condition(conditions::UPGRADE_AVAILABLE, true, reason, &message);
            }
            None => self.condition(
                conditions::UPGRADE_AVAILABLE,
                false,
                reason::UP_TO_DATE,
                "no newer version in range",
            ),
        }
    }

    /// Marks `target` as being rolled out (once per rollout).
    fn begin_rollout(&mut self, target: &str) {
        if self.status.target_version.as_deref() == Some(target) {
            return;
        }
        if let Some(previous) = self.status.target_version.clone() {
            self.end_rollout(&previous, RolloutOutcome::Superseded);
        }
        self.status.target_version = Some(target.to_owned());
        self.status.push_history(HistoryEntry {
            version: target.to_owned(),
            from: self.now.clone(),
            to: None,
            outcome: RolloutOutcome::Progressing,
        });
    }

    fn end_rollout(&mut self, version: &str, outcome: RolloutOutcome) {
        if let Some(entry) = self
            .status
            .history
            .iter_mut()
            .rev()
            .find(|e| e.outcome == RolloutOutcome::Progressing && e.version == version)
        {
            entry.outcome = outcome;
            entry.to = Some(self.now.clone());
        }
    }

    fn finish(self, children: ChildrenPlan, requeue: Duration) -> Plan {
        let transition = match (self.old_phase, self.status.phase) {
            (before, Some(after)) if before != Some(after) => {
                Some(Transition::new(before, after, self.status))
            }
            _ => None,
        };
        Plan {
            children,
            status: self.status.clone(),
            transition,
            requeue,
        }
    }
}
