//! Answers seed 001 (a plugin registry per account): list and register the Plugins of a namespace
//! (`account_id`), get and delete one by id (the Plugin's `metadata.uid`).
//!
//! Errors: 400 `{code, errors: [...]}` listing every issue, else `{code, error}`.
use std::sync::Arc;

use axum::{Json, extract::State};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, PostParams, Preconditions},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::{
    ApiState,
    backend::Access,
    error::{ApiError, ErrorShape, SeedError},
    extract::{Authenticated, Fields, FromJson, JsonBody, SeedPath},
    is_namespace_name,
};
use crate::{
    resources::names::FIELD_MANAGER,
    resources::{Plugin, PluginSpec, PluginVersion, PluginVersionSpec, VersionAttribution},
    runtime::cache,
    runtime::call::with_timeout,
};

/// Annotations that keep what the seed registers and a Plugin has no field for.
pub mod annotations {
    /// The `version` given at registration, shown until the plugin has a formal version.
    pub const REGISTERED_VERSION: &str = "plugin-operator.dev/registered-version";
    /// `spec.componentId`.
    pub const COMPONENT_ID: &str = "plugin-operator.dev/component-id";
    /// `spec.componentRevision`.
    pub const COMPONENT_REVISION: &str = "plugin-operator.dev/component-revision";
}

/// Longest plugin name: it becomes a label value.
pub const NAME_MAX: usize = 63;

/// Seed 001's 400 body.
#[derive(Serialize, ToSchema)]
pub struct InvalidBody {
    /// `BAD_REQUEST`.
    pub code: &'static str,
    /// Every issue found, each `field: what is wrong`.
    pub errors: Vec<String>,
}

/// Seed 001's body of every other error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `ALREADY_EXISTS`, `LIMIT_EXCEEDED`,
    /// `UNAVAILABLE` or `INTERNAL_ERROR`.
    pub code: &'static str,
    pub error: String,
}

/// Seed 001's error shape: a 400 lists every issue, any other error says what went wrong.
pub struct Errors;

#[derive(Serialize)]
#[serde(untagged)]
enum Body {
    Invalid(InvalidBody),
    Other(ErrorBody),
}

impl ErrorShape for Errors {
    fn body(err: &ApiError) -> impl Serialize {
        let code = match err {
            ApiError::Invalid(issues) => {
                return Body::Invalid(InvalidBody {
                    code: "BAD_REQUEST",
                    errors: issues.iter().map(ToString::to_string).collect(),
                });
            }
            ApiError::Unauthenticated(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Conflict(_) => "ALREADY_EXISTS",
            ApiError::LimitExceeded(_) => "LIMIT_EXCEEDED",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        };
        Body::Other(ErrorBody {
            code,
            error: err.to_string(),
        })
    }
}

type Result<T> = std::result::Result<T, SeedError<Errors>>;

/// A registered plugin.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginDto {
    /// The Plugin's `metadata.uid`.
    pub id: String,
    /// The namespace.
    pub account_id: String,
    pub name: String,
    /// The newest formal version (`status.latestVersion`), else the version given at
    /// registration, else empty.
    pub version: String,
    pub description: String,
    pub icon: String,
    pub homepage: String,
    pub spec: PluginDtoSpec,
}

#[derive(Debug, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginDtoSpec {
    /// `spec.type` of the Plugin, e.g. `OplogProcessor`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// As registered; null when unknown.
    pub component_id: Option<String>,
    /// As registered; null when unknown.
    pub component_revision: Option<i64>,
}

/// The list of plugins.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    pub values: Vec<PluginDto>,
}

impl PluginDto {
    pub fn from_plugin(plugin: &Plugin) -> Self {
        let annotations = plugin.annotations();
        let version = plugin
            .status
            .as_ref()
            .and_then(|s| s.latest_version.clone())
            .or_else(|| annotations.get(annotations::REGISTERED_VERSION).cloned())
            .unwrap_or_default();
        Self {
            id: plugin.meta().uid.clone().unwrap_or_default(),
            account_id: plugin.namespace().unwrap_or_default(),
            name: plugin.name_any(),
            version,
            description: plugin.spec.description.clone().unwrap_or_default(),
            icon: plugin.spec.icon.clone().unwrap_or_default(),
            homepage: plugin.spec.homepage.clone().unwrap_or_default(),
            spec: PluginDtoSpec {
                plugin_type: plugin.spec.plugin_type.clone().unwrap_or_default(),
                component_id: annotations.get(annotations::COMPONENT_ID).cloned(),
                component_revision: annotations
                    .get(annotations::COMPONENT_REVISION)
                    .and_then(|r| r.parse().ok()),
            },
        }
    }
}

/// The body of a registration.
#[derive(Debug, ToSchema)]
pub struct RegisterPlugin {
    /// The Plugin's name: lowercase letters, digits and `-`, at most 63, starting and ending
    /// with a letter or digit.
    pub name: String,
    /// A semantic version (`1.4.0`). Kept as an annotation and shown as `version` until the
    /// plugin has a formal PluginVersion; a draft PluginVersion of that number is created with
    /// the plugin (needs `create pluginversions` too), so it can be installed by exact version
    /// once its execution is filled in.
    #[schema(nullable = false)]
    pub version: Option<String>,
    #[schema(nullable = false)]
    pub description: Option<String>,
    #[schema(nullable = false)]
    pub icon: Option<String>,
    #[schema(nullable = false)]
    pub homepage: Option<String>,
    pub spec: RegisterPluginSpec,
}

#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterPluginSpec {
    /// Becomes the Plugin's `spec.type`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[schema(nullable = false)]
    pub component_id: Option<String>,
    #[schema(nullable = false)]
    pub component_revision: Option<i64>,
}

/// Whether `name` can name a Plugin (a DNS label: it is also a label value).
pub fn check_plugin_name(name: &str) -> std::result::Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid plugin name: lowercase letters, digits and '-', at most \
             {NAME_MAX}, starting and ending with a letter or digit"
        ))
    }
}

impl FromJson for RegisterPlugin {
    fn from_json(f: &mut Fields<'_>) -> Option<Self> {
        let name = f.required_str("name");
        if let Some(name) = &name
            && let Err(message) = check_plugin_name(name)
        {
            f.issue("name", message);
        }
        let version = f.optional_str("version");
        let description = f.optional_str("description");
        let icon = f.optional_str("icon");
        let homepage = f.optional_str("homepage");
        let spec = f.object("spec", true, |s| {
            let plugin_type = s.required_str("type");
            let component_id = s.optional_str("componentId");
            let component_revision = s.optional_i64("componentRevision");
            if component_revision.is_some_and(|r| r < 0) {
                s.issue("componentRevision", "must be 0 or more");
            }
            Some(RegisterPluginSpec {
                plugin_type: plugin_type?,
                component_id,
                component_revision,
            })
        });
        Some(Self {
            name: name?,
            version,
            description,
            icon,
            homepage,
            spec: spec?,
        })
    }
}

fn check_account(account: &str) -> std::result::Result<(), ApiError> {
    if is_namespace_name(account) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "account_id",
            format!("{account:?} is not a namespace name"),
        ))
    }
}

/// List all plugins registered in account. Needs `list plugins` in the namespace.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/plugins",
    tag = "seed 001",
    params(("account_id" = String, Path, description = "The namespace")),
    responses(
        (status = 200, body = PluginList),
        (status = 400, body = InvalidBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_plugins(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
) -> Result<Json<PluginList>> {
    let account = path.value;
    check_account(&account)?;
    state
        .auth()
        .authorize(&auth.caller, &Access::new("list", "plugins", &account))
        .await?;
    let mut plugins = cache::select(&state.caches().plugins, |p| {
        cache::in_namespace(p, &account)
    });
    plugins.sort_by_key(|p| p.name_any());
    Ok(Json(PluginList {
        values: plugins.iter().map(|p| PluginDto::from_plugin(p)).collect(),
    }))
}

/// Register a new plugin: creates a Plugin in the namespace. 409 when one of that name exists;
/// 422 when a ResourceQuota on `count/plugins.plugin-operator.dev` is used up. Needs
/// `create plugins` in the namespace.
#[utoipa::path(
    post,
    path = "/v1/accounts/{account_id}/plugins",
    tag = "seed 001",
    params(("account_id" = String, Path, description = "The namespace")),
    request_body = RegisterPlugin,
    responses(
        (status = 200, body = PluginDto),
        (status = 400, body = InvalidBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "A tenant's limit is exceeded"),
        (status = 500, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn register_plugin(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
    body: JsonBody<RegisterPlugin, Errors>,
) -> Result<Json<PluginDto>> {
    let account = path.value;
    check_account(&account)?;
    state
        .auth()
        .authorize(&auth.caller, &Access::new("create", "plugins", &account))
        .await?;
    let request = body.value;
    if let Some(version) = &request.version {
        if semver::Version::parse(version).is_err() {
            return Err(ApiError::invalid(
                "version",
                format!("{version:?} is not a semantic version such as 1.4.0"),
            )
            .into());
        }
        state
            .auth()
            .authorize(
                &auth.caller,
                &Access::new("create", "pluginversions", &account),
            )
            .await?;
    }
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(version) = &request.version {
        annotations.insert(annotations::REGISTERED_VERSION.to_owned(), version.clone());
    }
    if let Some(id) = &request.spec.component_id {
        annotations.insert(annotations::COMPONENT_ID.to_owned(), id.clone());
    }
    if let Some(revision) = request.spec.component_revision {
        annotations.insert(
            annotations::COMPONENT_REVISION.to_owned(),
            revision.to_string(),
        );
    }
    let plugin = Plugin {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            namespace: Some(account.clone()),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            ..Default::default()
        },
        spec: PluginSpec {
            description: request.description,
            icon: request.icon,
            homepage: request.homepage,
            plugin_type: Some(request.spec.plugin_type),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<Plugin> = Api::namespaced(state.client().clone(), &account);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let created = with_timeout(api.create(&params, &plugin))
        .await
        .map_err(|e| match ApiError::from_kube("create Plugin", &e) {
            ApiError::Conflict(_) => ApiError::Conflict(format!(
                "a plugin named {:?} already exists in account {account:?}",
                request.name
            )),
            ApiError::LimitExceeded(message) => {
                ApiError::LimitExceeded(format!("the account's plugin limit is reached: {message}"))
            }
            ApiError::NotFound(message) => {
                ApiError::NotFound(format!("account {account:?} not found: {message}"))
            }
            other => other,
        })?;
    if let Some(version) = &request.version
        && let Err(err) = create_draft(&state, &created, version).await
    {
        // All or nothing: the registration failed, so the Plugin goes too (guarded by its uid).
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: created.uid(),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Err(error) = with_timeout(api.delete(&request.name, &params)).await {
            tracing::warn!(%account, name = %request.name, %error, "cannot remove the Plugin of a failed registration");
        }
        return Err(err);
    }
    // The other routes find a plugin by id in the cache: answer once it is there, so that a
    // caller can delete or read what it just registered.
    if let Some(uid) = created.uid() {
        let plugins = &state.caches().plugins;
        if !cache::seen(
            plugins,
            &account,
            &request.name,
            &uid,
            cache::READ_YOUR_WRITE,
        )
        .await
        {
            tracing::warn!(%account, name = %request.name, "registered plugin not yet in the cache");
        }
    }
    Ok(Json(PluginDto::from_plugin(&created)))
}

/// The draft PluginVersion `<plugin>-<version>` of a registration, owned by the Plugin (deleted
/// with it). One that exists already (left from an earlier plugin of that name) is kept.
async fn create_draft(state: &ApiState, plugin: &Plugin, version: &str) -> Result<()> {
    let namespace = plugin.namespace().unwrap_or_default();
    let name = format!("{}-{}", plugin.name_any(), version.replace('+', "-")).to_lowercase();
    let draft = PluginVersion {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            owner_references: plugin.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: PluginVersionSpec {
            plugin: plugin.name_any(),
            version: version.to_owned(),
            attribution: VersionAttribution::Draft,
            ..Default::default()
        },
        status: None,
    };
    let api: Api<PluginVersion> = Api::namespaced(state.client().clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match with_timeout(api.create(&params, &draft)).await {
        Ok(_) => Ok(()),
        Err(err) if err.is_conflict() => {
            tracing::info!(%namespace, version = %name, "the registration's draft version exists already; kept");
            Ok(())
        }
        Err(err) => Err(ApiError::from_kube("create the draft PluginVersion", &err).into()),
    }
}

/// A plugin by id, after checking the caller may `verb` it.
async fn find(
    state: &ApiState,
    caller: &crate::api::auth::Caller,
    id: &str,
    verb: &'static str,
) -> std::result::Result<Arc<Plugin>, ApiError> {
    if !crate::api::is_uid(id) {
        return Err(ApiError::invalid(
            "plugin_id",
            format!("{id:?} is not a plugin id (a UUID)"),
        ));
    }
    let plugin = cache::select(&state.caches().plugins, |p| {
        p.meta().uid.as_deref() == Some(id)
    })
    .into_iter()
    .next()
    .ok_or_else(|| ApiError::NotFound(format!("no plugin with id {id}")))?;
    let namespace = plugin.namespace().unwrap_or_default();
    state
        .auth()
        .authorize(
            caller,
            &Access::new(verb, "plugins", &namespace).named(&plugin.name_any()),
        )
        .await?;
    Ok(plugin)
}

/// Get a plugin by id. Needs `get plugins` on it.
#[utoipa::path(
    get,
    path = "/v1/plugins/{plugin_id}",
    tag = "seed 001",
    params(("plugin_id" = String, Path, description = "The Plugin's metadata.uid")),
    responses(
        (status = 200, body = PluginDto),
        (status = 400, body = InvalidBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_plugin(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
) -> Result<Json<PluginDto>> {
    let plugin = find(&state, &auth.caller, &path.value, "get").await?;
    Ok(Json(PluginDto::from_plugin(&plugin)))
}

/// Delete a plugin by id; answers with the plugin as it was. Needs `delete plugins` on it.
#[utoipa::path(
    delete,
    path = "/v1/plugins/{plugin_id}",
    tag = "seed 001",
    params(("plugin_id" = String, Path, description = "The Plugin's metadata.uid")),
    responses(
        (status = 200, body = PluginDto),
        (status = 400, body = InvalidBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_plugin(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
) -> Result<Json<PluginDto>> {
    let plugin = find(&state, &auth.caller, &path.value, "delete").await?;
    let api: Api<Plugin> = Api::namespaced(
        state.client().clone(),
        &plugin.namespace().unwrap_or_default(),
    );
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: plugin.meta().uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    with_timeout(api.delete(&plugin.name_any(), &params))
        .await
        .map_err(|e| match ApiError::from_kube("delete Plugin", &e) {
            // The uid precondition failed: that plugin is gone, another has its name.
            ApiError::Conflict(_) => {
                ApiError::NotFound(format!("no plugin with id {}", path.value))
            }
            other => other,
        })?;
    Ok(Json(PluginDto::from_plugin(&plugin)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use serde_json::{Value, json};

    fn parse(value: Value) -> std::result::Result<RegisterPlugin, Vec<String>> {
        let Value::Object(object) = value else {
            panic!("object")
        };
        let mut fields = Fields::new(&object);
        let parsed = RegisterPlugin::from_json(&mut fields);
        match fields.finish() {
            Ok(()) => Ok(parsed.expect("parsed")),
            Err(err) => Err(err.issues().iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn a_registration_lists_every_issue() {
        let errors = parse(json!({
            "name": "Bad_Name", "version": 2, "icon": [],
            "spec": {"componentId": 5, "componentRevision": -1}
        }))
        .expect_err("invalid");
        assert_eq!(
            errors,
            [
                "name: \"Bad_Name\" is not a valid plugin name: lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit",
                "version: expected a string, got an integer",
                "icon: expected a string, got an array",
                "spec.type: required",
                "spec.componentId: expected a string, got an integer",
                "spec.componentRevision: must be 0 or more",
            ]
        );
        assert_eq!(
            parse(json!({})).expect_err("empty"),
            ["name: required", "spec: required"]
        );
        let ok = parse(json!({
            "name": "oplog-1", "spec": {"type": "OplogProcessor", "componentRevision": 0}
        }))
        .expect("valid");
        assert_eq!(ok.spec.component_revision, Some(0));
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(check_plugin_name("a").is_ok());
        assert!(check_plugin_name(&"a".repeat(63)).is_ok());
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(check_plugin_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plugin_reads_as_the_seed_shows_it() {
        let plugin: Plugin = serde_json::from_value(json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": "oplog", "namespace": "acme", "uid": "497f6eca-6276-4993-bfeb-53cbbbba6f08",
                "annotations": {
                    "plugin-operator.dev/registered-version": "0.1.0",
                    "plugin-operator.dev/component-id": "616ccd92-d666-4180-8349-8d125b269fac",
                    "plugin-operator.dev/component-revision": "3"}},
            "spec": {"type": "OplogProcessor", "description": "d"}
        }))
        .expect("plugin");
        let dto = serde_json::to_value(PluginDto::from_plugin(&plugin)).expect("json");
        assert_eq!(
            dto,
            json!({
                "id": "497f6eca-6276-4993-bfeb-53cbbbba6f08", "accountId": "acme", "name": "oplog",
                "version": "0.1.0", "description": "d", "icon": "", "homepage": "",
                "spec": {"type": "OplogProcessor", "componentId": "616ccd92-d666-4180-8349-8d125b269fac", "componentRevision": 3}
            })
        );
    }

    #[test]
    fn errors_have_the_seed_shapes() {
        let response =
            SeedError::<Errors>::new(ApiError::Invalid(vec![crate::api::error::Issue::new(
                "name", "required",
            )]))
            .into_response();
        assert_eq!(response.status().as_u16(), 400);
        let response =
            SeedError::<Errors>::new(ApiError::LimitExceeded("quota".into())).into_response();
        assert_eq!(response.status().as_u16(), 422);
    }
}
