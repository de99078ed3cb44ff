//! `Plugin`: a registered plugin (seed 001, 002, 004).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the plugin is, who provides it and how it is reached.
// Clippy reads the repeated `type_ = "string"` of the print columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "plugin-operator.dev",
    version = "v1alpha1",
    kind = "Plugin",
    namespaced,
    status = "PluginStatus",
    shortname = "plg",
    category = "plugins",
    derive = "PartialEq",
    doc = "A plugin registered in a namespace: what it is, who provides it and how it is reached. \
           Its releases are PluginVersions; a PluginInstall runs it.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Latest",
        type_ = "string",
        description = "Newest formal version",
        json_path = ".status.latestVersion"
    ),
    printcolumn(
        name = "Installs",
        type_ = "integer",
        description = "PluginInstalls of this plugin",
        json_path = ".status.installs"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    /// Name shown to people. The object's name is shown when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// What the plugin does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// URL (or data URI) of the plugin's icon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// URL of the plugin's homepage or documentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// Kind of plugin, free text for people and tools to filter by, e.g. `OplogProcessor`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    /// Who provides the plugin: `custom` (written by the tenant; the default), `official`
    /// (provided by the platform) or `published` (released by a third-party publisher).
    #[serde(default)]
    pub attribution: PluginAttribution,
    /// How the plugin is reached. Default: `{mode: supervised}`.
    #[serde(default)]
    pub connection: PluginConnection,
}

/// Who provides a plugin.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PluginAttribution {
    #[default]
    Custom,
    Official,
    Published,
}

/// How a plugin is reached: run by the operator, or running elsewhere.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new(
    "self.mode != 'external' || (has(self.endpoint) && self.endpoint != '')"
).message("connection.endpoint is required when connection.mode is external"))]
#[serde(rename_all = "camelCase")]
pub struct PluginConnection {
    /// `supervised` (the default): the operator runs the plugin from its PluginVersions.
    /// `external`: the plugin runs elsewhere and `endpoint` is its URL.
    #[serde(default)]
    pub mode: ConnectionMode,
    /// Base URL of an external plugin, e.g. `https://plugins.example.com/billing`. Required when
    /// `mode` is `external`; not used for supervised plugins, whose endpoint is the Service the
    /// operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+"))]
    pub endpoint: Option<String>,
}

/// Whether the operator runs a plugin.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionMode {
    #[default]
    Supervised,
    External,
}

/// What the operator observed about a plugin.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// Newest formal version (highest semantic version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<String>,
    /// Every version of the plugin, drafts included, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// Number of PluginInstalls of this plugin, in every namespace.
    #[serde(default)]
    pub installs: i32,
    /// `Accepted`: the spec is valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::resources::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl PluginSpec {
    /// Whether the operator runs this plugin (as opposed to reaching it at an external URL).
    pub fn is_supervised(&self) -> bool {
        self.connection.mode == ConnectionMode::Supervised
    }
}
