//! Seed 003 (the plugin API): plugin-scoped tokens (`POST /a/auth/v0/token`, OAuth 2 client
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
mod services;
mod token;

use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiState,
    error::{self, ApiError, SeedError},
};

pub use services::{StorageScope, storage_config_map_name};

/// The audience of plugin access tokens: a TokenReview for it tells the install.
pub const AUDIENCE: &str = "plugin-operator.dev/plugin-services";

/// Token lifetimes (`plugin-operator run --plugin-access-token-seconds
/// --plugin-refresh-token-seconds`), given to the router as an [`axum::Extension`]; the
/// defaults when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub access_token_seconds: i64,
    pub refresh_token_seconds: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            access_token_seconds: 43_200,
            refresh_token_seconds: 259_200,
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
        .routes(routes!(services::get_config, services::put_config))
        .routes(routes!(services::storage))
        .routes(routes!(services::create_job))
        .routes(routes!(services::settle_job))
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

/// An error of a plugin-services route.
pub struct Seed003Error(pub ApiError);

impl From<ApiError> for Seed003Error {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl SeedError for Seed003Error {}

impl IntoResponse for Seed003Error {
    fn into_response(self) -> Response {
        let err = &self.0;
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
        let message = match err {
            ApiError::Invalid(issues) => issues
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        error::respond(
            err,
            ErrorBody {
                error: code,
                message,
                field: err.field().map(str::to_owned),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let response =
            Seed003Error(ApiError::invalid("commands[0].key", "required")).into_response();
        assert_eq!(response.status().as_u16(), 400);
        let response = Seed003Error(ApiError::LimitExceeded("full".into())).into_response();
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
    }
}
