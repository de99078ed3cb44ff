//! Answers seed 000 (a plugin manager's gRPC API over HTTP): where to reach a plugin's installs
//! (endpoints), and reports of their failures. `plugin_id` is the Plugin's name, `domain_id` the namespace of the installs.
//!
//! Errors: `{code, message, field?}` with SpaceONE-style codes (`ERROR_REQUIRED_PARAMETER`,
//! `ERROR_INVALID_ARGUMENT`, `ERROR_AUTHENTICATE_FAILURE`, `ERROR_PERMISSION_DENIED`,
//! `ERROR_NOT_FOUND`, `ERROR_PLUGIN_NOT_READY`, …); the seed defines no error body of its own.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use moka::sync::Cache;
use semver::Version;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::api::{
    ApiState,
    backend::{Access, Backend, IssuedToken},
    error::{ApiError, ErrorShape, SeedError},
    extract::{Authenticated, Fields, FromJson, JsonBody, SeedPath},
    is_namespace_name,
};
use crate::{
    lifecycle::access,
    resources::{
        Phase, PluginInstall, UpgradeMode, VersionSelector,
        names::{FIELD_MANAGER, annotations},
    },
    runtime::{cache, call::with_timeout},
};

/// Lifetime of a plugin access token (the API server's minimum for TokenRequest).
pub const ACCESS_TOKEN_SECONDS: i64 = 600;
/// Seconds a caller waits before asking again for a plugin that is not Active yet.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// The audience of the access tokens for a plugin's installs in a namespace: plugins verify
/// tokens with a TokenReview for this audience.
pub fn audience(namespace: &str, plugin: &str) -> String {
    format!("plugin-operator.dev/{namespace}/{plugin}")
}

/// Seed 000's error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `ERROR_REQUIRED_PARAMETER`, `ERROR_INVALID_ARGUMENT`, `ERROR_AUTHENTICATE_FAILURE`,
    /// `ERROR_PERMISSION_DENIED`, `ERROR_NOT_FOUND`, `ERROR_CONFLICT`, `ERROR_LIMIT_EXCEEDED`,
    /// `ERROR_PLUGIN_NOT_READY` or `ERROR_INTERNAL`.
    pub code: &'static str,
    pub message: String,
    /// The request field that is wrong (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Seed 000's error shape.
pub struct Errors;

impl ErrorShape for Errors {
    fn body(err: &ApiError) -> impl Serialize {
        let code = match err {
            ApiError::Invalid(issues)
                if issues.iter().all(|i| i.message.starts_with("required")) =>
            {
                "ERROR_REQUIRED_PARAMETER"
            }
            ApiError::Invalid(_) => "ERROR_INVALID_ARGUMENT",
            ApiError::Unauthenticated(_) => "ERROR_AUTHENTICATE_FAILURE",
            ApiError::Forbidden(_) => "ERROR_PERMISSION_DENIED",
            ApiError::NotFound(_) => "ERROR_NOT_FOUND",
            ApiError::Conflict(_) => "ERROR_CONFLICT",
            ApiError::LimitExceeded(_) => "ERROR_LIMIT_EXCEEDED",
            ApiError::Unavailable { .. } => "ERROR_PLUGIN_NOT_READY",
            ApiError::Internal(_) => "ERROR_INTERNAL",
        };
        ErrorBody {
            code,
            message: err.message(),
            field: err.field().map(str::to_owned),
        }
    }
}

type Result<T> = std::result::Result<T, SeedError<Errors>>;

/// `PluginEndpointRequest`.
#[derive(Debug, ToSchema)]
pub struct PluginEndpointRequest {
    /// The Plugin's name; must equal the path's.
    pub plugin_id: String,
    /// The running version to pick: exact (`1.4.0`) or a range (`^1.3`). Any when empty.
    #[schema(nullable = false)]
    pub version: Option<String>,
    /// Labels the install must have (all of them), e.g. `{"team": "billing"}`.
    #[schema(value_type = Object)]
    pub labels: BTreeMap<String, String>,
    /// The namespace of the install.
    pub domain_id: String,
    /// `MANUAL` or `AUTO`: only installs with this `spec.upgradeMode`.
    #[schema(nullable = false, value_type = Option<String>)]
    pub upgrade_mode: Option<UpgradeMode>,
}

impl FromJson for PluginEndpointRequest {
    fn from_json(f: &mut Fields<'_>) -> Option<Self> {
        let plugin_id = f.required_str("plugin_id");
        let version = f.optional_str("version");
        if let Some(v) = &version
            && let Err(err) = VersionSelector::parse(v)
        {
            f.issue("version", err);
        }
        let labels = f
            .object("labels", false, |l| {
                let mut labels = BTreeMap::new();
                let entries: Vec<_> = l.entries().collect();
                for (key, value) in entries {
                    match value {
                        Value::String(s) => {
                            labels.insert(key.clone(), s.clone());
                        }
                        Value::Number(_) | Value::Bool(_) => {
                            labels.insert(key.clone(), value.to_string());
                        }
                        other => l.issue(
                            key,
                            format!(
                                "expected a string, got {}",
                                crate::api::extract::type_name(other)
                            ),
                        ),
                    }
                }
                Some(labels)
            })
            .unwrap_or_default();
        let domain_id = f.required_str("domain_id");
        if let Some(d) = &domain_id
            && !is_namespace_name(d)
        {
            f.issue("domain_id", format!("{d:?} is not a namespace name"));
        }
        let upgrade_mode = match f.optional_str("upgrade_mode") {
            None => None,
            Some(mode) if mode.eq_ignore_ascii_case("manual") => Some(UpgradeMode::Manual),
            Some(mode) if mode.eq_ignore_ascii_case("auto") => Some(UpgradeMode::Auto),
            Some(mode) => {
                f.issue(
                    "upgrade_mode",
                    format!("{mode:?} is neither MANUAL nor AUTO"),
                );
                None
            }
        };
        Some(Self {
            plugin_id: plugin_id?,
            version,
            labels,
            domain_id: domain_id?,
            upgrade_mode,
        })
    }
}

/// `PluginEndpoint`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginEndpoint {
    /// Where the plugin is reached (its Service, or an external plugin's URL).
    pub endpoint: String,
    /// A token for the plugin: a ServiceAccount token of the install with the audience
    /// `plugin-operator.dev/<namespace>/<plugin>`, valid for 10 minutes; for external plugins
    /// too (the plugin verifies its callers with a TokenReview for that audience).
    pub access_token: String,
    /// A newer version the install may move to (`status.availableVersion`), or empty.
    pub updated_version: String,
}

/// `PluginFailureRequest`.
#[derive(Debug, ToSchema)]
pub struct PluginFailureRequest {
    /// Who reports the failure; recorded in the install's `status.lastFailure.reportedBy`.
    pub supervisor_id: String,
    /// The Plugin's name; must equal the path's.
    pub plugin_id: String,
    /// The running version that failed (exact, e.g. `1.4.0`).
    #[schema(value_type = String)]
    pub version: Version,
    /// The namespace of the install.
    pub domain_id: String,
}

impl FromJson for PluginFailureRequest {
    fn from_json(f: &mut Fields<'_>) -> Option<Self> {
        let supervisor_id = f.required_str("supervisor_id");
        let plugin_id = f.required_str("plugin_id");
        let version = f.required_str("version").and_then(|v| {
            Version::parse(v.trim_start_matches('v'))
                .map_err(|err| {
                    f.issue(
                        "version",
                        format!("{v:?} is not a version such as 1.4.0: {err}"),
                    );
                })
                .ok()
        });
        let domain_id = f.required_str("domain_id");
        if let Some(d) = &domain_id
            && !is_namespace_name(d)
        {
            f.issue("domain_id", format!("{d:?} is not a namespace name"));
        }
        Some(Self {
            supervisor_id: supervisor_id?,
            plugin_id: plugin_id?,
            version: version?,
            domain_id: domain_id?,
        })
    }
}

fn same_plugin(path: &str, body: &str) -> std::result::Result<(), ApiError> {
    if path == body {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "plugin_id",
            format!("{body:?} differs from the plugin_id of the path ({path:?})"),
        ))
    }
}

/// The installs in `namespace` of the plugin named `plugin` (of that namespace or of the
/// catalog).
fn installs_of(state: &ApiState, namespace: &str, plugin: &str) -> Vec<Arc<PluginInstall>> {
    let catalog = state.catalog_namespace();
    let mut installs = state.caches().installs_in(namespace);
    installs.retain(|i| {
        i.spec.plugin.name() == plugin
            && access::plugin_namespace(i, catalog).is_ok()
            && i.meta().deletion_timestamp.is_none()
    });
    installs
}

/// The version an install runs (or, while it has none, the one it rolls out).
fn running_version(install: &PluginInstall) -> Option<Version> {
    let status = install.status.as_ref()?;
    status.running().or_else(|| status.rolling_out())
}

fn phase(install: &PluginInstall) -> Option<Phase> {
    install.status.as_ref().and_then(|s| s.phase)
}

/// Get a plugin's endpoint.
///
/// Picks the Active install of the plugin in `domain_id` that has all `labels` and runs
/// `version` (highest running version first). 404 when no install matches; 503 with
/// `Retry-After` when installs match but none is Active yet. Needs `get plugininstalls` in
/// `domain_id`.
#[utoipa::path(
    post,
    path = "/plugin/v1/plugin/{plugin_id}/get-endpoint",
    tag = "seed 000",
    params(("plugin_id" = String, Path, description = "The Plugin's name")),
    request_body = PluginEndpointRequest,
    responses(
        (status = 200, body = PluginEndpoint),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "No matching install is Active yet; see Retry-After"),
    ),
    security(("bearer" = []))
)]
pub async fn get_endpoint(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
    body: JsonBody<PluginEndpointRequest, Errors>,
) -> Result<Response> {
    let request = body.value;
    same_plugin(&path.value, &request.plugin_id)?;
    let namespace = &request.domain_id;
    state
        .auth()
        .authorize(
            &auth.caller,
            &Access::new("get", "plugininstalls", namespace),
        )
        .await?;
    let selector = request
        .version
        .as_deref()
        .map(VersionSelector::parse)
        .transpose()
        .map_err(|e| ApiError::invalid("version", e))?;
    let matching: Vec<_> = installs_of(&state, namespace, &request.plugin_id)
        .into_iter()
        .filter(|i| {
            let labels = i.labels();
            request.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|i| {
            request
                .upgrade_mode
                .is_none_or(|mode| i.spec.upgrade_mode == mode)
        })
        .filter(|i| match &selector {
            None => true,
            Some(selector) => running_version(i).is_some_and(|v| selector.matches(&v)),
        })
        .collect();
    if matching.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no install of plugin {:?} in namespace {namespace:?}{}",
            request.plugin_id,
            describe_filter(&request)
        ))
        .into());
    }
    let chosen = matching
        .iter()
        .filter(|i| phase(i) == Some(Phase::Active))
        .max_by(|a, b| {
            running_version(a)
                .cmp(&running_version(b))
                .then_with(|| b.name_any().cmp(&a.name_any()))
        });
    let Some(install) = chosen else {
        let phases = matching
            .iter()
            .map(|i| {
                format!(
                    "{} is {}",
                    i.name_any(),
                    phase(i).map_or("new", Phase::as_str)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::Unavailable {
            message: format!(
                "no install of plugin {:?} in namespace {namespace:?} is Active yet ({phases})",
                request.plugin_id
            ),
            retry_after: RETRY_AFTER_SECONDS,
        }
        .into());
    };
    // Supervised or external alike: a token of the install's ServiceAccount for the plugin's
    // audience, which the plugin verifies with a TokenReview (docs/api.md).
    state
        .tokens()
        .answer(&state, install, &request.plugin_id)
        .await
        .map_err(Into::into)
}

fn describe_filter(request: &PluginEndpointRequest) -> String {
    let mut parts = Vec::new();
    if !request.labels.is_empty() {
        let labels = request
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        parts.push(format!("with labels {labels}"));
    }
    if let Some(version) = &request.version {
        parts.push(format!("running version {version}"));
    }
    if let Some(mode) = request.upgrade_mode {
        parts.push(format!("with upgradeMode {mode:?}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" {}", parts.join(" and "))
    }
}

/// Report a failed plugin.
///
/// Marks the installs of the plugin in `domain_id` that run `version` (annotation
/// `plugin-operator.dev/reported-failure`); the operator then restarts an Active one once
/// (Restarting) and records `status.lastFailure.reportedBy = supervisor_id`. Needs
/// `patch plugininstalls` in `domain_id`.
#[utoipa::path(
    put,
    path = "/plugin/v1/plugin/{plugin_id}/notify-failure",
    tag = "seed 000",
    params(("plugin_id" = String, Path, description = "The Plugin's name")),
    request_body = PluginFailureRequest,
    responses(
        (status = 200, body = Object, description = "`{}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn notify_failure(
    State(state): State<ApiState>,
    auth: Authenticated<Errors>,
    path: SeedPath<String, Errors>,
    body: JsonBody<PluginFailureRequest, Errors>,
) -> Result<Json<Value>> {
    let request = body.value;
    same_plugin(&path.value, &request.plugin_id)?;
    let namespace = &request.domain_id;
    state
        .auth()
        .authorize(
            &auth.caller,
            &Access::new("patch", "plugininstalls", namespace),
        )
        .await?;
    let version = &request.version;
    let targets: Vec<_> = installs_of(&state, namespace, &request.plugin_id)
        .into_iter()
        .filter(|i| {
            i.status
                .as_ref()
                .and_then(|s| s.running())
                .is_some_and(|v| v.cmp_precedence(version).is_eq())
        })
        .collect();
    if targets.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no install of plugin {:?} in namespace {namespace:?} runs version {version}",
            request.plugin_id
        ))
        .into());
    }
    let report = json!({
        "reportedBy": request.supervisor_id,
        "at": state.now().to_string(),
        "message": format!("{} reported a failure of version {version}", request.supervisor_id),
    })
    .to_string();
    let patch = json!({"metadata": {"annotations": {annotations::REPORTED_FAILURE: report}}});
    let api: Api<PluginInstall> = Api::namespaced(state.client().clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    for install in targets {
        with_timeout(api.patch(&install.name_any(), &params, &Patch::Merge(&patch)))
            .await
            .map_err(|e| ApiError::from_kube("patch PluginInstall", &e))?;
    }
    Ok(Json(json!({})))
}

/// Access tokens already issued, reused while more than half of their life is left, so that a
/// get-endpoint answered from the caches makes no API call either. Keyed by the ServiceAccount's
/// uid too: a token of a deleted ServiceAccount is never handed out again.
///
/// Beside them, the answers made with them, serialized, for as long as their token is reused
/// and the install is unchanged (its resourceVersion): the answer a caller asks for again and
/// again costs a lookup, not a token key's strings and a JSON document each time.
pub struct IssuedTokens {
    cache: Cache<TokenFor, IssuedToken>,
    answers: Cache<u64, Arc<Answer>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenFor {
    namespace: String,
    service_account: String,
    uid: Option<String>,
    audience: String,
}

/// An answer of get-endpoint and what it was made for (compared on every hit: the cache is
/// keyed by a hash of these, and a collision must not hand out another install's token).
struct Answer {
    install_uid: Option<String>,
    resource_version: Option<String>,
    service_account_uid: Option<String>,
    plugin: String,
    /// Until when the token in it is handed out (half its life, as [`fresh`]).
    until: Timestamp,
    body: axum::body::Bytes,
}

impl Answer {
    fn is_for(
        &self,
        install: &PluginInstall,
        service_account_uid: Option<&str>,
        plugin: &str,
    ) -> bool {
        let meta = install.meta();
        self.install_uid == meta.uid
            && self.resource_version == meta.resource_version
            && self.service_account_uid.as_deref() == service_account_uid
            && self.plugin == plugin
    }

    fn response(&self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.body.clone(),
        )
            .into_response()
    }
}

fn answer_key(install: &PluginInstall, service_account_uid: Option<&str>, plugin: &str) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = ANSWER_HASHER.build_hasher();
    let meta = install.meta();
    meta.uid.hash(&mut hasher);
    meta.resource_version.hash(&mut hasher);
    service_account_uid.hash(&mut hasher);
    plugin.hash(&mut hasher);
    hasher.finish()
}

/// One hasher for the process (random keys: the answers' keys are not predictable).
static ANSWER_HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

impl Default for IssuedTokens {
    fn default() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(crate::api::auth::CAPACITY)
                .time_to_live(Duration::from_secs(ACCESS_TOKEN_SECONDS as u64))
                .build(),
            answers: Cache::builder()
                .max_capacity(crate::api::auth::CAPACITY)
                .time_to_live(Duration::from_secs(ACCESS_TOKEN_SECONDS as u64))
                .build(),
        }
    }
}

impl IssuedTokens {
    /// get-endpoint's answer for `install`: its endpoint, a token of its ServiceAccount (named
    /// like the install) and its available version.
    async fn answer(
        &self,
        state: &ApiState,
        install: &PluginInstall,
        plugin: &str,
    ) -> std::result::Result<Response, ApiError> {
        let namespace = install.namespace().unwrap_or_default();
        let name = install.name_any();
        let service_account_uid = cache::get(&state.caches().service_accounts, &namespace, &name)
            .and_then(|sa| sa.metadata.uid.clone());
        let now = state.now();
        let key = answer_key(install, service_account_uid.as_deref(), plugin);
        if let Some(answer) = self
            .answers
            .get(&key)
            .filter(|a| a.is_for(install, service_account_uid.as_deref(), plugin) && now < a.until)
        {
            return Ok(answer.response());
        }
        let token_for = TokenFor {
            audience: audience(&namespace, plugin),
            namespace,
            service_account: name,
            uid: service_account_uid.clone(),
        };
        let issued = self
            .get_or_request(state.backend().as_ref(), token_for, now)
            .await?;
        let status = install.status.as_ref();
        let body = serde_json::to_vec(&PluginEndpoint {
            endpoint: status.and_then(|s| s.endpoint.clone()).unwrap_or_default(),
            access_token: issued.token,
            updated_version: status
                .and_then(|s| s.available_version.clone())
                .unwrap_or_default(),
        })
        .map_err(|err| ApiError::Internal(format!("serializing the answer: {err}")))?;
        let answer = Answer {
            install_uid: install.meta().uid.clone(),
            resource_version: install.meta().resource_version.clone(),
            service_account_uid,
            plugin: plugin.to_owned(),
            until: issued
                .expires
                .checked_sub(SignedDuration::from_secs(ACCESS_TOKEN_SECONDS / 2))
                .unwrap_or(now),
            body: body.into(),
        };
        let response = answer.response();
        self.answers.insert(key, Arc::new(answer));
        Ok(response)
    }

    async fn get_or_request(
        &self,
        backend: &dyn Backend,
        key: TokenFor,
        now: Timestamp,
    ) -> std::result::Result<IssuedToken, ApiError> {
        if let Some(issued) = self.cache.get(&key).filter(|t| fresh(t, now)) {
            return Ok(issued);
        }
        let issued = backend
            .request_token(
                &key.namespace,
                &key.service_account,
                &key.audience,
                ACCESS_TOKEN_SECONDS,
            )
            .await
            .map_err(|err| match err {
                ApiError::NotFound(_) => ApiError::Unavailable {
                    message: format!(
                        "the install's ServiceAccount {}/{} is not there yet",
                        key.namespace, key.service_account
                    ),
                    retry_after: RETRY_AFTER_SECONDS,
                },
                other => other,
            })?;
        self.cache.insert(key, issued.clone());
        Ok(issued)
    }
}

/// Whether more than half of the token's life is left.
fn fresh(token: &IssuedToken, now: Timestamp) -> bool {
    let half = SignedDuration::from_secs(ACCESS_TOKEN_SECONDS / 2);
    now.checked_add(half).is_ok_and(|t| t < token.expires)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::Fields;
    use axum::response::IntoResponse;
    use serde_json::json;

    fn parse<T: FromJson>(value: Value) -> std::result::Result<T, Vec<String>> {
        let Value::Object(object) = value else {
            panic!("object")
        };
        let mut fields = Fields::new(&object);
        let parsed = T::from_json(&mut fields);
        match fields.finish() {
            Ok(()) => Ok(parsed.expect("parsed when no issue")),
            Err(err) => Err(err.issues().iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn an_endpoint_request_names_every_wrong_field() {
        let ok: PluginEndpointRequest = parse(json!({
            "plugin_id": "echo", "domain_id": "team-a", "version": "^1.2",
            "labels": {"team": "billing", "tier": 1}, "upgrade_mode": "auto"
        }))
        .expect("valid");
        assert_eq!(ok.labels["tier"], "1");
        assert_eq!(ok.upgrade_mode, Some(UpgradeMode::Auto));

        let errors = parse::<PluginEndpointRequest>(json!({
            "plugin_id": 3, "version": "not a version", "labels": {"team": {"x": 1}},
            "domain_id": "Team_A", "upgrade_mode": "SOMETIMES"
        }))
        .expect_err("invalid");
        let fields: Vec<_> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            fields,
            [
                "plugin_id",
                "version",
                "labels.team",
                "domain_id",
                "upgrade_mode"
            ],
            "{errors:?}"
        );
        let missing = parse::<PluginEndpointRequest>(json!({})).expect_err("missing");
        assert_eq!(missing, ["plugin_id: required", "domain_id: required"]);
    }

    #[test]
    fn a_failure_report_needs_every_field_and_an_exact_version() {
        let missing = parse::<PluginFailureRequest>(json!({"version": "^1"})).expect_err("x");
        assert_eq!(
            missing,
            [
                "supervisor_id: required",
                "plugin_id: required",
                "version: \"^1\" is not a version such as 1.4.0: unexpected character '^' while parsing major version number",
                "domain_id: required"
            ]
        );
        let ok: PluginFailureRequest = parse(json!({
            "supervisor_id": "sup-1", "plugin_id": "echo", "version": "1.0.0", "domain_id": "a"
        }))
        .expect("valid");
        assert_eq!(ok.supervisor_id, "sup-1");
    }

    #[test]
    fn error_codes_follow_the_kind_of_error() {
        let body = |err: ApiError| {
            let response = SeedError::<Errors>::new(err).into_response();
            response.status().as_u16()
        };
        assert_eq!(body(ApiError::invalid("domain_id", "required")), 400);
        assert_eq!(
            body(ApiError::Unavailable {
                message: "x".into(),
                retry_after: 5
            }),
            503
        );
    }

    #[test]
    fn a_kept_answer_serves_only_what_it_was_made_for() {
        let install = |uid: &str, version: &str| -> PluginInstall {
            serde_json::from_value(json!({
                "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
                "metadata": {"name": "echo", "namespace": "team-a", "uid": uid,
                             "resourceVersion": version},
                "spec": {"plugin": "echo"}
            }))
            .expect("install")
        };
        let made_for = install("u-1", "7");
        let answer = Answer {
            install_uid: Some("u-1".into()),
            resource_version: Some("7".into()),
            service_account_uid: Some("sa-1".into()),
            plugin: "echo".into(),
            until: Timestamp::from_second(10_000).expect("valid"),
            body: axum::body::Bytes::from_static(b"{}"),
        };
        assert!(answer.is_for(&made_for, Some("sa-1"), "echo"));
        // The install changed (its status: another endpoint or available version).
        assert!(!answer.is_for(&install("u-1", "8"), Some("sa-1"), "echo"));
        // Another install of the same name (deleted and made again).
        assert!(!answer.is_for(&install("u-2", "7"), Some("sa-1"), "echo"));
        // Its ServiceAccount made again (the token in the answer was the old one's), or gone.
        assert!(!answer.is_for(&made_for, Some("sa-2"), "echo"));
        assert!(!answer.is_for(&made_for, None, "echo"));
        assert!(!answer.is_for(&made_for, Some("sa-1"), "other"));
        // Equal inputs hash alike; the key tells them apart in all but a collision, which
        // `is_for` catches.
        assert_eq!(
            answer_key(&made_for, Some("sa-1"), "echo"),
            answer_key(&install("u-1", "7"), Some("sa-1"), "echo")
        );
        assert_ne!(
            answer_key(&made_for, Some("sa-1"), "echo"),
            answer_key(&install("u-1", "8"), Some("sa-1"), "echo")
        );
    }

    #[test]
    fn tokens_are_reused_while_more_than_half_their_life_is_left() {
        let now = Timestamp::from_second(10_000).expect("valid");
        let token = |expires: i64| IssuedToken {
            token: "t".into(),
            expires: Timestamp::from_second(expires).expect("valid"),
        };
        assert!(fresh(&token(10_600), now));
        assert!(fresh(&token(10_301), now));
        assert!(!fresh(&token(10_300), now));
        assert!(!fresh(&token(9_000), now));
    }
}
