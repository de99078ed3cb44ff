//! Status of Plugins (`latestVersion`, `versions`, `installs`, `Accepted`) and PluginVersions
//! (`Accepted`, the fingerprint that keeps a formal version immutable). Both are looked at again
//! every [`RESYNC`] (as settled installs are), so a change whose trigger was lost still shows.
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt, runtime::controller::Action};
use semver::Version;

use super::{Context, Error, apply, install::RESYNC};
use crate::{
    lifecycle::{access, versions},
    resources::{
        NewCondition, Plugin, PluginInstall, PluginStatus, PluginVersion, PluginVersionStatus,
        conditions::{self, ConditionStatus, reason},
        validate::{self, FieldError},
    },
    runtime::cache,
};

pub async fn reconcile_plugin(plugin: Arc<Plugin>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.is_leader() || plugin.meta().deletion_timestamp.is_some() {
        ctx.recent.plugins.forget(&plugin);
        return Ok(Action::await_change());
    }
    let plugin = ctx.recent.plugins.fresh(plugin);
    let versions = ctx.caches.versions_of_plugin(&plugin);
    let installs = ctx
        .caches
        .installs_of(&plugin.namespace().unwrap_or_default(), &plugin.name_any());
    let status = plugin_status(
        &plugin,
        &versions,
        &installs,
        &ctx.catalog_namespace,
        Time(ctx.clock.now_in_seconds()),
    );
    apply::status(&ctx, &ctx.recent.plugins, &*plugin, &status).await?;
    Ok(ctx.requeue(RESYNC))
}

/// A Plugin's status from its versions and the installs that name it. Pure.
pub fn plugin_status(
    plugin: &Plugin,
    versions: &[Arc<PluginVersion>],
    installs: &[Arc<PluginInstall>],
    catalog: &str,
    now: Time,
) -> PluginStatus {
    let namespace = plugin.namespace().unwrap_or_default();
    let name = plugin.name_any();
    let mut all: Vec<(Version, bool)> = versions
        .iter()
        .filter_map(|v| {
            v.spec
                .number()
                .map(|parsed| (parsed, v.spec.is_formal() && versions::is_accepted(v)))
        })
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0));
    all.dedup_by(|a, b| a.0 == b.0);
    let install_count = installs
        .iter()
        .filter(|i| access::uses_plugin(i, &namespace, &name, catalog))
        .count();
    let mut status = plugin.status.clone().unwrap_or_default();
    status.latest_version = all
        .iter()
        .find(|(_, formal)| *formal)
        .map(|(v, _)| v.to_string());
    status.versions = all.iter().map(|(v, _)| v.to_string()).collect();
    // Saturates: two billion installs of one plugin read as i32::MAX.
    status.installs = i32::try_from(install_count).unwrap_or(i32::MAX);
    status.observed_generation = plugin.meta().generation;
    let accepted = validate::validate_plugin(&plugin.spec);
    set(
        &mut status.conditions,
        accepted_condition(
            &accepted,
            "the plugin's spec is valid",
            reason::INVALID_SPEC,
        ),
        plugin.meta().generation,
        now,
    );
    status
}

pub async fn reconcile_version(
    version: Arc<PluginVersion>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let version = ctx.recent.versions.fresh(version);
    let namespace = version.namespace().unwrap_or_default();
    let installs = ctx.caches.installs_of(&namespace, &version.spec.plugin);
    let holders = holders(&version, &installs, &ctx.catalog_namespace);
    let deleting = version.meta().deletion_timestamp.is_some();
    let has_finalizer = version.finalizers().iter().any(|f| f == IN_USE_FINALIZER);
    // Every version carries the finalizer, so that one cannot be deleted in the moment an install
    // starts to use it; it is dropped once a deleted version is used by nothing.
    match (deleting, holders.is_empty(), has_finalizer) {
        (false, _, false) => apply::finalizer(&ctx, &*version, IN_USE_FINALIZER, true).await?,
        (true, true, true) => {
            apply::finalizer(&ctx, &*version, IN_USE_FINALIZER, false).await?;
            ctx.recent.versions.forget(&version);
            return Ok(Action::await_change());
        }
        (true, _, false) => return Ok(Action::await_change()),
        _ => {}
    }
    let plugin_exists = cache::get(&ctx.caches.plugins, &namespace, &version.spec.plugin).is_some();
    let siblings = ctx.caches.versions_of(&namespace, &version.spec.plugin);
    let now = Time(ctx.clock.now_in_seconds());
    let mut status = version_status(&version, plugin_exists, &siblings, now.clone());
    set(
        &mut status.conditions,
        in_use_condition(&holders, deleting),
        version.meta().generation,
        now,
    );
    apply::status(&ctx, &ctx.recent.versions, &*version, &status).await?;
    Ok(ctx.requeue(RESYNC))
}

/// The finalizer that keeps a PluginVersion while installs use it.
pub const IN_USE_FINALIZER: &str = "plugin-operator.dev/in-use";

/// Installs (`namespace/name`) that run a version or roll out to it, sorted.
pub fn holders(
    version: &PluginVersion,
    installs: &[Arc<PluginInstall>],
    catalog: &str,
) -> Vec<String> {
    let namespace = version.namespace().unwrap_or_default();
    let number = version.spec.number();
    let mut held: Vec<String> = installs
        .iter()
        .filter(|i| access::uses_plugin(i, &namespace, &version.spec.plugin, catalog))
        .filter(|i| {
            let status = i.status.as_ref();
            let uses = |v: Option<Version>| v.is_some() && v == number;
            status.is_some_and(|s| uses(s.running()) || uses(s.rolling_out()))
        })
        .map(|i| format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any()))
        .collect();
    held.sort();
    held
}

fn in_use_condition(holders: &[String], deleting: bool) -> NewCondition {
    if holders.is_empty() {
        return NewCondition::new(
            conditions::IN_USE,
            false,
            reason::UNUSED,
            "no install runs this version",
        );
    }
    let list = holders.join(", ");
    let message = if deleting {
        format!("deletion waits until no install uses this version; used by {list}")
    } else {
        format!("used by {list}")
    };
    NewCondition::new(conditions::IN_USE, true, reason::RUNNING, message)
}

/// A PluginVersion's status. Pure. Accepted when its Plugin exists, its number is valid and
/// unique (the oldest object with a number keeps it), its configSchema compiles and, once it was
/// accepted as formal, its spec is unchanged.
pub fn version_status(
    version: &PluginVersion,
    plugin_exists: bool,
    siblings: &[Arc<PluginVersion>],
    now: Time,
) -> PluginVersionStatus {
    let mut status = version.status.clone().unwrap_or_default();
    let mut result =
        validate::validate_version(&version.spec, status.accepted_spec_hash.as_deref());
    let mut reason_override = None;
    if !plugin_exists {
        push(
            &mut result,
            FieldError::new(
                "spec.plugin",
                format!(
                    "there is no Plugin {} in this namespace",
                    version.spec.plugin
                ),
            ),
        );
        reason_override = Some(reason::PLUGIN_NOT_FOUND);
    }
    if let Some(older) = siblings
        .iter()
        .find(|other| same_number(other, version) && is_older(other, version))
    {
        push(
            &mut result,
            FieldError::new(
                "spec.version",
                format!(
                    "version {} of plugin {} is already defined by PluginVersion {}",
                    version.spec.version,
                    version.spec.plugin,
                    older.name_any()
                ),
            ),
        );
        reason_override = Some(reason::DUPLICATE_VERSION);
    }
    let accepted = result.is_ok();
    if accepted && version.spec.is_formal() && status.accepted_spec_hash.is_none() {
        status.accepted_spec_hash = Some(validate::spec_hash(&version.spec));
    }
    let edited = status
        .accepted_spec_hash
        .as_deref()
        .is_some_and(|accepted| accepted != validate::spec_hash(&version.spec));
    let refusal = reason_override.unwrap_or(if edited {
        reason::SPEC_CHANGED
    } else {
        reason::INVALID_SPEC
    });
    let condition = accepted_condition(&result, "the version can be installed", refusal);
    status.observed_generation = version.meta().generation;
    set(
        &mut status.conditions,
        condition,
        version.meta().generation,
        now,
    );
    status
}

fn same_number(a: &PluginVersion, b: &PluginVersion) -> bool {
    a.uid() != b.uid()
        && match (a.spec.number(), b.spec.number()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
}

/// Older by creation time, then by name, so exactly one of two duplicates wins.
fn is_older(a: &PluginVersion, b: &PluginVersion) -> bool {
    let key = |v: &PluginVersion| {
        (
            v.meta().creation_timestamp.as_ref().map(|t| t.0),
            v.name_any(),
        )
    };
    key(a) < key(b)
}

fn push(result: &mut Result<(), Vec<FieldError>>, error: FieldError) {
    match result {
        Ok(()) => *result = Err(vec![error]),
        Err(errors) => errors.push(error),
    }
}

/// `Accepted`, or why not: `refusal` is the reason when the spec has errors.
fn accepted_condition(
    result: &Result<(), Vec<FieldError>>,
    ok_message: &str,
    refusal: &str,
) -> NewCondition {
    match result {
        Ok(()) => NewCondition::new(conditions::ACCEPTED, true, reason::ACCEPTED, ok_message),
        Err(errors) => NewCondition::new(
            conditions::ACCEPTED,
            ConditionStatus::False,
            refusal,
            validate::join_errors(errors),
        ),
    }
}

fn set(
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    condition: NewCondition,
    generation: Option<i64>,
    now: Time,
) {
    conditions::set_condition(conditions, condition.observed_generation(generation), now);
}
