//! `PluginInstall`: one installation of a plugin in a tenant's namespace (seed 000, 002, 003).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::plugin_version::VERSION_PATTERN;

/// The version range an install follows when it names none: every version.
pub const ANY_VERSION: &str = "*";
/// Seconds a start or rollout may take when the install does not say.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 300;
/// How many entries `status.history` keeps.
pub const HISTORY_LIMIT: usize = 10;

/// Which plugin to run, in which versions, whether it runs and with what config.
// Clippy reads the repeated `type_ = "string"` of the print columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "plugin-operator.dev",
    version = "v1alpha1",
    kind = "PluginInstall",
    namespaced,
    status = "PluginInstallStatus",
    shortname = "plgi",
    category = "plugins",
    derive = "PartialEq",
    doc = "One installation of a plugin in a namespace. The operator runs it (or, for an \
           external plugin, checks its endpoint), keeps it within its version range and reports \
           where to reach it.",
    printcolumn(
        name = "Plugin",
        type_ = "string",
        description = "name, or namespace/name for a catalog Plugin",
        json_path = ".status.plugin"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        description = "Running version",
        json_path = ".status.version"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Available",
        type_ = "string",
        description = "Newer version within the range, not running yet",
        json_path = ".status.availableVersion"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginInstallSpec {
    /// The plugin to install: the name of a Plugin in this namespace, or `{name, namespace}`
    /// where namespace is this namespace or the shared catalog namespace.
    pub plugin: PluginReference,
    /// Which version to run: exact (`1.4.0`), a range (`^1.3`, `~1.4`, `>=1.2 <2`, `1.4.x`) or
    /// `*` (the default: the newest). A bare `1.4` means `1.4.x`. Ranges pick formal versions
    /// only; a draft runs only when named exactly.
    #[serde(default = "any_version")]
    #[schemars(length(min = 1, max = 256))]
    pub version: String,
    /// `Manual` (the default): a newer version in range is announced in
    /// `status.availableVersion` and rolled out once `approvedVersion` names it. `Auto`: the
    /// newest version in range is rolled out as soon as it appears.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// With `upgradeMode: Manual`: the version you approve to roll out, usually the one shown in
    /// `status.availableVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = VERSION_PATTERN))]
    pub approved_version: Option<String>,
    /// Whether the plugin runs (default true). `false` stops it and keeps its settings.
    #[serde(default = "yes")]
    pub active: bool,
    /// Configuration of the plugin. It must satisfy the configSchema of the version that runs,
    /// whose defaults fill in what is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::resources::schema::free_form_object")]
    pub config: Option<serde_json::Value>,
    /// Secrets whose keys are merged into the config as string values (for passwords and
    /// tokens). When a key is in several Secrets the last one wins; a key set in `config` wins
    /// over all of them. The values stay in the Secrets. A Secret is used only if it consents:
    /// its annotation `plugin-operator.dev/allow-installs` names this install (or is `*`), or
    /// `plugin-operator.dev/allow-plugins` names its plugin (`<plugin>` of the same namespace,
    /// or `<namespace>/<plugin>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_from: Vec<ConfigFromSecret>,
    /// Number of pods that run the plugin (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// How the plugin's pods run: resources, environment and scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<PluginRuntime>,
    /// Seconds a start or a rollout may take before it counts as failed (default 300). A failed
    /// rollout is reverted to the version that ran before.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: i32,
}

fn any_version() -> String {
    ANY_VERSION.to_owned()
}

fn yes() -> bool {
    true
}

fn one() -> i32 {
    1
}

fn default_progress_deadline() -> i32 {
    DEFAULT_PROGRESS_DEADLINE_SECONDS
}

impl PluginInstallSpec {
    /// An install of the named plugin with every default: any version, Manual upgrades, active.
    pub fn for_plugin(plugin: impl Into<PluginReference>) -> Self {
        Self {
            plugin: plugin.into(),
            version: any_version(),
            upgrade_mode: UpgradeMode::default(),
            approved_version: None,
            active: true,
            config: None,
            config_from: Vec::new(),
            replicas: 1,
            runtime: None,
            progress_deadline_seconds: DEFAULT_PROGRESS_DEADLINE_SECONDS,
        }
    }
}

/// A Plugin, named either by its name alone (same namespace) or by `{name, namespace}`.
///
/// On the wire it keeps the form it was written in. Its CRD schema cannot express "a string or
/// an object" structurally, so the API server takes any value; anything else than those two
/// forms is kept as [`PluginReference::Invalid`] so that the operator can report it
/// ([`crate::resources::validate_install`]) instead of failing to read the whole object.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginReference {
    /// `plugin: billing`: the Plugin `billing` in the install's own namespace.
    Name(String),
    /// `plugin: {name: billing, namespace: plugin-catalog}`.
    Ref(PluginRef),
    /// Neither a string nor a `{name, namespace}` object, as written.
    Invalid(serde_json::Value),
}

/// A Plugin by name and, optionally, namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Name of the Plugin.
    pub name: String,
    /// Namespace of the Plugin: the install's own (when empty) or the catalog namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl PluginReference {
    /// Name of the Plugin (empty when the reference is invalid).
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) => name,
            Self::Ref(r) => &r.name,
            Self::Invalid(_) => "",
        }
    }

    /// Namespace named by the reference, if it names one.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Name(_) | Self::Invalid(_) => None,
            Self::Ref(r) => r.namespace.as_deref().filter(|ns| !ns.is_empty()),
        }
    }

    /// Namespace of the Plugin for an install in `install_namespace`.
    pub fn namespace_or<'a>(&'a self, install_namespace: &'a str) -> &'a str {
        self.namespace().unwrap_or(install_namespace)
    }
}

impl fmt::Display for PluginReference {
    /// `name`, or `namespace/name` when a namespace is named.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.namespace() {
            Some(ns) => write!(f, "{ns}/{}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

impl From<&str> for PluginReference {
    fn from(name: &str) -> Self {
        Self::Name(name.to_owned())
    }
}

impl From<String> for PluginReference {
    fn from(name: String) -> Self {
        Self::Name(name)
    }
}

impl From<PluginRef> for PluginReference {
    fn from(r: PluginRef) -> Self {
        Self::Ref(r)
    }
}

impl Default for PluginReference {
    fn default() -> Self {
        Self::Name(String::new())
    }
}

impl Serialize for PluginReference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Name(name) => serializer.serialize_str(name),
            Self::Ref(r) => r.serialize(serializer),
            Self::Invalid(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for PluginReference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(name) => Self::Name(name),
            value @ serde_json::Value::Object(_) => match PluginRef::deserialize(&value) {
                Ok(r) => Self::Ref(r),
                Err(_) => Self::Invalid(value),
            },
            other => Self::Invalid(other),
        })
    }
}

impl JsonSchema for PluginReference {
    fn schema_name() -> Cow<'static, str> {
        "PluginReference".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Free-form: a structural schema cannot say "string or object" (every node needs one type,
    /// and `anyOf` branches may not carry types). The operator validates the shape instead.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// Whether newer versions roll out by themselves.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UpgradeMode {
    Auto,
    #[default]
    Manual,
}

/// A Secret whose keys are merged into an install's config.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFromSecret {
    /// Name of the Secret, in the install's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Secret's keys to use; all of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Whether the install may run while the Secret (or one of `keys`) is missing. Default:
    /// false, and the install reports `ConfigValid=False` until it appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// How an install's pods run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginRuntime {
    /// Compute resources of the plugin's container; replaces those of the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Environment variables added to those of the version; on the same name these win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Labels a node must have for the pods to run on it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Secrets (in the install's namespace) used to pull the version's image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Changes to the plugin container's security context. By default it meets the
    /// `restricted` Pod Security Standard (runAsNonRoot, allowPrivilegeEscalation false, every
    /// capability dropped, seccomp RuntimeDefault) and its root filesystem is read-only (with a
    /// writable `/tmp`); each field set here replaces that default, e.g.
    /// `readOnlyRootFilesystem: false`. Whether the pods are then admitted is up to the
    /// namespace's Pod Security level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

/// Where an install is in its lifecycle: `Inactive` (not running: `active` is false),
/// `Starting` (being started or rolled out, no container running yet), `Connecting`
/// (running, not ready yet), `Active` (the target version runs with every replica ready),
/// `Restarting` (an active plugin failed and is being restarted once) or `Error` (it could not
/// start, or failed again after the restart: see `lastFailure`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `active: false`: not running.
    Inactive,
    /// Accepted and being started or rolled out; no container runs yet.
    Starting,
    /// Containers run; readiness does not pass yet (external: the endpoint does not answer yet).
    Connecting,
    /// Running the target version with every replica ready.
    Active,
    /// An active plugin failed; one restart is being attempted.
    Restarting,
    /// Could not start, or failed again after a restart. See `lastFailure` and the conditions.
    Error,
}

impl Phase {
    /// The phase as written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inactive => "Inactive",
            Self::Starting => "Starting",
            Self::Connecting => "Connecting",
            Self::Active => "Active",
            Self::Restarting => "Restarting",
            Self::Error => "Error",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator observed about an install.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginInstallStatus {
    /// Where the install is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The running version: the last one that became Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The version being rolled out, while a start or an upgrade is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// The newest formal version in range that is not running (Manual upgrades wait for
    /// `approvedVersion` to name it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_version: Option<String>,
    /// URL at which the plugin is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When the install last became active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<Time>,
    /// When the install was last deactivated (`active: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<Time>,
    /// When `phase` last changed (kept while it stays the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_changed_at: Option<Time>,
    /// Restarts the operator made: one after a failure, one per retry a user asked for.
    #[serde(default)]
    pub restarts: i32,
    /// The value of the install's `plugin-operator.dev/retry` annotation the operator last
    /// answered: a new value is a request for one more try of an install in `Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_handled: Option<String>,
    /// The last failure: why, when and who reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Versions whose rollout failed; they are not rolled out again by themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_versions: Vec<String>,
    /// The last 10 rollouts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// `Ready`, `Progressing`, `Degraded`, `ConfigValid` and `UpgradeAvailable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::resources::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Plugin the install uses, as `kubectl get` shows it: `name`, or `namespace/name` for
    /// a Plugin of another namespace (the catalog). A printer column's JSONPath cannot join the
    /// two forms of `spec.plugin`, so the operator writes it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// A failure of an install.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Machine-readable cause, e.g. `ImagePullFailed`, `CrashLoop`, `ProgressDeadlineExceeded`.
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// When it was seen.
    pub time: Time,
    /// Who saw it: `operator`, or the caller that reported it (seed 000 `notify-failure`).
    pub reported_by: String,
}

/// One rollout of a version.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The version rolled out.
    pub version: String,
    /// When the rollout began.
    pub from: Time,
    /// When it ended; empty while it is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Time>,
    /// `Progressing`, `Succeeded` (it became Active), `Failed` (reverted to the version that
    /// ran before) or `Superseded` (the spec changed before it ended).
    pub outcome: RolloutOutcome,
}

/// How a rollout ended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RolloutOutcome {
    Progressing,
    Succeeded,
    Failed,
    Superseded,
}

/// The versions of a status, read. The operator writes them from parsed versions, so they read
/// back; a hand-edited one that is not semver reads as none.
fn parse_version(text: &str) -> Option<semver::Version> {
    semver::Version::parse(text).ok()
}

impl PluginInstallSpec {
    /// `approvedVersion`, read (validation refuses one that is not semver).
    pub fn approved(&self) -> Option<semver::Version> {
        self.approved_version.as_deref().and_then(parse_version)
    }
}

impl PluginInstallStatus {
    /// `version`: the running version, the last one that became Active.
    pub fn running(&self) -> Option<semver::Version> {
        self.version.as_deref().and_then(parse_version)
    }

    /// `targetVersion`: the version being rolled out.
    pub fn rolling_out(&self) -> Option<semver::Version> {
        self.target_version.as_deref().and_then(parse_version)
    }

    /// `failedVersions`, read.
    pub fn failed(&self) -> Vec<semver::Version> {
        self.failed_versions
            .iter()
            .filter_map(|v| parse_version(v))
            .collect()
    }

    /// Forgets that `version` failed (the spec names it anew).
    pub fn forget_failed(&mut self, version: &semver::Version) {
        self.failed_versions
            .retain(|v| parse_version(v).as_ref() != Some(version));
    }

    /// Appends a history entry, keeping the last [`HISTORY_LIMIT`].
    pub fn push_history(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> PluginReference {
        serde_json::from_value(value).expect("any value parses")
    }

    #[test]
    fn a_plugin_reference_is_a_name_or_name_and_namespace() {
        let by_name = parse(json!("billing"));
        assert_eq!(by_name, PluginReference::from("billing"));
        assert_eq!((by_name.name(), by_name.namespace()), ("billing", None));
        assert_eq!(by_name.namespace_or("tenant-a"), "tenant-a");
        assert_eq!(by_name.to_string(), "billing");

        let by_ref = parse(json!({"name": "billing", "namespace": "plugin-catalog"}));
        assert_eq!(
            (by_ref.name(), by_ref.namespace()),
            ("billing", Some("plugin-catalog"))
        );
        assert_eq!(by_ref.namespace_or("tenant-a"), "plugin-catalog");
        assert_eq!(by_ref.to_string(), "plugin-catalog/billing");

        let own_namespace = parse(json!({"name": "billing"}));
        assert_eq!(own_namespace.namespace(), None);
        let empty_namespace = parse(json!({"name": "billing", "namespace": ""}));
        assert_eq!(empty_namespace.namespace(), None);
    }

    #[test]
    fn a_plugin_reference_keeps_the_form_it_was_written_in() {
        for value in [
            json!("billing"),
            json!({"name": "billing"}),
            json!({"name": "billing", "namespace": "plugin-catalog"}),
            json!(42),
            json!({"nam": "typo"}),
        ] {
            let written = serde_json::to_value(parse(value.clone())).expect("serializes");
            assert_eq!(written, value);
        }
    }

    #[test]
    fn anything_else_is_kept_as_invalid() {
        for value in [
            json!(42),
            json!(["billing"]),
            json!({"nam": "typo"}),
            json!(null),
        ] {
            let parsed = parse(value.clone());
            assert_eq!(parsed, PluginReference::Invalid(value));
            assert_eq!(parsed.name(), "");
        }
    }

    #[test]
    fn an_install_with_a_bad_plugin_reference_still_parses() {
        let spec: PluginInstallSpec =
            serde_json::from_value(json!({"plugin": 7})).expect("the install parses");
        assert_eq!(spec.plugin, PluginReference::Invalid(json!(7)));
        assert_eq!(spec.version, "*");
    }

    #[test]
    fn history_keeps_the_last_ten() {
        let mut status = PluginInstallStatus::default();
        let at = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        for i in 0..12 {
            status.push_history(HistoryEntry {
                version: format!("1.{i}.0"),
                from: at.clone(),
                to: None,
                outcome: RolloutOutcome::Succeeded,
            });
        }
        assert_eq!(status.history.len(), HISTORY_LIMIT);
        assert_eq!(status.history[0].version, "1.2.0");
        assert_eq!(status.history[9].version, "1.11.0");
    }
}
