//! The custom resources users write and read: `Plugin`, `PluginVersion`, `PluginInstall` (group
//! `plugin-operator.dev`, version `v1alpha1`), the conditions helper and the rules of their specs.
//!
//! Decisions (where the product contract is silent):
//! - Defaults: Plugin `attribution: custom`, `connection.mode: supervised`; PluginVersion
//!   `attribution: formal` (a version is released unless marked `draft`), `composition: single`,
//!   `execution.type: Container`, `execution.port: 8080`; PluginInstall `version: "*"`,
//!   `upgradeMode: Manual`, `active: true`, `replicas: 1`, `progressDeadlineSeconds: 300`.
//! - `PluginInstall.spec.plugin` is a name or `{name, namespace}`. A structural schema cannot say
//!   "string or object", so the field is free-form (`x-kubernetes-preserve-unknown-fields`) and
//!   [`validate::validate_install`] checks its shape; a malformed value still reads, as
//!   [`PluginReference::Invalid`].
//! - Rules are enforced twice: by the API server (schema, patterns, and CEL rules on Kubernetes
//!   1.25+) and by the operator ([`validate`]), because older servers have no CEL and refuse
//!   `x-kubernetes-validations`. So `crds/` holds CRDs every version takes, `crds/cel/` the same
//!   with CEL rules; [`crds_for_server`] picks for a given server.
//! - A formal PluginVersion's spec is immutable: a CEL transition rule refuses edits at admission,
//!   and the operator records `status.acceptedSpecHash` ([`validate::spec_hash`]) when it accepts
//!   one and refuses a spec that no longer matches. New spec fields must be optional and skipped
//!   when empty, or existing hashes change.

#[cfg(test)]
mod cel_tests;
pub mod conditions;
pub mod names;
pub mod plugin;
pub mod plugin_install;
pub mod plugin_job;
pub mod plugin_version;
mod schema;
pub mod validate;
pub mod version_range;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

pub use conditions::{ConditionStatus, FailureOrigin, FailureReason, NewCondition, set_condition};
pub use plugin::{
    ConnectionMode, Plugin, PluginAttribution, PluginConnection, PluginSpec, PluginStatus,
};
pub use plugin_install::{
    ConfigFromSecret, Failure, HistoryEntry, Phase, PluginInstall, PluginInstallSpec,
    PluginInstallStatus, PluginRef, PluginReference, PluginRuntime, RolloutOutcome, UpgradeMode,
};
pub use plugin_job::{Attachment, JobStatus, PluginJob, PluginJobSpec, PluginJobStatus};
pub use plugin_version::{
    Composition, Execution, ExecutionType, PluginVersion, PluginVersionSpec, PluginVersionStatus,
    VersionAttribution,
};
pub use validate::{FieldError, spec_hash, validate_install, validate_plugin, validate_version};
pub use version_range::VersionSelector;

/// API group of the custom resources.
pub const GROUP: &str = "plugin-operator.dev";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";

/// The first Kubernetes minor version (1.25) that evaluates CEL validation rules
/// (`x-kubernetes-validations`) by default.
pub const CEL_MIN_MINOR: u32 = 25;

/// The CRDs, with everything the newest Kubernetes versions understand (CEL rules included).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Plugin::crd(),
        PluginVersion::crd(),
        PluginInstall::crd(),
        PluginJob::crd(),
    ]
}

/// The CRDs for an API server of Kubernetes `1.<minor>`. Before 1.25 the CEL rules
/// (`x-kubernetes-validations`) are left out: such servers do not run them, and those that do not
/// know the field refuse a server-side apply that carries it. The operator enforces the same
/// rules itself ([`validate`]).
pub fn crds_for_server(minor: u32) -> Vec<CustomResourceDefinition> {
    let mut crds = crds();
    if minor < CEL_MIN_MINOR {
        for crd in &mut crds {
            for version in &mut crd.spec.versions {
                if let Some(schema) = version
                    .schema
                    .as_mut()
                    .and_then(|s| s.open_api_v3_schema.as_mut())
                {
                    strip_validation_rules(schema);
                }
            }
        }
    }
    crds
}

fn strip_validation_rules(schema: &mut JSONSchemaProps) {
    schema.x_kubernetes_validations = None;
    let properties = schema.properties.iter_mut().flat_map(|p| p.values_mut());
    let items = schema.items.iter_mut().flat_map(|items| match items {
        JSONSchemaPropsOrArray::Schema(s) => std::slice::from_mut(s.as_mut()),
        JSONSchemaPropsOrArray::Schemas(all) => all.as_mut_slice(),
    });
    let additional = schema
        .additional_properties
        .iter_mut()
        .filter_map(|a| match a {
            JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrBool::Bool(_) => None,
        });
    let junctors = [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of]
        .into_iter()
        .flat_map(|list| list.iter_mut().flatten());
    let not = schema.not.iter_mut().map(|n| n.as_mut());
    for child in properties
        .chain(items)
        .chain(additional)
        .chain(junctors)
        .chain(not)
    {
        strip_validation_rules(child);
    }
}

/// Subdirectory of `crds/` with the CRDs that carry CEL validation rules (Kubernetes 1.25+).
pub const CEL_DIR: &str = "cel";

/// File name of a CRD in `crds/`: the lowercase kind, e.g. `pluginversion.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.spec.names.kind.to_lowercase())
}

/// One CRD as a YAML document (without the `---` separator).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// The files of `crds/` (paths relative to it, and their text): one file per kind that every
/// Kubernetes version takes (`kubectl apply -f crds/`), and in [`CEL_DIR`] the same CRDs with
/// their CEL validation rules, for Kubernetes 1.25 and later.
pub fn crd_files() -> Result<Vec<(std::path::PathBuf, String)>, serde_yaml::Error> {
    let portable = "# Generated by `plugin-operator crds --out-dir crds`: do not edit.\n\
                    # For every Kubernetes version. On 1.25 and later, cel/ beside this file has \
                    the same CRDs with CEL validation rules.\n";
    let cel = "# Generated by `plugin-operator crds --out-dir crds`: do not edit.\n\
               # For Kubernetes 1.25 and later: with CEL validation rules \
               (x-kubernetes-validations).\n";
    let mut files = files_with_header(&crds_for_server(CEL_MIN_MINOR - 1), portable)?;
    for (path, text) in files_with_header(&crds(), cel)? {
        files.push((std::path::Path::new(CEL_DIR).join(path), text));
    }
    Ok(files)
}

/// One file per kind, for an API server of Kubernetes `1.<minor>` ([`crds_for_server`]).
pub fn crd_files_for_server(
    minor: u32,
) -> Result<Vec<(std::path::PathBuf, String)>, serde_yaml::Error> {
    let header = format!(
        "# Generated by `plugin-operator crds --kubernetes-version 1.{minor}`: do not edit.\n"
    );
    files_with_header(&crds_for_server(minor), &header)
}

fn files_with_header(
    crds: &[CustomResourceDefinition],
    header: &str,
) -> Result<Vec<(std::path::PathBuf, String)>, serde_yaml::Error> {
    crds.iter()
        .map(|crd| {
            Ok((
                crd_file_name(crd).into(),
                format!("{header}{}", crd_yaml(crd)?),
            ))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream (what `plugin-operator crds` prints).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    to_yaml_stream(&crds())
}

/// [`crds_for_server`] as one multi-document YAML stream.
pub fn crds_yaml_for_server(minor: u32) -> Result<String, serde_yaml::Error> {
    to_yaml_stream(&crds_for_server(minor))
}

fn to_yaml_stream(crds: &[CustomResourceDefinition]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&crd_yaml(crd)?);
    }
    Ok(out)
}
