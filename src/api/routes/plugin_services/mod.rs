//! Answers seed 003 (the plugin API): plugin-scoped tokens (`POST /a/auth/v0/token`, OAuth 2 client
//! credentials and refresh), and the plugin services: the install's config, a key/value storage
//! and jobs.
//!
//! - Credentials: each install has a Secret `<install>-credentials` (`client_id` =
//!   `<namespace>.<install>`, a random `client_secret`; only the controller creates it, once, and
//!   rotates it when the install's `plugin-operator.dev/rotate-credentials` annotation changes;
//!   the token route answers 503 with `Retry-After` until then). The plugin's pods mount it at
//!   `/etc/plugin/credentials`.
//! - Access tokens are TokenRequests for the install's ServiceAccount with the audience
//!   [`AUDIENCE`]: anyone verifies them with a TokenReview for that audience, without the
//!   operator. Refresh tokens are random; only their SHA-256 is kept (with the expiry) in the
//!   credentials Secret; a rotation revokes them all.
//! - The plugin-services routes accept such a token (it reaches only its own install) or, for
//!   config and job creation, an ordinary Kubernetes token with RBAC on the install.
//!
//! Errors of the token route are OAuth 2's (`{error, error_description}`, RFC 6749 §5.2); the
//! plugin-services routes answer `{error, message, field?}`.
mod config;
mod jobs;
mod storage;
mod token;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::Engine;
use k8s_openapi::{api::authentication::v1::TokenReview, jiff::Timestamp};
use kube::{Api, ResourceExt, api::PostParams};
use moka::sync::Cache;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    api::{
        ApiState,
        auth::{Caller, TokenKey, jwt_expiry, token_key},
        backend::Access,
        error::{ApiError, ErrorShape, SeedError},
        extract::token,
        is_uid,
        observe::CallerName,
    },
    resources::{PluginInstall, names::labels},
    runtime::call::{CallError, with_timeout},
};

pub use jobs::MAX_WAIT_SECONDS;
pub use storage::{StorageScope, storage_config_map_name};
pub use token::client_id;

/// The path of the jobs routes (create, list and the long poll).
pub const JOBS_PATH: &str = "/api/v2/plugin-services/jobs";

/// The audience of plugin access tokens: a TokenReview for it tells the install.
pub const AUDIENCE: &str = "plugin-operator.dev/plugin-services";

/// Token lifetimes and the refresh-token cap (`plugin-operator run
/// --plugin-access-token-seconds --plugin-refresh-token-seconds --max-refresh-tokens`), given
/// to the router as an [`axum::Extension`]; the defaults when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub access_token_seconds: i64,
    pub refresh_token_seconds: i64,
    /// Refresh tokens kept per install: issuing one more revokes the oldest.
    pub max_refresh_tokens: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            access_token_seconds: 43_200,
            refresh_token_seconds: 259_200,
            max_refresh_tokens: 100,
        }
    }
}

impl Settings {
    /// The layer that hands these settings to the routes.
    pub fn extension(self) -> axum::Extension<Self> {
        axum::Extension(self)
    }
}

/// The routes of seed 003.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(token::token))
        .route_layer(axum::middleware::from_fn(crate::api::token_limit::limit))
        .routes(routes!(config::get_config, config::put_config))
        .routes(routes!(storage::storage))
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::settle_job))
}

/// The error body of the plugin-services routes.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `limit_exceeded`,
    /// `unavailable` or `internal`.
    pub error: &'static str,
    pub message: String,
    /// The request field that is wrong (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The error shape of the plugin-services routes.
pub struct Errors;

impl ErrorShape for Errors {
    fn body(err: &ApiError) -> impl Serialize {
        let code = match err {
            ApiError::Invalid(_) => "bad_request",
            ApiError::Unauthenticated(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::LimitExceeded(_) => "limit_exceeded",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        };
        ErrorBody {
            error: code,
            message: err.message(),
            field: err.field().map(str::to_owned),
        }
    }
}

type Result<T> = std::result::Result<T, SeedError<Errors>>;

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
    type Rejection = SeedError<Errors>;

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
            CallerName::record(
                parts,
                &format!("system:serviceaccount:{namespace}:{install}"),
            );
            return Ok(Self::Plugin { namespace, install });
        }
        let caller = state.auth().authenticate(&token).await?;
        CallerName::record(parts, &caller.user.username);
        Ok(Self::Kube(caller))
    }
}

impl ServiceCaller {
    /// The caller's Kubernetes username (a plugin token's is its install's ServiceAccount).
    fn username(&self) -> Option<String> {
        match self {
            Self::Plugin { namespace, install } => {
                Some(format!("system:serviceaccount:{namespace}:{install}"))
            }
            Self::Kube(caller) => Some(caller.user.username.clone()),
        }
    }

    /// The install a plugin token belongs to, from the cache; 403 for other callers.
    fn own_install(&self, state: &ApiState, what: &str) -> Result<Arc<PluginInstall>> {
        match self {
            Self::Plugin { namespace, install } => {
                crate::runtime::cache::get(&state.caches().installs, namespace, install).ok_or_else(
                    || {
                        ApiError::Forbidden(format!("the install {namespace}/{install} is gone"))
                            .into()
                    },
                )
            }
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

fn kube_failed(what: &str) -> impl Fn(CallError) -> SeedError<Errors> + '_ {
    move |e| ApiError::from_kube(what, &e).into()
}

/// `{data: …}`.
#[derive(Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

fn plugin_name(state: &ApiState, install: &PluginInstall) -> String {
    state
        .plugin_of(install)
        .map(|p| p.name_any())
        .or_else(|| install.labels().get(labels::PLUGIN).cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let response = SeedError::<Errors>::new(ApiError::invalid("commands[0].key", "required"))
            .into_response();
        assert_eq!(response.status().as_u16(), 400);
        let response =
            SeedError::<Errors>::new(ApiError::LimitExceeded("full".into())).into_response();
        assert_eq!(response.status().as_u16(), 422);
    }

    #[test]
    fn the_routes_are_documented() {
        let (_, doc) = routes().split_for_parts();
        let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/a/auth/v0/token",
            "/api/v2/plugin-services/installs/{installId}/config",
            "/api/v2/plugin-services/storage",
            "/api/v2/plugin-services/jobs",
            "/api/v2/plugin-services/jobs/{jobId}",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        // The jobs collection: create (POST) and the plugin's list and long poll (GET), with
        // its parameters.
        let jobs = &doc.paths.paths[JOBS_PATH];
        assert!(jobs.post.is_some());
        let list = jobs.get.as_ref().expect("GET jobs documented");
        let params: Vec<&str> = list
            .parameters
            .iter()
            .flatten()
            .filter_map(|p| match p {
                utoipa::openapi::RefOr::T(p) => Some(p.name.as_str()),
                utoipa::openapi::RefOr::Ref(_) => None,
            })
            .collect();
        assert_eq!(params, ["status", "limit", "continue", "waitSeconds"]);
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
    }
}
