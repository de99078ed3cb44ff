//! The plugin services: config, storage and jobs (`/api/v2/plugin-services/…`).
use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
    time::Duration,
};

use axum::{
    Json,
    extract::{FromRequestParts, Request, State},
    http::{StatusCode, request::Parts},
};
use base64::Engine;
use k8s_openapi::{
    api::{authentication::v1::TokenReview, core::v1::ConfigMap},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use moka::sync::Cache;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::{AUDIENCE, ErrorBody, Seed003Error};
use crate::{
    api::{
        ApiState,
        auth::{Caller, TokenKey, jwt_expiry, token_key},
        backend::Access,
        error::{ApiError, Issue},
        extract::{json_object, token, type_name},
        is_uid,
    },
    resources::{
        Attachment, JobStatus, PluginInstall, PluginJob, PluginJobSpec, PluginJobStatus,
        names::{self, FIELD_MANAGER, labels},
        validate,
    },
    runtime::call::{CallError, with_timeout},
};

type Result<T> = std::result::Result<T, Seed003Error>;

// ---------------------------------------------------------------------------------------------
// callers

/// Who calls a plugin-services route.
#[derive(Clone, Debug)]
pub enum ServiceCaller {
    /// A plugin access token: the install it belongs to.
    Plugin { namespace: String, install: String },
    /// An ordinary Kubernetes token (RBAC decides).
    Kube(Caller),
}

/// Plugin tokens reviewed lately: token hash → (install or none, until when).
type PluginTokenCache = Cache<TokenKey, (Option<(String, String)>, Timestamp)>;

static PLUGIN_TOKENS: LazyLock<PluginTokenCache> = LazyLock::new(|| {
    Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(120))
        .build()
});

/// The audiences a JWT claims (not verified: only to tell which review to ask for).
fn jwt_audiences(token: &str) -> Vec<String> {
    let Some(payload) = token.split('.').nth(1) else {
        return Vec::new();
    };
    let claims: Option<Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match claims.as_ref().and_then(|c| c.get("aud")) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// `system:serviceaccount:<ns>:<name>` → (ns, name).
pub fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    Some((namespace.to_owned(), name.to_owned()))
}

/// The install a plugin token belongs to (TokenReview for [`AUDIENCE`], cached), or `None`
/// when the token is not one.
async fn plugin_identity(state: &ApiState, token: &str) -> Result<Option<(String, String)>> {
    if !jwt_audiences(token).iter().any(|a| a == AUDIENCE) {
        return Ok(None);
    }
    let key = token_key(token);
    let now = state.now();
    if let Some((identity, until)) = PLUGIN_TOKENS.get(&key)
        && until > now
    {
        return Ok(identity);
    }
    let review = TokenReview {
        spec: k8s_openapi::api::authentication::v1::TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![AUDIENCE.to_owned()]),
        },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(state.client().clone());
    let reviewed = with_timeout(api.create(&PostParams::default(), &review))
        .await
        .map_err(|e| ApiError::from_kube("TokenReview", &e))?;
    let status = reviewed.status.unwrap_or_default();
    let identity = if status.authenticated.unwrap_or(false)
        && status.audiences.iter().flatten().any(|a| a == AUDIENCE)
    {
        status
            .user
            .and_then(|u| u.username)
            .and_then(|u| service_account_of(&u))
    } else {
        None
    };
    let expires = jwt_expiry(token);
    if let Some(until) = crate::api::auth::cache_until(now, expires, identity.is_some()) {
        PLUGIN_TOKENS.insert(key, (identity.clone(), until));
    }
    Ok(identity)
}

impl FromRequestParts<ApiState> for ServiceCaller {
    type Rejection = Seed003Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self> {
        if !state.is_ready() {
            return Err(ApiError::Unavailable {
                message: "the operator's caches are not synced yet".into(),
                retry_after: 1,
            }
            .into());
        }
        let token = token(&parts.headers, false)?;
        if let Some((namespace, install)) = plugin_identity(state, &token).await? {
            return Ok(Self::Plugin { namespace, install });
        }
        Ok(Self::Kube(state.auth().authenticate(&token).await?))
    }
}

impl ServiceCaller {
    /// The install a plugin token belongs to, from the cache; 403 for other callers.
    fn own_install(&self, state: &ApiState, what: &str) -> Result<Arc<PluginInstall>> {
        match self {
            Self::Plugin { namespace, install } => state
                .caches()
                .installs
                .state()
                .into_iter()
                .find(|i| i.namespace().as_deref() == Some(namespace) && &i.name_any() == install)
                .ok_or_else(|| {
                    ApiError::Forbidden(format!("the install {namespace}/{install} is gone")).into()
                }),
            Self::Kube(_) => Err(ApiError::Forbidden(format!(
                "{what} takes a plugin token from POST /a/auth/v0/token"
            ))
            .into()),
        }
    }

    /// The install `id` names, if this caller may reach it: a plugin token only its own, a
    /// Kubernetes caller with `verb` on `resource` there.
    async fn install(
        &self,
        state: &ApiState,
        field: &str,
        id: &str,
        verb: &'static str,
        resource: &'static str,
    ) -> Result<Arc<PluginInstall>> {
        if !is_uid(id) {
            return Err(
                ApiError::invalid(field, format!("{id:?} is not an install id (a UUID)")).into(),
            );
        }
        let install = state
            .install_by_uid(id)
            .ok_or_else(|| ApiError::NotFound(format!("no install with id {id}")))?;
        let namespace = install.namespace().unwrap_or_default();
        match self {
            Self::Plugin {
                namespace: own_ns,
                install: own,
            } => {
                if *own_ns != namespace || *own != install.name_any() {
                    return Err(ApiError::Forbidden(format!(
                        "the token of install {own_ns}/{own} reaches only that install"
                    ))
                    .into());
                }
            }
            Self::Kube(caller) => {
                let mut access = Access::new(verb, resource, &namespace);
                if resource == "plugininstalls" {
                    access = access.named(&install.name_any());
                }
                state.auth().authorize(caller, &access).await?;
            }
        }
        Ok(install)
    }
}

fn kube_failed(what: &str) -> impl Fn(CallError) -> Seed003Error + '_ {
    move |e| ApiError::from_kube(what, &e).into()
}

// ---------------------------------------------------------------------------------------------
// config

/// `{data: …}`.
#[derive(Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

async fn fresh_install(state: &ApiState, install: &PluginInstall) -> Result<PluginInstall> {
    let api: Api<PluginInstall> = Api::namespaced(
        state.client().clone(),
        &install.namespace().unwrap_or_default(),
    );
    with_timeout(api.get(&install.name_any()))
        .await
        .map_err(kube_failed("get PluginInstall"))
}

fn config_of(install: &PluginInstall) -> Value {
    match &install.spec.config {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => Value::Object(Map::new()),
    }
}

/// Get the install's config.
///
/// A plugin token of the install, or a Kubernetes token allowed to `get plugininstalls` on it.
#[utoipa::path(
    get,
    path = "/api/v2/plugin-services/installs/{installId}/config",
    tag = "seed 003",
    params(("installId" = String, Path, description = "The PluginInstall's metadata.uid")),
    responses(
        (status = 200, body = Object, description = "`{data: <config>}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_config(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Data<Value>>> {
    let install = caller
        .install(&state, "installId", &id, "get", "plugininstalls")
        .await?;
    let install = fresh_install(&state, &install).await?;
    Ok(Json(Data {
        data: config_of(&install),
    }))
}

/// The configSchema of the version the install runs (else the one being rolled out).
fn config_schema(state: &ApiState, install: &PluginInstall) -> Option<Value> {
    let plugin = state.plugin_of(install)?;
    let status = install.status.clone().unwrap_or_default();
    let version = status.version.or(status.target_version)?;
    state
        .version_of(&plugin, &version)?
        .spec
        .config_schema
        .clone()
}

/// Checks a merged config against a schema (defaults applied); issues name `config.<field>`.
pub fn check_config(schema: &Value, config: &Value) -> std::result::Result<(), ApiError> {
    let validator = validate::compile_config_schema(schema)
        .map_err(|e| ApiError::Internal(format!("the version's configSchema: {}", e.message)))?;
    let mut value = config.clone();
    validate::apply_config_defaults(schema, &mut value);
    validate::validate_config(&validator, &value).map_err(|errors| {
        ApiError::Invalid(
            errors
                .into_iter()
                .map(|e| {
                    let field = e.field.strip_prefix("spec.").unwrap_or(&e.field).to_owned();
                    Issue::new(field, e.message)
                })
                .collect(),
        )
    })
}

/// Set (merge into) the install's config.
///
/// The body's items are merged into `spec.config` (JSON merge patch: `null` removes a key).
/// The result is checked against the running version's configSchema first: 400 naming the field,
/// and nothing is written. Answers the complete config. A plugin token of the install, or a
/// Kubernetes token allowed to `patch plugininstalls` on it.
#[utoipa::path(
    put,
    path = "/api/v2/plugin-services/installs/{installId}/config",
    tag = "seed 003",
    params(("installId" = String, Path, description = "The PluginInstall's metadata.uid")),
    request_body(content = Object, description = "Items to merge; `null` removes one"),
    responses(
        (status = 200, body = Object, description = "`{data: <complete config>}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_config(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Result<Json<Data<Value>>> {
    let install = caller
        .install(&state, "installId", &id, "patch", "plugininstalls")
        .await?;
    let items = Value::Object(json_object(request).await?);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    // The status changes often: a conflict on the resourceVersion means "read and check again".
    for _ in 0..5 {
        let current = fresh_install(&state, &install).await?;
        let mut merged = config_of(&current);
        json_patch::merge(&mut merged, &items);
        if let Some(schema) = config_schema(&state, &current) {
            check_config(&schema, &merged)?;
        }
        let api: Api<PluginInstall> = Api::namespaced(
            state.client().clone(),
            &current.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "spec": {"config": items},
        });
        match with_timeout(api.patch(&current.name_any(), &params, &Patch::Merge(&patch))).await {
            Ok(patched) => {
                return Ok(Json(Data {
                    data: config_of(&patched),
                }));
            }
            Err(err) if err.is_conflict() => {}
            Err(err) => return Err(kube_failed("patch PluginInstall")(err)),
        }
    }
    Err(ApiError::Conflict("the install changed concurrently too often; send again".into()).into())
}

// ---------------------------------------------------------------------------------------------
// storage

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value (as JSON), in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest storage (all keys and values as JSON), in bytes: a ConfigMap holds at most 1 MiB.
pub const MAX_STORAGE_BYTES: usize = 900 * 1024;
/// Most commands per request.
pub const MAX_COMMANDS: usize = 100;
/// The ConfigMap key that holds the storage (a JSON object).
pub const STORAGE_KEY: &str = "storage.json";
/// On a storage ConfigMap: `install/<name>` or `plugin/<name>`.
pub const STORAGE_SCOPE_ANNOTATION: &str = "plugin-operator.dev/storage-scope";

/// Whose storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageScope {
    /// Shared by every install of the plugin in the namespace.
    Plugin(String),
    /// One install's.
    Install(String),
}

/// The ConfigMap of a storage: `<plugin>-plugin-storage` or `<install>-storage`.
pub fn storage_config_map_name(scope: &StorageScope) -> String {
    match scope {
        StorageScope::Plugin(plugin) => format!("{plugin}-plugin-storage"),
        StorageScope::Install(install) => format!("{install}-storage"),
    }
}

fn scope_marker(scope: &StorageScope) -> String {
    match scope {
        StorageScope::Plugin(p) => format!("plugin/{p}"),
        StorageScope::Install(i) => format!("install/{i}"),
    }
}

/// One storage command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Get(String),
    Set(String, Value),
    Unset(String),
    List(String),
}

/// Reads the commands; every issue names `commands[i].field`.
pub fn parse_commands(body: &Map<String, Value>) -> std::result::Result<Vec<Command>, ApiError> {
    let Some(commands) = body.get("commands").filter(|v| !v.is_null()) else {
        return Err(ApiError::invalid("commands", "required"));
    };
    let Value::Array(commands) = commands else {
        return Err(ApiError::invalid(
            "commands",
            format!("expected an array, got {}", type_name(commands)),
        ));
    };
    if commands.len() > MAX_COMMANDS {
        return Err(ApiError::invalid(
            "commands",
            format!("at most {MAX_COMMANDS} commands per request"),
        ));
    }
    let mut issues = Vec::new();
    let mut parsed = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        let at = |name: &str| format!("commands[{index}].{name}");
        let Value::Object(command) = command else {
            issues.push(Issue::new(
                format!("commands[{index}]"),
                "expected an object",
            ));
            continue;
        };
        let action = command.get("action").and_then(Value::as_str);
        let key = match command.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(other) => {
                issues.push(Issue::new(
                    at("key"),
                    format!("expected a string, got {}", type_name(other)),
                ));
                continue;
            }
        };
        if let Some(k) = &key
            && k.len() > MAX_KEY_BYTES
        {
            issues.push(Issue::new(
                at("key"),
                format!("longer than {MAX_KEY_BYTES} bytes"),
            ));
            continue;
        }
        let needs_key = |issues: &mut Vec<Issue>| match &key {
            Some(k) if !k.is_empty() => Some(k.clone()),
            _ => {
                issues.push(Issue::new(at("key"), "required"));
                None
            }
        };
        match action {
            Some("get") => parsed.extend(needs_key(&mut issues).map(Command::Get)),
            Some("unset") => parsed.extend(needs_key(&mut issues).map(Command::Unset)),
            Some("list") => parsed.push(Command::List(key.clone().unwrap_or_default())),
            Some("set") => {
                let key = needs_key(&mut issues);
                match command.get("value") {
                    None | Some(Value::Null) => {
                        issues.push(Issue::new(at("value"), "required (unset removes a key)"));
                    }
                    Some(value) => {
                        let size = serde_json::to_vec(value).map_or(0, |v| v.len());
                        if size > MAX_VALUE_BYTES {
                            issues.push(Issue::new(
                                at("value"),
                                format!("{size} bytes: at most {MAX_VALUE_BYTES}"),
                            ));
                        } else if let Some(key) = key {
                            parsed.push(Command::Set(key, value.clone()));
                        }
                    }
                }
            }
            Some(other) => issues.push(Issue::new(
                at("action"),
                format!("{other:?}: one of get, set, unset, list"),
            )),
            None => issues.push(Issue::new(
                at("action"),
                "required: get, set, unset or list",
            )),
        }
    }
    if issues.is_empty() {
        Ok(parsed)
    } else {
        Err(ApiError::Invalid(issues))
    }
}

/// Runs the commands on a storage; answers one item per command and whether it changed.
pub fn run_commands(storage: &mut Map<String, Value>, commands: &[Command]) -> (Vec<Value>, bool) {
    let mut changed = false;
    let items = commands
        .iter()
        .map(|command| match command {
            Command::Get(key) => {
                json!({"key": key, "value": storage.get(key).cloned().unwrap_or(Value::Null)})
            }
            Command::Set(key, value) => {
                changed |= storage.get(key) != Some(value);
                storage.insert(key.clone(), value.clone());
                json!({"key": key, "value": value})
            }
            Command::Unset(key) => {
                let previous = storage.remove(key);
                changed |= previous.is_some();
                json!({"key": key, "value": previous.unwrap_or(Value::Null)})
            }
            Command::List(prefix) => {
                let keys: Vec<&String> = storage
                    .keys()
                    .filter(|k| k.starts_with(prefix.as_str()))
                    .collect();
                json!({"key": prefix, "value": keys})
            }
        })
        .collect();
    (items, changed)
}

/// Send commands to the key/value storage.
///
/// Needs a plugin token. Without `install_id` the storage is the plugin's (shared by its
/// installs in the namespace; ConfigMap `<plugin>-plugin-storage`), with it the install's
/// (`<install>-storage`, owned by the install; only the token's own install). Commands run in
/// order: `get` → the value or null, `set` → the value set, `unset` → the previous value or null,
/// `list` → the keys starting with `key`. Keys ≤ 256 bytes, values ≤ 64 KiB (400), the whole
/// storage ≤ 900 KiB (422). Writes carry the ConfigMap's resourceVersion; a concurrent write
/// makes the commands run again on the new state.
#[utoipa::path(
    post,
    path = "/api/v2/plugin-services/storage",
    tag = "seed 003",
    request_body(content = Object, description = "`{install_id?, commands: [{action, key, value}]}`"),
    responses(
        (status = 200, body = Object, description = "`{data: [{key, value}, …]}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn storage(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    request: Request,
) -> Result<Json<Data<Vec<Value>>>> {
    let own = caller.own_install(&state, "the storage")?;
    let body = json_object(request).await?;
    let commands = parse_commands(&body)?;
    let namespace = own.namespace().unwrap_or_default();
    let scope = match body.get("install_id") {
        None | Some(Value::Null) => {
            let plugin = state.plugin_of(&own).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "the plugin of install {} is not available",
                    own.name_any()
                ))
            })?;
            StorageScope::Plugin(plugin.name_any())
        }
        Some(Value::String(id)) => {
            caller
                .install(&state, "install_id", id, "get", "plugininstalls")
                .await?;
            StorageScope::Install(own.name_any())
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "install_id",
                format!("expected a string, got {}", type_name(other)),
            )
            .into());
        }
    };
    let name = storage_config_map_name(&scope);
    let api: Api<ConfigMap> = Api::namespaced(state.client().clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    for _ in 0..20 {
        let existing = with_timeout(api.get_opt(&name))
            .await
            .map_err(kube_failed("get the storage ConfigMap"))?;
        if let Some(cm) = &existing
            && cm.annotations().get(STORAGE_SCOPE_ANNOTATION) != Some(&scope_marker(&scope))
        {
            return Err(ApiError::Conflict(format!(
                "the ConfigMap {name} exists and is not this storage"
            ))
            .into());
        }
        let mut data: Map<String, Value> = existing
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(STORAGE_KEY))
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let (items, changed) = run_commands(&mut data, &commands);
        if !changed {
            return Ok(Json(Data { data: items }));
        }
        let text = serde_json::to_string(&data).unwrap_or_default();
        if text.len() > MAX_STORAGE_BYTES {
            return Err(ApiError::LimitExceeded(format!(
                "the storage would hold {} bytes: at most {MAX_STORAGE_BYTES}; unset some keys",
                text.len()
            ))
            .into());
        }
        let written = match existing {
            Some(mut cm) => {
                cm.data
                    .get_or_insert_with(Default::default)
                    .insert(STORAGE_KEY.to_owned(), text);
                with_timeout(api.replace(&name, &params, &cm)).await
            }
            None => {
                let (labels, owners) = match &scope {
                    StorageScope::Install(install) => (
                        names::child_labels(&plugin_name(&state, &own), install),
                        own.controller_owner_ref(&()).map(|r| vec![r]),
                    ),
                    StorageScope::Plugin(plugin) => (
                        BTreeMap::from([
                            (
                                labels::MANAGED_BY.to_owned(),
                                labels::MANAGED_BY_VALUE.to_owned(),
                            ),
                            (labels::PLUGIN.to_owned(), plugin.clone()),
                        ]),
                        None,
                    ),
                };
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        labels: Some(labels),
                        annotations: Some(BTreeMap::from([(
                            STORAGE_SCOPE_ANNOTATION.to_owned(),
                            scope_marker(&scope),
                        )])),
                        owner_references: owners,
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(STORAGE_KEY.to_owned(), text)])),
                    ..Default::default()
                };
                with_timeout(api.create(&params, &cm)).await
            }
        };
        match written {
            Ok(_) => return Ok(Json(Data { data: items })),
            Err(err) if err.is_conflict() => {}
            Err(err) => return Err(kube_failed("write the storage ConfigMap")(err)),
        }
    }
    Err(ApiError::Conflict("the storage changed concurrently too often; send again".into()).into())
}

fn plugin_name(state: &ApiState, install: &PluginInstall) -> String {
    state
        .plugin_of(install)
        .map(|p| p.name_any())
        .or_else(|| install.labels().get(labels::PLUGIN).cloned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// jobs

/// `{id, name, identifier}` of a job.
#[derive(Serialize, ToSchema)]
pub struct JobRef {
    /// The PluginJob's metadata.uid.
    pub id: String,
    pub name: String,
    pub identifier: String,
}

impl JobRef {
    fn of(job: &PluginJob) -> Self {
        Self {
            id: job.meta().uid.clone().unwrap_or_default(),
            name: job.spec.name.clone(),
            identifier: job.spec.identifier.clone(),
        }
    }
}

fn required_str(body: &Map<String, Value>, name: &str, issues: &mut Vec<Issue>) -> Option<String> {
    match body.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_)) => {
            issues.push(Issue::new(name, "required: must not be empty"));
            None
        }
        None | Some(Value::Null) => {
            issues.push(Issue::new(name, "required"));
            None
        }
        Some(other) => {
            issues.push(Issue::new(
                name,
                format!("expected a string, got {}", type_name(other)),
            ));
            None
        }
    }
}

/// Create a job for an install.
///
/// A Kubernetes token allowed to `create pluginjobs` in the install's namespace, or the
/// install's own plugin token. The job is a PluginJob in the install's namespace, owned by it
/// (`kubectl get plgj`), `pending` until the plugin settles it.
#[utoipa::path(
    post,
    path = "/api/v2/plugin-services/jobs",
    tag = "seed 003",
    request_body(content = Object, description = "`{install_id, name, identifier, payload}`"),
    responses(
        (status = 201, body = Object, description = "`{data: {id, name, identifier}}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_job(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    request: Request,
) -> Result<(StatusCode, Json<Data<JobRef>>)> {
    let body = json_object(request).await?;
    let mut issues = Vec::new();
    let install_id = required_str(&body, "install_id", &mut issues);
    let name = required_str(&body, "name", &mut issues);
    let identifier = required_str(&body, "identifier", &mut issues);
    let payload = match body.get("payload") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(Value::Object(o.clone())),
        Some(other) => {
            issues.push(Issue::new(
                "payload",
                format!("expected an object, got {}", type_name(other)),
            ));
            None
        }
    };
    let (Some(install_id), Some(name), Some(identifier), true) =
        (install_id, name, identifier, issues.is_empty())
    else {
        return Err(ApiError::Invalid(issues).into());
    };
    let install = caller
        .install(&state, "install_id", &install_id, "create", "pluginjobs")
        .await?;
    let namespace = install.namespace().unwrap_or_default();
    let install_name = install.name_any();
    let mut job = PluginJob::new(
        "",
        PluginJobSpec {
            install: install_name.clone(),
            name,
            identifier,
            payload,
        },
    );
    job.metadata = ObjectMeta {
        generate_name: Some(format!("{install_name}-")),
        namespace: Some(namespace.clone()),
        labels: Some(names::child_labels(
            &plugin_name(&state, &install),
            &install_name,
        )),
        owner_references: install.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    let api: Api<PluginJob> = Api::namespaced(state.client().clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let created = with_timeout(api.create(&params, &job))
        .await
        .map_err(kube_failed("create PluginJob"))?;
    let status = json!({"status": PluginJobStatus::default()});
    let patch_params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    // The status starts `pending` (best effort: an absent status reads as pending too).
    if let Err(err) =
        with_timeout(api.patch_status(&created.name_any(), &patch_params, &Patch::Merge(&status)))
            .await
    {
        tracing::warn!(job = %created.name_any(), %namespace, error = %err, "could not mark the job pending");
    }
    Ok((
        StatusCode::CREATED,
        Json(Data {
            data: JobRef::of(&created),
        }),
    ))
}

/// Parses a settle body.
pub fn parse_settle(body: &Map<String, Value>) -> std::result::Result<PluginJobStatus, ApiError> {
    let mut issues = Vec::new();
    let status = match required_str(body, "status", &mut issues).as_deref() {
        Some("done") => Some(JobStatus::Done),
        Some("ignored") => Some(JobStatus::Ignored),
        Some("failed") => Some(JobStatus::Failed),
        Some(other) => {
            issues.push(Issue::new(
                "status",
                format!("{other:?}: one of done, ignored, failed"),
            ));
            None
        }
        None => None,
    };
    let status_message = required_str(body, "status_message", &mut issues);
    let failure_reason = match body.get("failure_reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            issues.push(Issue::new(
                "failure_reason",
                format!("expected a string, got {}", type_name(other)),
            ));
            None
        }
    };
    let mut attachments = Vec::new();
    match body.get("attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let Value::Object(item) = item else {
                    issues.push(Issue::new(
                        format!("attachments[{index}]"),
                        "expected an object",
                    ));
                    continue;
                };
                let mut inner = Vec::new();
                let label = required_str(item, "label", &mut inner);
                let type_ = required_str(item, "type", &mut inner);
                let value = match item.get("value") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                issues.extend(
                    inner.into_iter().map(|i| {
                        Issue::new(format!("attachments[{index}].{}", i.field), i.message)
                    }),
                );
                if let (Some(label), Some(type_)) = (label, type_) {
                    attachments.push(Attachment {
                        label,
                        type_,
                        value,
                    });
                }
            }
        }
        Some(other) => issues.push(Issue::new(
            "attachments",
            format!("expected an array, got {}", type_name(other)),
        )),
    }
    match (status, issues.is_empty()) {
        (Some(status), true) => Ok(PluginJobStatus {
            status,
            status_message,
            failure_reason,
            attachments,
        }),
        _ => Err(ApiError::Invalid(issues)),
    }
}

/// Settle a job.
///
/// Needs the plugin token of the job's install. Writes the PluginJob's status (`done`,
/// `ignored` or `failed`, `status_message`, `failure_reason`, `attachments`).
#[utoipa::path(
    patch,
    path = "/api/v2/plugin-services/jobs/{jobId}",
    tag = "seed 003",
    params(("jobId" = String, Path, description = "The PluginJob's metadata.uid")),
    request_body(content = Object, description = "`{status, status_message, failure_reason?, attachments?}`"),
    responses(
        (status = 200, body = Object, description = "`{data: {id, name, identifier}}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn settle_job(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Result<Json<Data<JobRef>>> {
    let own = caller.own_install(&state, "settling a job")?;
    if !is_uid(&id) {
        return Err(ApiError::invalid("jobId", format!("{id:?} is not a job id (a UUID)")).into());
    }
    let body = json_object(request).await?;
    let status = parse_settle(&body)?;
    let namespace = own.namespace().unwrap_or_default();
    let api: Api<PluginJob> = Api::namespaced(state.client().clone(), &namespace);
    let jobs = with_timeout(api.list(&ListParams::default()))
        .await
        .map_err(kube_failed("list PluginJobs"))?;
    let job = jobs
        .items
        .into_iter()
        .find(|j| j.meta().uid.as_deref() == Some(id.as_str()))
        .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))?;
    if job.spec.install != own.name_any() {
        return Err(ApiError::Forbidden(format!(
            "job {id} belongs to another install; a plugin token settles only its own install's jobs"
        ))
        .into());
    }
    let patch = json!({"status": status});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let patched = with_timeout(api.patch_status(&job.name_any(), &params, &Patch::Merge(&patch)))
        .await
        .map_err(kube_failed("patch PluginJob status"))?;
    Ok(Json(Data {
        data: JobRef::of(&patched),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(o) => o,
            _ => panic!("an object"),
        }
    }

    #[test]
    fn storage_commands_run_in_order() {
        let commands = parse_commands(&object(json!({"commands": [
            {"action": "set", "key": "a/1", "value": "x"},
            {"action": "set", "key": "a/2", "value": {"n": 2}},
            {"action": "set", "key": "b", "value": 3},
            {"action": "get", "key": "a/1"},
            {"action": "list", "key": "a/"},
            {"action": "unset", "key": "a/1"},
            {"action": "unset", "key": "a/1"},
            {"action": "get", "key": "nope"},
        ]})))
        .expect("valid");
        let mut storage = Map::new();
        let (items, changed) = run_commands(&mut storage, &commands);
        assert!(changed);
        let values: Vec<Value> = items.iter().map(|i| i["value"].clone()).collect();
        assert_eq!(
            values,
            [
                json!("x"),
                json!({"n": 2}),
                json!(3),
                json!("x"),
                json!(["a/1", "a/2"]),
                json!("x"),
                Value::Null,
                Value::Null
            ]
        );
        let (_, changed) = run_commands(&mut storage, &[Command::Get("b".into())]);
        assert!(!changed);
    }

    #[test]
    fn bad_storage_commands_name_their_field() {
        let field = |body: Value| {
            parse_commands(&object(body))
                .expect_err("invalid")
                .field()
                .map(str::to_owned)
        };
        assert_eq!(field(json!({})).as_deref(), Some("commands"));
        assert_eq!(field(json!({"commands": {}})).as_deref(), Some("commands"));
        assert_eq!(
            field(json!({"commands": [{"action": "drop", "key": "a"}]})).as_deref(),
            Some("commands[0].action")
        );
        assert_eq!(
            field(json!({"commands": [{"action": "get"}]})).as_deref(),
            Some("commands[0].key")
        );
        assert_eq!(
            field(json!({"commands": [{"action": "set", "key": "a"}]})).as_deref(),
            Some("commands[0].value")
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            field(json!({"commands": [{"action": "get", "key": long}]})).as_deref(),
            Some("commands[0].key")
        );
        let big = "v".repeat(MAX_VALUE_BYTES);
        assert_eq!(
            field(json!({"commands": [{"action": "set", "key": "a", "value": big}]})).as_deref(),
            Some("commands[0].value")
        );
    }

    #[test]
    fn settle_bodies() {
        let ok = parse_settle(&object(json!({
            "status": "failed", "status_message": "m", "failure_reason": "r",
            "attachments": [{"label": "l", "type": "url", "value": "https://x"}]
        })))
        .expect("valid");
        assert_eq!(ok.status, JobStatus::Failed);
        assert_eq!(ok.attachments[0].type_, "url");
        let err = parse_settle(&object(json!({"status": "pending"}))).expect_err("invalid");
        let fields: Vec<_> = err.issues().iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["status", "status_message"]);
        let err = parse_settle(&object(json!({"status": "done", "status_message": "m",
            "attachments": [{"label": "l"}]})))
        .expect_err("invalid");
        assert_eq!(err.field(), Some("attachments[0].type"));
    }

    #[test]
    fn config_checks_name_the_field() {
        let schema =
            json!({"type": "object", "properties": {"retries": {"type": "integer", "maximum": 5}}});
        assert!(check_config(&schema, &json!({"retries": 3})).is_ok());
        let err = check_config(&schema, &json!({"retries": 9})).expect_err("invalid");
        assert_eq!(err.field(), Some("config.retries"));
    }

    #[test]
    fn identities() {
        assert_eq!(
            service_account_of("system:serviceaccount:ns:inst"),
            Some(("ns".to_owned(), "inst".to_owned()))
        );
        assert_eq!(service_account_of("alice"), None);
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = format!(
            "h.{}.s",
            engine.encode(json!({"aud": [AUDIENCE]}).to_string())
        );
        assert_eq!(jwt_audiences(&jwt), [AUDIENCE]);
        assert!(jwt_audiences("opaque").is_empty());
        assert_eq!(
            storage_config_map_name(&StorageScope::Plugin("p".into())),
            "p-plugin-storage"
        );
    }
}
