//! `PluginVersion`: one version of one plugin (seed 004).

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `MAJOR.MINOR.PATCH`, with an optional `-prerelease` and `+build` (semantic versioning).
pub const VERSION_PATTERN: &str =
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$";

/// A Kubernetes object name (DNS subdomain).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// Port a plugin serves on when its version does not say.
pub const DEFAULT_PORT: i32 = 8080;

/// The spec of one version of a plugin. A formal version's spec never changes.
// Clippy reads the repeated `type_ = "string"` of the print columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "plugin-operator.dev",
    version = "v1alpha1",
    kind = "PluginVersion",
    namespaced,
    status = "PluginVersionStatus",
    shortname = "plgv",
    category = "plugins",
    derive = "PartialEq",
    doc = "One version of a plugin: how to run it and which configuration it takes. A formal \
           version is immutable; a draft can be edited.",
    printcolumn(name = "Plugin", type_ = "string", json_path = ".spec.plugin"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Attribution",
        type_ = "string",
        description = "formal or draft",
        json_path = ".spec.attribution"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        description = "Whether the operator accepted the version",
        json_path = r#".status.conditions[?(@.type=="Accepted")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("oldSelf.attribution != 'formal' || self == oldSelf").message(
    "the spec of a formal PluginVersion is immutable: create a new PluginVersion instead"
))]
#[serde(rename_all = "camelCase")]
pub struct PluginVersionSpec {
    /// Name of the Plugin, in the same namespace, that this is a version of.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub plugin: String,
    /// The version number: `MAJOR.MINOR.PATCH` with an optional `-prerelease` and `+build`
    /// (semantic versioning), e.g. `1.4.0`. Unique among the plugin's versions.
    #[schemars(length(max = 128), regex(pattern = VERSION_PATTERN))]
    pub version: String,
    /// What this version brings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `formal` (the default): released. Its spec can no longer change, and installs that name
    /// a range of versions can pick it. `draft`: work in progress. It can be edited, and only
    /// installs that name it exactly run it.
    #[serde(default)]
    pub attribution: VersionAttribution,
    /// `single` (the default): the plugin is one step; `multi`: it consists of several steps.
    #[serde(default)]
    pub composition: Composition,
    /// How the operator runs this version. Needed by supervised plugins, not by external ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// JSON Schema that the config of an install must satisfy, e.g. `{type: object, required:
    /// [url], properties: {url: {type: string, pattern: "^https://"}, retries: {type: integer,
    /// default: 3}}}`. Defaults it declares fill in what the install leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::resources::schema::free_form_object")]
    pub config_schema: Option<serde_json::Value>,
    /// Free-form description of the version that the plugin publishes (its manifest), shown to
    /// callers as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::resources::schema::free_form_object")]
    pub manifest: Option<serde_json::Value>,
    /// Seed 004 `plugin_execution.logic_id`: the id of the logic this version runs, as the
    /// publisher names it. Shown as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logic_id: Option<String>,
    /// Seed 004 `plugin_execution.basic_instance_id`: the publisher's id of the base instance.
    /// Shown as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_instance_id: Option<String>,
    /// Seed 004 `runtime_attribution`: where the plugin runs. When absent, `agentLess` (the
    /// operator runs it in the cluster, no agent on a host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_attribution: Option<String>,
    /// Seed 004 presentation of the input items, by configSchema property name: what a form
    /// shows beyond the schema. Shown as given.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inputs: std::collections::BTreeMap<String, InputPresentation>,
}

/// How a form presents one input item (seed 004 `input_info`); every field is shown as given.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InputPresentation {
    /// `front_data_prop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_data_prop: Option<String>,
    /// `layout_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_content: Option<String>,
    /// `extend_prop` (its `options` come from the property's `enum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_prop: Option<ExtendPropSpec>,
}

/// Seed 004 `extend_prop` of an input item.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtendPropSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_options: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_placeholder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_conditions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_conditions: Option<String>,
}

/// Seed 004 `runtime_attribution` when a version does not say.
pub const DEFAULT_RUNTIME_ATTRIBUTION: &str = "agentLess";

/// Whether a version is released (`formal`) or work in progress (`draft`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum VersionAttribution {
    #[default]
    Formal,
    Draft,
}

/// Whether a plugin is one step or several.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Composition {
    #[default]
    Single,
    Multi,
}

/// How a version runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'Container' || (has(self.image) && self.image != '')")
    .message("execution.image is required when execution.type is Container"))]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// `Container` (the default) runs `image`. `Zip`, `Shell` and `Composite` are accepted and
    /// shown, but this operator cannot run them: installs of such a version report an error.
    #[serde(rename = "type", default)]
    pub execution_type: ExecutionType,
    /// Container image, e.g. `registry.example.com/billing:1.4.0`. Required when `type` is
    /// `Container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Start command. Replaces the image's entrypoint when set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the start command (or to the image's entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Stop command, run in the container before it is stopped (a preStop hook).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_command: Vec<String>,
    /// Environment variables of the plugin's container. An install's `runtime.env` adds to them
    /// and wins on the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Port the plugin serves HTTP on (default 8080). The install's Service and endpoint point
    /// here.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path that answers with a 2xx status once the plugin is ready, e.g. `/healthz`.
    /// Without it the plugin is ready as soon as its port accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub health_path: Option<String>,
    /// Compute resources of the container. An install's `runtime.resources` replaces them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Mount a token of the install's ServiceAccount in the plugin's pods (for a plugin that
    /// calls the Kubernetes API itself). Off by default: the pods get no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

fn default_port() -> i32 {
    DEFAULT_PORT
}

/// How a version is packaged. Only `Container` can be run by this operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExecutionType {
    #[default]
    Container,
    Zip,
    Shell,
    Composite,
}

impl Default for Execution {
    /// A Container execution on the default port, without an image.
    fn default() -> Self {
        Self {
            execution_type: ExecutionType::default(),
            image: None,
            command: Vec::new(),
            args: Vec::new(),
            stop_command: Vec::new(),
            env: Vec::new(),
            port: DEFAULT_PORT,
            health_path: None,
            resources: None,
            automount_service_account_token: None,
        }
    }
}

/// What the operator observed about a version.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginVersionStatus {
    /// `Accepted`: the Plugin exists, the version number is valid and unique, and the
    /// configSchema compiles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::resources::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Fingerprint (SHA-256) of the spec of a formal version when the operator accepted it. A
    /// formal version whose spec no longer matches it is refused, also on clusters that cannot
    /// enforce the immutability when the object is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_spec_hash: Option<String>,
}

impl PluginVersionSpec {
    /// Whether this version is released (formal) rather than a draft.
    pub fn is_formal(&self) -> bool {
        self.attribution == VersionAttribution::Formal
    }

    /// The version's number, or `None` when `version` is not semver (such a version is refused
    /// by its controller and never runs).
    pub fn number(&self) -> Option<semver::Version> {
        semver::Version::parse(&self.version).ok()
    }
}
