//! Answers seed 002 (a plugin host's instance API): the installed plugins, their active state and
//! their configuration. `id` is the PluginInstall's `metadata.uid`.
//!
//! Errors: `{error, message, suggested, metadata}`.
use std::sync::Arc;

use axum::{Json, extract::State};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::api::{
    ApiState,
    auth::Caller,
    backend::Access,
    error::{ApiError, ErrorShape, Issue, SeedError},
    extract::{Authenticated, Fields, FromJson, JsonBody, SeedPath, SeedQuery},
};
use crate::{
    resources::names::FIELD_MANAGER,
    resources::{ConnectionMode, Phase, PluginInstall, validate},
    runtime::call::with_timeout,
};

/// Seed 002's error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `limit_exceeded`,
    /// `unavailable` or `internal`.
    pub error: &'static str,
    pub message: String,
    /// What to do about it.
    pub suggested: String,
    /// `{field, issues}` for a 400, `{retry_after}` for a 503, else `{}`.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// Seed 002's error shape: what went wrong, what to do about it, and details.
pub struct Errors;

impl ErrorShape for Errors {
    fn body(err: &ApiError) -> impl Serialize {
        let (code, suggested, metadata) = match err {
            ApiError::Invalid(issues) => (
                "bad_request",
                format!(
                    "correct {} and send the request again",
                    issues
                        .iter()
                        .map(|i| i.field.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                json!({
                    "field": err.field(),
                    "issues": issues.iter().map(|i| json!({"field": i.field, "message": i.message})).collect::<Vec<_>>(),
                }),
            ),
            ApiError::Unauthenticated(_) => (
                "unauthorized",
                "send a valid token in `Authorization: Bearer <token>`".to_owned(),
                json!({}),
            ),
            ApiError::Forbidden(_) => (
                "forbidden",
                "ask for a Role that grants this verb on plugininstalls".to_owned(),
                json!({}),
            ),
            ApiError::NotFound(_) => (
                "not_found",
                "list the installed plugins with GET /plugins for their ids".to_owned(),
                json!({}),
            ),
            ApiError::Conflict(_) => ("conflict", "send the request again".to_owned(), json!({})),
            ApiError::LimitExceeded(_) => (
                "limit_exceeded",
                "free some of the namespace's quota".to_owned(),
                json!({}),
            ),
            ApiError::Unavailable { retry_after, .. } => (
                "unavailable",
                format!("try again in {retry_after} seconds"),
                json!({"retry_after": retry_after}),
            ),
            ApiError::Internal(_) => (
                "internal",
                "try again later; the operator's log tells more".to_owned(),
                json!({}),
            ),
        };
        ErrorBody {
            error: code,
            message: err.message(),
            suggested,
            metadata,
        }
    }
}

type Result<T> = std::result::Result<T, SeedError<Errors>>;

/// An installed plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginInstance {
    /// The PluginInstall's `metadata.uid`.
    pub id: String,
    /// When it was installed (`metadata.creationTimestamp`).
    pub added_at: String,
    /// The PluginInstall's name.
    pub name: String,
    /// The Plugin's description.
    pub description: String,
    /// The running version, or empty.
    pub version: String,
    pub status: InstanceStatus,
    /// The running version's `spec.manifest`, or `{}`.
    #[schema(value_type = Object)]
    pub manifest: Value,
    pub connection: Connection,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceStatus {
    /// The phase, lowercased: `inactive`, `starting`, `connecting`, `active`, `error` or
    /// `restarting`.
    pub active_state: String,
    /// When it was last deactivated, if ever.
    pub deactivated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Connection {
    /// `supervised` or `external`.
    pub mode: String,
}

impl PluginInstance {
    pub fn new(state: &ApiState, install: &PluginInstall) -> Self {
        let status = install.status.clone().unwrap_or_default();
        let plugin = state.plugin_of(install);
        let manifest = match (&plugin, status.running()) {
            (Some(plugin), Some(version)) => state
                .version_of(plugin, &version)
                .and_then(|v| v.spec.manifest.clone()),
            _ => None,
        };
        let mode = plugin
            .as_ref()
            .map_or(ConnectionMode::Supervised, |p| p.spec.connection.mode);
        let active_state = match status.phase {
            Some(phase) => phase.as_str().to_ascii_lowercase(),
            None if install.spec.active => Phase::Starting.as_str().to_ascii_lowercase(),
            None => Phase::Inactive.as_str().to_ascii_lowercase(),
        };
        Self {
            id: install.meta().uid.clone().unwrap_or_default(),
            added_at: install
                .meta()
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            name: install.name_any(),
            description: plugin
                .as_ref()
                .and_then(|p| p.spec.description.clone())
                .unwrap_or_default(),
            version: status.version.clone().unwrap_or_default(),
            status: InstanceStatus {
                active_state,
                deactivated_at: status.deactivated_at.map(|t| t.0.to_string()),
            },
            manifest: manifest.unwrap_or_else(|| Value::Object(Map::new())),
            connection: Connection {
                mode: match mode {
                    ConnectionMode::Supervised => "supervised".into(),
                    ConnectionMode::External => "external".into(),
                },
            },
        }
    }
}

/// `GET /plugins` query.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this namespace (403 when the caller may not list there). Without it: every
    /// namespace where the caller may list plugininstalls.
    pub namespace: Option<String>,
}

/// List all plugins that are installed.
///
/// Needs `list plugininstalls`: with `namespace`, there (else 403); without, the answer holds
/// the installs of every namespace where the caller may list them (cluster-wide permission
/// covers all), possibly none.
#[utoipa::path(
    get,
    path = "/plugins",
    tag = "seed 002",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<PluginInstance>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_plugins(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    query: SeedQuery<Errors>,
) -> Result<Json<Vec<PluginInstance>>> {
    let caller = &auth.caller;
    let installs = match query.params.get("namespace").filter(|n| !n.is_empty()) {
        Some(namespace) => {
            if !crate::api::is_namespace_name(namespace) {
                return Err(ApiError::invalid(
                    "namespace",
                    format!("{namespace:?} is not a namespace name"),
                )
                .into());
            }
            state
                .auth()
                .authorize(caller, &Access::new("list", "plugininstalls", namespace))
                .await?;
            state.caches().installs_in(namespace)
        }
        None => visible_installs(&state, caller).await?,
    };
    let mut installs = installs;
    installs.sort_by_key(|i| (i.namespace(), i.name_any()));
    Ok(Json(
        installs
            .iter()
            .map(|i| PluginInstance::new(&state, i))
            .collect(),
    ))
}

/// The installs of every namespace where the caller may list them.
async fn visible_installs(
    state: &ApiState,
    caller: &Caller,
) -> std::result::Result<Vec<Arc<PluginInstall>>, ApiError> {
    let all = state.caches().installs.state();
    let auth = state.auth();
    if auth
        .allowed(caller, &Access::new("list", "plugininstalls", ""))
        .await?
    {
        return Ok(all);
    }
    let namespaces: std::collections::BTreeSet<String> =
        all.iter().filter_map(|i| i.namespace()).collect();
    let mut allowed = std::collections::BTreeSet::new();
    for namespace in namespaces {
        if auth
            .allowed(caller, &Access::new("list", "plugininstalls", &namespace))
            .await?
        {
            allowed.insert(namespace);
        }
    }
    Ok(all
        .into_iter()
        .filter(|i| i.namespace().is_some_and(|n| allowed.contains(&n)))
        .collect())
}

/// An install by id, after checking the caller may patch it.
async fn find_for_patch(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> std::result::Result<Arc<PluginInstall>, ApiError> {
    if !crate::api::is_uid(id) {
        return Err(ApiError::invalid(
            "id",
            format!("{id:?} is not a plugin id (a UUID)"),
        ));
    }
    let install = state
        .install_by_uid(id)
        .ok_or_else(|| ApiError::NotFound(format!("no installed plugin with id {id}")))?;
    let access = Access::new(
        "patch",
        "plugininstalls",
        &install.namespace().unwrap_or_default(),
    )
    .named(&install.name_any());
    state.auth().authorize(caller, &access).await?;
    Ok(install)
}

async fn patch_install(
    state: &ApiState,
    install: &PluginInstall,
    patch: &Patch<Value>,
) -> std::result::Result<PluginInstall, ApiError> {
    let api: Api<PluginInstall> = Api::namespaced(
        state.client().clone(),
        &install.namespace().unwrap_or_default(),
    );
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    with_timeout(api.patch(&install.name_any(), &params, patch))
        .await
        .map_err(|e| ApiError::from_kube("patch PluginInstall", &e))
}

/// `{active: "active" | "inactive"}`.
#[derive(Debug, ToSchema)]
pub struct SetActive {
    /// `active` starts the plugin, `inactive` stops it.
    #[schema(value_type = String, example = "inactive")]
    pub active: bool,
}

impl FromJson for SetActive {
    fn from_json(f: &mut Fields<'_>) -> Option<Self> {
        match f.get("active") {
            None => {
                f.issue("active", "required: \"active\" or \"inactive\"");
                None
            }
            Some(Value::String(s)) if s == "active" => Some(Self { active: true }),
            Some(Value::String(s)) if s == "inactive" => Some(Self { active: false }),
            Some(Value::String(s)) => {
                f.issue(
                    "active",
                    format!(
                        "{s:?} cannot be set: only \"active\" or \"inactive\" (the other states are reached by themselves)"
                    ),
                );
                None
            }
            Some(other) => {
                f.issue(
                    "active",
                    format!(
                        "expected a string, got {}",
                        crate::api::extract::type_name(other)
                    ),
                );
                None
            }
        }
    }
}

/// Change the active state of a plugin (its `spec.active`).
///
/// Only for supervised plugins: an external plugin's state is 400. Answers with the plugin; its
/// `active_state` follows as the operator acts. Needs `patch plugininstalls` on it.
#[utoipa::path(
    patch,
    path = "/plugins/{id}/active",
    tag = "seed 002",
    params(("id" = String, Path, description = "The PluginInstall's metadata.uid")),
    request_body = SetActive,
    responses(
        (status = 200, body = PluginInstance),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set_active(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
    body: JsonBody<SetActive, Errors>,
) -> Result<Json<PluginInstance>> {
    let install = find_for_patch(&state, &auth.caller, &path.value).await?;
    if state
        .plugin_of(&install)
        .is_some_and(|p| !p.spec.is_supervised())
    {
        return Err(ApiError::invalid(
            "active",
            format!(
                "{} is an external plugin: it runs elsewhere and its active state cannot be managed here",
                install.name_any()
            ),
        )
        .into());
    }
    let patch = Patch::Merge(json!({"spec": {"active": body.value.active}}));
    let patched = patch_install(&state, &install, &patch).await?;
    Ok(Json(PluginInstance::new(&state, &patched)))
}

/// The JSON Schema the config of an install must satisfy now: that of the version being rolled
/// out, else the running one, else (never started) the version its spec would pick.
fn config_schema(state: &ApiState, install: &PluginInstall) -> Option<Value> {
    let plugin = state.plugin_of(install)?;
    let status = install.status.clone().unwrap_or_default();
    let named = status.rolling_out().or(status.running()).or_else(|| {
        let selector = crate::resources::VersionSelector::parse(&install.spec.version).ok()?;
        let versions = state.caches().versions_of_plugin(&plugin);
        crate::lifecycle::versions::candidates(&versions)
            .into_iter()
            .filter(|c| selector.matches(&c.version))
            .filter(|c| c.formal || selector.exact().is_some())
            .map(|c| c.version)
            .max()
    })?;
    state
        .version_of(&plugin, &named)
        .and_then(|v| v.spec.config_schema.clone())
}

/// Checks a config against a configSchema, with the schema's defaults applied first. Fields
/// are named as in the config (`url`, `retry.count`). With `secret_keys_may_fill`, a missing
/// top-level property is not an issue: `configFrom` Secrets may supply it (the operator checks
/// the merged config and reports it in the `ConfigValid` condition).
pub fn check_config(
    schema: &Value,
    config: &Map<String, Value>,
    secret_keys_may_fill: bool,
) -> std::result::Result<(), Vec<Issue>> {
    let validator = validate::compile_config_schema(schema).map_err(|e| {
        vec![Issue::new(
            "config",
            format!("the version's configSchema cannot be used: {e}"),
        )]
    })?;
    let mut value = Value::Object(config.clone());
    validate::apply_config_defaults(schema, &mut value);
    let issues: Vec<Issue> = validator
        .iter_errors(&value)
        .filter_map(|err| {
            let at = err.instance_path().as_str().to_owned();
            let mut field = pointer_to_field(&at);
            if let jsonschema::error::ValidationErrorKind::Required { property } = err.kind() {
                if secret_keys_may_fill && at.is_empty() {
                    return None;
                }
                let name = property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_owned);
                field = if field.is_empty() {
                    name
                } else {
                    format!("{field}.{name}")
                };
            }
            if field.is_empty() {
                field = "config".into();
            }
            Some(Issue::new(field, err.masked().to_string()))
        })
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

/// `/a/0/b` → `a[0].b`.
fn pointer_to_field(pointer: &str) -> String {
    let mut field = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            field.push_str(&format!("[{segment}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(&segment);
        }
    }
    field
}

/// Any JSON object: the new configuration.
pub struct NewConfig(pub Map<String, Value>);

impl FromJson for NewConfig {
    fn from_json(f: &mut Fields<'_>) -> Option<Self> {
        Some(Self(
            f.entries().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ))
    }
}

/// Update the configuration of a plugin.
///
/// The body is the whole new configuration: it replaces `spec.config`. It is validated against
/// the configSchema of the version being rolled out (else the running one) first; an invalid
/// config is 400 naming the fields, and nothing is written. Needs `patch plugininstalls` on it.
#[utoipa::path(
    patch,
    path = "/plugins/{id}/config",
    tag = "seed 002",
    params(("id" = String, Path, description = "The PluginInstall's metadata.uid")),
    request_body(content = Object, description = "The configuration"),
    responses(
        (status = 200, body = PluginInstance),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set_config(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
    body: JsonBody<NewConfig, Errors>,
) -> Result<Json<PluginInstance>> {
    let install = find_for_patch(&state, &auth.caller, &path.value).await?;
    let config = body.value.0;
    if let Some(schema) = config_schema(&state, &install) {
        check_config(&schema, &config, !install.spec.config_from.is_empty())
            .map_err(ApiError::Invalid)?;
    }
    let operations = json!([{"op": "add", "path": "/spec/config", "value": config}]);
    let operations: json_patch::Patch = serde_json::from_value(operations)
        .map_err(|e| ApiError::Internal(format!("building the patch: {e}")))?;
    let patched = patch_install(&state, &install, &Patch::Json(operations)).await?;
    Ok(Json(PluginInstance::new(&state, &patched)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(o) => o,
            _ => panic!("object"),
        }
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string", "pattern": "^https://"},
                "retries": {"type": "integer", "default": 3, "maximum": 10},
                "tls": {"type": "object", "required": ["ca"], "properties": {"ca": {"type": "string"}}}
            }
        })
    }

    #[test]
    fn a_config_is_checked_with_its_defaults() {
        assert_eq!(
            check_config(&schema(), &object(json!({"url": "https://x"})), false),
            Ok(())
        );
        let issues = check_config(&schema(), &object(json!({"retries": 11, "tls": {}})), false)
            .expect_err("invalid");
        let fields: Vec<_> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["url", "retries", "tls.ca"], "{issues:?}");
        let issues = check_config(&schema(), &object(json!({"url": "http://x"})), false)
            .expect_err("pattern");
        assert_eq!(issues[0].field, "url");
        assert!(issues[0].message.contains("https"), "{issues:?}");
    }

    #[test]
    fn secrets_may_supply_top_level_properties() {
        assert_eq!(check_config(&schema(), &object(json!({})), true), Ok(()));
        let issues =
            check_config(&schema(), &object(json!({"tls": {}})), true).expect_err("nested");
        assert_eq!(issues[0].field, "tls.ca");
    }

    #[test]
    fn set_active_takes_only_active_or_inactive() {
        let read = |value: Value| {
            let object = object(value);
            let mut fields = Fields::new(&object);
            let parsed = SetActive::from_json(&mut fields).map(|s| s.active);
            (
                parsed,
                fields
                    .finish()
                    .err()
                    .and_then(|e| e.field().map(str::to_owned)),
            )
        };
        assert_eq!(read(json!({"active": "active"})), (Some(true), None));
        assert_eq!(read(json!({"active": "inactive"})), (Some(false), None));
        for bad in [
            json!({}),
            json!({"active": "starting"}),
            json!({"active": true}),
        ] {
            assert_eq!(read(bad).1.as_deref(), Some("active"));
        }
    }

    #[test]
    fn errors_have_the_seed_shape() {
        let response =
            SeedError::<Errors>::new(ApiError::invalid("active", "required")).into_response();
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(pointer_to_field("/a/0/b~1c"), "a[0].b/c");
    }
}
