//! Answers seed 004 (a pipeline service's extension catalogue): the details of one version of a plugin.
//! `domain_id` is the namespace; a plugin not found there is looked up in the catalog namespace.
//!
//! Errors: `{error_msg, error_code}`.
use std::{collections::BTreeMap, sync::Arc};

use axum::{Json, extract::State};
use kube::{Api, Resource, ResourceExt};
use semver::Version;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::api::{
    ApiState,
    backend::Access,
    error::{self, ApiError, ErrorShape, SeedError},
    extract::{Authenticated, SeedPath, SeedQuery},
    is_namespace_name,
};
use crate::{
    resources::{
        Composition, ConditionStatus, ExecutionType, InputPresentation, Plugin, PluginAttribution,
        PluginVersion, VersionAttribution, conditions, names::annotations,
        plugin_version::DEFAULT_RUNTIME_ATTRIBUTION,
    },
    runtime::{cache, call::with_timeout},
};

/// Seed 004's error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error_msg: String,
    /// `PLUGIN.INVALID_PARAMETER` (400), `PLUGIN.UNAUTHORIZED` (401), `PLUGIN.FORBIDDEN` (403),
    /// `PLUGIN.NOT_FOUND` (404), `PLUGIN.UNAVAILABLE` (503) or `PLUGIN.INTERNAL_ERROR` (500).
    pub error_code: &'static str,
}

/// Seed 004's error shape. Its callers may send their token in `X-Auth-Token`.
pub struct Errors;

impl ErrorShape for Errors {
    const X_AUTH_TOKEN: bool = true;

    fn body(err: &ApiError) -> impl Serialize {
        let error_code = match err {
            ApiError::Invalid(_) => "PLUGIN.INVALID_PARAMETER",
            ApiError::Unauthenticated(_) => "PLUGIN.UNAUTHORIZED",
            ApiError::Forbidden(_) => "PLUGIN.FORBIDDEN",
            ApiError::NotFound(_) => "PLUGIN.NOT_FOUND",
            ApiError::Conflict(_) => "PLUGIN.CONFLICT",
            ApiError::LimitExceeded(_) => "PLUGIN.LIMIT_EXCEEDED",
            ApiError::Unavailable { .. } => "PLUGIN.UNAVAILABLE",
            ApiError::Internal(_) => "PLUGIN.INTERNAL_ERROR",
        };
        ErrorBody {
            error_msg: err.message(),
            error_code,
        }
    }
}

/// The query of the detail route.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DetailQuery {
    /// 1 to 50 letters, digits, `-` and `_`.
    pub plugin_name: String,
    /// `x.xx.xx` (each part one or two digits). Default: the newest formal version.
    pub version: Option<String>,
}

/// Checks `plugin_name`: 1–50 letters, digits, `-`, `_`.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let valid = (1..=50).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1 to 50 letters, digits, '-' and '_'"
        ))
    }
}

/// Parses `version` in the form `x.xx.xx` (each part one or two digits).
pub fn parse_version(text: &str) -> Result<Version, String> {
    let parts: Vec<&str> = text.split('.').collect();
    let well_formed = parts.len() == 3
        && parts
            .iter()
            .all(|p| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        return Err(format!(
            "{text:?} is not a version of the form x.xx.xx (each part one or two digits)"
        ));
    }
    // One or two ASCII digits, checked above: they always parse.
    let number = |p: &str| p.parse::<u64>().unwrap_or_default();
    Ok(Version::new(
        number(parts[0]),
        number(parts[1]),
        number(parts[2]),
    ))
}

/// Extension version details.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct PluginDetail {
    pub plugin_name: String,
    pub display_name: String,
    /// The user who last created the version or changed its spec (the annotation
    /// `plugin-operator.dev/changed-by` the chart's admission policy stamps); without it, the
    /// field manager of the last write; else empty.
    pub op_user: String,
    /// When the version's spec was last written (its newest `managedFields` entry that owns
    /// spec fields; else its creation), in milliseconds since the epoch.
    pub op_time: String,
    pub version: String,
    /// The PluginVersion's uid without dashes.
    pub unique_id: String,
    pub version_description: String,
    /// `formal` or `draft`.
    pub version_attribution: String,
    /// `single` or `multi`.
    pub plugin_composition_type: String,
    /// `custom`, `official` or `published`.
    pub plugin_attribution: String,
    pub input_info: Vec<InputInfo>,
    /// `{}` when the version has no execution.
    #[schema(value_type = PluginExecution)]
    pub plugin_execution: Value,
    /// `spec.runtimeAttribution`, else `agentLess` (plugins run in the cluster).
    pub runtime_attribution: String,
}

/// One input item: a property of the version's configSchema.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct InputInfo {
    /// Derived from the version's uid and the property's name.
    pub unique_id: String,
    pub name: String,
    /// The property's `default` (JSON text unless a string), or empty.
    pub default_value: String,
    pub plugin_name: String,
    pub version: String,
    /// The property's JSON Schema `type` (`string` when it has none).
    #[serde(rename = "type")]
    pub input_type: String,
    pub workspace_id: String,
    pub front_data_prop: String,
    /// The property's `title`, else its name.
    pub label: String,
    pub description: String,
    /// `"true"` or `"false"`.
    pub required: String,
    pub extend_prop: ExtendProp,
    pub validation: InputValidation,
    pub layout_content: String,
}

#[derive(Debug, Serialize, ToSchema, PartialEq, Default)]
pub struct ExtendProp {
    pub api_options: String,
    pub api_type: String,
    pub show_placeholder: String,
    /// The property's `enum`, as JSON text.
    pub options: String,
    pub disabled_conditions: String,
    pub visible_conditions: String,
}

#[derive(Debug, Serialize, ToSchema, PartialEq, Default)]
pub struct InputValidation {
    /// `x-required-message`, else a default for required items, else empty.
    pub required_message: String,
    /// The property's `pattern`.
    pub regex: String,
    /// `x-regex-message`, else a default when there is a pattern, else empty.
    pub regex_message: String,
    /// `maxLength`.
    pub max_length: Option<u64>,
    /// `minLength`.
    pub min_length: Option<u64>,
}

/// How the version runs.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct PluginExecution {
    pub logic_id: String,
    pub plugin_name: String,
    pub version: String,
    pub basic_instance_id: String,
    pub workspace_id: String,
    /// `CONTAINER`, `ZIP`, `SHELL` or `COMPOSITE`.
    pub execution_type: String,
    /// The command and its arguments, joined by spaces.
    pub start_command: String,
    pub stop_command: String,
    /// The image.
    pub env: String,
}

/// The input items of a configSchema: one per property, ordered by `x-order` then name.
pub fn input_info(
    schema: Option<&Value>,
    presentation: &BTreeMap<String, InputPresentation>,
    version_uid: &str,
    plugin: &str,
    version: &str,
    workspace: &str,
) -> Vec<InputInfo> {
    let Some(properties) = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut names: Vec<(&String, &Value)> = properties.iter().collect();
    names.sort_by_key(|(name, p)| {
        (
            p.get("x-order").and_then(Value::as_i64).unwrap_or(i64::MAX),
            name.to_owned(),
        )
    });
    names
        .into_iter()
        .map(|(name, property)| {
            let text = |key: &str| {
                property
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let label = Some(text("title"))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| name.clone());
            let is_required = required.contains(&name.as_str());
            let pattern = text("pattern");
            let required_message = Some(text("x-required-message"))
                .filter(|m| !m.is_empty())
                .or_else(|| is_required.then(|| format!("{label} is required")))
                .unwrap_or_default();
            let shown = presentation.get(name.as_str()).cloned().unwrap_or_default();
            let extend = shown.extend_prop.unwrap_or_default();
            let regex_message = Some(text("x-regex-message"))
                .filter(|m| !m.is_empty())
                .or_else(|| (!pattern.is_empty()).then(|| format!("{label} must match {pattern}")))
                .unwrap_or_default();
            InputInfo {
                unique_id: item_id(version_uid, name),
                name: name.clone(),
                default_value: match property.get("default") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                },
                plugin_name: plugin.to_owned(),
                version: version.to_owned(),
                input_type: Some(text("type"))
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "string".into()),
                workspace_id: workspace.to_owned(),
                front_data_prop: shown.front_data_prop.unwrap_or_default(),
                label,
                description: text("description"),
                required: is_required.to_string(),
                extend_prop: ExtendProp {
                    options: property
                        .get("enum")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                    api_options: extend.api_options.unwrap_or_default(),
                    api_type: extend.api_type.unwrap_or_default(),
                    show_placeholder: extend.show_placeholder.unwrap_or_default(),
                    disabled_conditions: extend.disabled_conditions.unwrap_or_default(),
                    visible_conditions: extend.visible_conditions.unwrap_or_default(),
                },
                validation: InputValidation {
                    required_message,
                    regex: pattern,
                    regex_message,
                    max_length: property.get("maxLength").and_then(Value::as_u64),
                    min_length: property.get("minLength").and_then(Value::as_u64),
                },
                layout_content: shown.layout_content.unwrap_or_default(),
            }
        })
        .collect()
}

/// 32 hex digits from the version's uid and the item's name.
fn item_id(version_uid: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{version_uid}/{name}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn words(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| {
            if p.is_empty() || p.chars().any(char::is_whitespace) {
                format!("{p:?}")
            } else {
                p.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last write of an object's spec: the newest `managedFields` entry that is not a status
/// write and owns fields of the spec (the operator's metadata writes, e.g. a finalizer, own
/// none); else the newest that is not a status write.
fn last_write(meta: &kube::api::ObjectMeta) -> Option<(String, k8s_openapi::jiff::Timestamp)> {
    let writes = || {
        meta.managed_fields
            .iter()
            .flatten()
            .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
    };
    let owns_spec = |m: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry| {
        m.fields_v1
            .as_ref()
            .is_some_and(|f| f.0.get("f:spec").is_some())
    };
    let newest =
        |entries: Vec<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>| {
            entries
                .into_iter()
                .filter_map(|m| Some((m.manager.clone()?, m.time.as_ref()?.0)))
                .max_by_key(|(_, time)| *time)
        };
    newest(writes().filter(owns_spec).collect()).or_else(|| newest(writes().collect()))
}

/// The detail of one version.
pub fn detail(plugin: &Plugin, version: &PluginVersion, workspace: &str) -> PluginDetail {
    let plugin_name = plugin.name_any();
    let spec = &version.spec;
    let uid = version.meta().uid.clone().unwrap_or_default();
    let (manager, op_time) = match last_write(version.meta()) {
        Some((manager, time)) => (manager, Some(time)),
        None => (
            String::new(),
            version.meta().creation_timestamp.as_ref().map(|t| t.0),
        ),
    };
    // The user the admission policy stamped; without it (a cluster that does not serve
    // MutatingAdmissionPolicy), the field manager of the last write.
    let op_user = version
        .annotations()
        .get(annotations::CHANGED_BY)
        .filter(|u| !u.is_empty())
        .cloned()
        .unwrap_or(manager);
    let execution = spec.execution.as_ref().map(|e| {
        let mut start = e.command.clone();
        start.extend(e.args.iter().cloned());
        let execution_type = match e.execution_type {
            ExecutionType::Container => "CONTAINER",
            ExecutionType::Zip => "ZIP",
            ExecutionType::Shell => "SHELL",
            ExecutionType::Composite => "COMPOSITE",
        };
        PluginExecution {
            logic_id: spec.logic_id.clone().unwrap_or_default(),
            plugin_name: plugin_name.clone(),
            version: spec.version.clone(),
            basic_instance_id: spec.basic_instance_id.clone().unwrap_or_default(),
            workspace_id: workspace.to_owned(),
            execution_type: execution_type.to_owned(),
            start_command: words(&start),
            stop_command: words(&e.stop_command),
            env: e.image.clone().unwrap_or_default(),
        }
    });
    PluginDetail {
        plugin_name: plugin_name.clone(),
        display_name: plugin
            .spec
            .display_name
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| plugin_name.clone()),
        op_user,
        op_time: op_time
            .map(|t| t.as_millisecond().to_string())
            .unwrap_or_default(),
        version: spec.version.clone(),
        unique_id: uid.replace('-', ""),
        version_description: spec.description.clone().unwrap_or_default(),
        version_attribution: match spec.attribution {
            VersionAttribution::Formal => "formal",
            VersionAttribution::Draft => "draft",
        }
        .to_owned(),
        plugin_composition_type: match spec.composition {
            Composition::Single => "single",
            Composition::Multi => "multi",
        }
        .to_owned(),
        plugin_attribution: match plugin.spec.attribution {
            PluginAttribution::Custom => "custom",
            PluginAttribution::Official => "official",
            PluginAttribution::Published => "published",
        }
        .to_owned(),
        input_info: input_info(
            spec.config_schema.as_ref(),
            &spec.inputs,
            &uid,
            &plugin_name,
            &spec.version,
            workspace,
        ),
        // A struct of strings always serializes: `{}` stands only for "no execution".
        plugin_execution: execution
            .and_then(|e| serde_json::to_value(e).ok())
            .unwrap_or_else(|| Value::Object(Map::new())),
        runtime_attribution: spec
            .runtime_attribution
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_RUNTIME_ATTRIBUTION.to_owned()),
    }
}

/// Whether the operator refused the version (Accepted=False for its current spec).
fn refused(version: &PluginVersion) -> bool {
    version
        .status
        .as_ref()
        .and_then(|s| conditions::find_condition(&s.conditions, conditions::ACCEPTED))
        .is_some_and(|c| {
            ConditionStatus::of(c) == ConditionStatus::False
                && c.observed_generation == version.meta().generation
        })
}

/// The version asked for, or the newest formal one the operator did not refuse.
fn pick_version(
    versions: &[Arc<PluginVersion>],
    wanted: Option<&Version>,
) -> Option<Arc<PluginVersion>> {
    let parsed = versions
        .iter()
        .filter_map(|v| v.spec.number().map(|n| (n, v)));
    match wanted {
        Some(wanted) => parsed
            .filter(|(n, _)| n.cmp_precedence(wanted).is_eq())
            .map(|(_, v)| v.clone())
            .next(),
        None => parsed
            .filter(|(n, v)| v.spec.is_formal() && n.pre.is_empty() && !refused(v))
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(_, v)| v.clone()),
    }
}

/// Query extension version details.
///
/// Without `version`: the newest formal version. A plugin that is not in `domain_id` is looked
/// up in the catalog namespace. Needs `get pluginversions` in the namespace of the plugin.
/// Accepts the token in `X-Auth-Token` too.
#[utoipa::path(
    get,
    path = "/v1/{domain_id}/agent-plugin/detail",
    tag = "seed 004",
    params(("domain_id" = String, Path, description = "The namespace"), DetailQuery),
    responses(
        (status = 200, body = PluginDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []), ("x_auth_token" = []))
)]
pub async fn detail_route(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
    query: SeedQuery<Errors>,
) -> Result<Json<PluginDetail>, SeedError<Errors>> {
    let domain = path.value;
    let params: &BTreeMap<String, String> = &query.params;
    let mut issues = Vec::new();
    if !is_namespace_name(&domain) {
        issues.push(error::Issue::new(
            "domain_id",
            format!("{domain:?} is not a namespace name"),
        ));
    }
    let name = params.get("plugin_name").map(String::as_str).unwrap_or("");
    if name.is_empty() {
        issues.push(error::Issue::new("plugin_name", "required"));
    } else if let Err(message) = check_plugin_name(name) {
        issues.push(error::Issue::new("plugin_name", message));
    }
    let wanted = match params.get("version").filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => match parse_version(text) {
            Ok(v) => Some(v),
            Err(message) => {
                issues.push(error::Issue::new("version", message));
                None
            }
        },
    };
    if !issues.is_empty() {
        return Err(ApiError::Invalid(issues).into());
    }
    let auth_in = |namespace: String| {
        let caller = auth.caller.clone();
        let state = state.clone();
        async move {
            state
                .auth()
                .authorize(&caller, &Access::new("get", "pluginversions", &namespace))
                .await
                .map(|()| namespace)
        }
    };
    let own = auth_in(domain.clone()).await?;
    let catalog = state.catalog_namespace().to_owned();
    let plugin = match cache::get(&state.caches().plugins, &own, name) {
        Some(plugin) => plugin,
        None if catalog != own && cache::get(&state.caches().plugins, &catalog, name).is_some() => {
            let catalog = auth_in(catalog).await?;
            cache::get(&state.caches().plugins, &catalog, name)
                .ok_or_else(|| ApiError::NotFound(format!("no plugin {name:?} in {domain:?}")))?
        }
        None => {
            return Err(ApiError::NotFound(format!(
                "no plugin {name:?} in {domain:?} or in the catalog"
            ))
            .into());
        }
    };
    let versions = state.caches().versions_of_plugin(&plugin);
    let version = pick_version(&versions, wanted.as_ref()).ok_or_else(|| match &wanted {
        Some(v) => ApiError::NotFound(format!("plugin {name:?} has no version {v}")),
        None => ApiError::NotFound(format!("plugin {name:?} has no formal version")),
    })?;
    // The caches drop managedFields; `op_time` needs them: one metadata read of the version.
    let mut version = (*version).clone();
    let api: Api<PluginVersion> = Api::namespaced(
        state.client().clone(),
        &version.namespace().unwrap_or_default(),
    );
    match with_timeout(api.get_metadata(&version.name_any())).await {
        Ok(current) => version.metadata.managed_fields = current.metadata.managed_fields,
        Err(error) => {
            tracing::warn!(version = %version.name_any(), %error, "cannot read the version's managedFields; op_time falls back to its creation");
        }
    }
    Ok(Json(detail(&plugin, &version, &domain)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_versions_follow_the_seed() {
        for ok in ["a", "apie_test", "A-1_b", &"x".repeat(50)] {
            assert!(check_plugin_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a.b", "ä", &"x".repeat(51)] {
            assert!(check_plugin_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_version("0.0.4"), Ok(Version::new(0, 0, 4)));
        assert_eq!(parse_version("1.12.05"), Ok(Version::new(1, 12, 5)));
        assert_eq!(parse_version("99.99.99"), Ok(Version::new(99, 99, 99)));
        for bad in [
            "1.2", "1.2.3.4", "100.1.1", "1.123.1", "1.a.1", "", "1..1", "v1.2.3",
        ] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn input_items_come_from_the_config_schema() {
        let schema = json!({
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string", "title": "Endpoint URL", "description": "where",
                        "pattern": "^https://", "maxLength": 200, "minLength": 8,
                        "x-regex-message": "use https", "x-order": 1},
                "retries": {"type": "integer", "default": 3, "x-order": 2},
                "mode": {"enum": ["fast", "safe"], "default": "safe"}
            }
        });
        let shown: BTreeMap<String, InputPresentation> = serde_json::from_value(json!({
            "mode": {"frontDataProp": "modeProp", "layoutContent": "row",
                     "extendProp": {"apiType": "GET", "visibleConditions": "url != ''"}}
        }))
        .expect("presentation");
        let items = input_info(Some(&schema), &shown, "uid-1", "echo", "1.0.0", "team-a");
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["url", "retries", "mode"]);
        let url = &items[0];
        assert_eq!(url.label, "Endpoint URL");
        assert_eq!(url.description, "where");
        assert_eq!(url.required, "true");
        assert_eq!(url.input_type, "string");
        assert_eq!(url.workspace_id, "team-a");
        assert_eq!(
            url.validation,
            InputValidation {
                required_message: "Endpoint URL is required".into(),
                regex: "^https://".into(),
                regex_message: "use https".into(),
                max_length: Some(200),
                min_length: Some(8),
            }
        );
        assert_eq!(url.unique_id.len(), 32);
        assert_ne!(url.unique_id, items[1].unique_id);
        let retries = &items[1];
        assert_eq!(
            (
                retries.default_value.as_str(),
                retries.required.as_str(),
                retries.input_type.as_str()
            ),
            ("3", "false", "integer")
        );
        assert_eq!(retries.validation, InputValidation::default());
        let mode = &items[2];
        assert_eq!(mode.default_value, "safe");
        assert_eq!(mode.input_type, "string");
        assert_eq!(mode.extend_prop.options, r#"["fast","safe"]"#);
        assert_eq!(
            (mode.front_data_prop.as_str(), mode.layout_content.as_str()),
            ("modeProp", "row")
        );
        assert_eq!(
            (
                mode.extend_prop.api_type.as_str(),
                mode.extend_prop.visible_conditions.as_str(),
                mode.extend_prop.api_options.as_str()
            ),
            ("GET", "url != ''", "")
        );
        assert_eq!(url.front_data_prop, "");
        let none = BTreeMap::new();
        assert!(input_info(None, &none, "u", "p", "v", "w").is_empty());
        assert!(input_info(Some(&json!({"type": "object"})), &none, "u", "p", "v", "w").is_empty());
    }

    fn version(v: &str, extra: Value) -> PluginVersion {
        let mut object = json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginVersion",
            "metadata": {"name": format!("echo-{v}"), "namespace": "team-a",
                         "uid": "036d5110-8a0b-48ee-b876-fb6341ee7615",
                         "creationTimestamp": "2023-11-07T12:02:22Z", "generation": 1},
            "spec": {"plugin": "echo", "version": v}
        });
        if let (Some(spec), Value::Object(extra)) = (object["spec"].as_object_mut(), extra) {
            spec.extend(extra);
        }
        serde_json::from_value(object).expect("version")
    }

    #[test]
    fn a_detail_shows_the_version_as_the_seed_does() {
        let plugin: Plugin = serde_json::from_value(json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": "echo", "namespace": "team-a"},
            "spec": {"displayName": "Echo", "attribution": "official"}
        }))
        .expect("plugin");
        let v = version(
            "0.0.4",
            json!({"composition": "multi", "description": "first",
                   "execution": {"image": "reg/echo:0.0.4", "command": ["/bin/echo"], "args": ["hello world"],
                                 "stopCommand": ["/bin/stop", "now"]}}),
        );
        let d = detail(&plugin, &v, "team-a");
        assert_eq!(d.unique_id, "036d51108a0b48eeb876fb6341ee7615");
        assert_eq!(d.op_time, "1699358542000");
        assert_eq!(d.op_user, "");
        assert_eq!(d.display_name, "Echo");
        assert_eq!(d.plugin_attribution, "official");
        assert_eq!(d.plugin_composition_type, "multi");
        assert_eq!(d.version_attribution, "formal");
        assert_eq!(d.runtime_attribution, "agentLess");
        assert_eq!(
            d.plugin_execution,
            json!({"logic_id": "", "plugin_name": "echo", "version": "0.0.4", "basic_instance_id": "",
                   "workspace_id": "team-a", "execution_type": "CONTAINER",
                   "start_command": "/bin/echo \"hello world\"", "stop_command": "/bin/stop now",
                   "env": "reg/echo:0.0.4"})
        );
        let bare = detail(&plugin, &version("1.0.0", json!({})), "team-a");
        assert_eq!(bare.plugin_execution, json!({}));
        // The seed's remaining fields, as the version gives them; op_user from the admission
        // policy's annotation.
        let mut given = version(
            "1.1.0",
            json!({"logicId": "logic-7", "basicInstanceId": "base-3", "runtimeAttribution": "agent",
                   "execution": {"image": "reg/echo:1.1.0"}}),
        );
        given.annotations_mut().insert(
            annotations::CHANGED_BY.into(),
            "system:serviceaccount:team-a:ci".into(),
        );
        let d = detail(&plugin, &given, "team-a");
        assert_eq!(d.runtime_attribution, "agent");
        assert_eq!(d.op_user, "system:serviceaccount:team-a:ci");
        assert_eq!(d.plugin_execution["logic_id"], "logic-7");
        assert_eq!(d.plugin_execution["basic_instance_id"], "base-3");
    }

    #[test]
    fn the_last_spec_write_is_not_a_metadata_write() {
        let mut v = version("1.0.0", json!({}));
        v.metadata.managed_fields = Some(
            serde_json::from_value(json!([
                {"manager": "kubectl", "operation": "Update", "time": "2024-01-01T00:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:description": {}}}},
                {"manager": "plugin-operator", "operation": "Update", "time": "2024-02-01T00:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:finalizers": {}}}}
            ]))
            .expect("managed fields"),
        );
        let (manager, time) = last_write(&v.metadata).expect("a writer");
        assert_eq!(manager, "kubectl");
        assert_eq!(time.to_string(), "2024-01-01T00:00:00Z");
    }

    #[test]
    fn the_last_writer_is_the_newest_spec_manager() {
        let mut v = version("1.0.0", json!({}));
        v.metadata.managed_fields = Some(
            serde_json::from_value(json!([
                {"manager": "kubectl", "operation": "Update", "time": "2024-01-01T00:00:00Z"},
                {"manager": "alice-ci", "operation": "Apply", "time": "2024-02-01T00:00:00Z"},
                {"manager": "plugin-operator", "operation": "Update", "subresource": "status",
                 "time": "2024-03-01T00:00:00Z"}
            ]))
            .expect("managed fields"),
        );
        let (user, time) = last_write(&v.metadata).expect("a writer");
        assert_eq!(user, "alice-ci");
        assert_eq!(time.to_string(), "2024-02-01T00:00:00Z");
    }

    #[test]
    fn without_a_version_the_newest_formal_one_is_picked() {
        let versions: Vec<_> = [
            version("1.0.0", json!({})),
            version("1.2.0", json!({})),
            version("2.0.0", json!({"attribution": "draft"})),
            version("1.3.0-rc.1", json!({})),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let newest = pick_version(&versions, None).expect("one");
        assert_eq!(newest.spec.version, "1.2.0");
        let draft = pick_version(&versions, Some(&Version::new(2, 0, 0))).expect("named");
        assert_eq!(draft.spec.version, "2.0.0");
        assert!(pick_version(&versions, Some(&Version::new(9, 0, 0))).is_none());
    }
}
