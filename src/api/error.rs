//! What can go wrong in a request, independent of any seed ([`ApiError`]), and the one mapper
//! from it to a response ([`SeedError`]): the status and headers come from the error, the body
//! from the seed's [`ErrorShape`] (each seed keeps its own error body, SPEC §4).
use std::{fmt, marker::PhantomData};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::runtime::call::CallError;

/// One problem with a request: the field (`body`, `domain_id`, `labels.team`, `spec.type`, …)
/// and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub field: String,
    pub message: String,
}

impl Issue {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is wrong; every issue found, each naming its field.
    #[error("invalid request: {}", join(.0))]
    Invalid(Vec<Issue>),
    /// 401: no token, or one the API server does not accept.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: the caller's RBAC does not allow the verb the route maps to.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the object already exists (or changed meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// 422: a tenant's limit (a ResourceQuota) would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// 503: the thing exists but cannot serve yet; try again after `retry_after` seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after: u32 },
    /// 500: the API server failed or refused the operator's own request.
    #[error("{0}")]
    Internal(String),
}

fn join(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// One issue about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![Issue::new(field, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::LimitExceeded(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The issues of a 400, or none.
    pub fn issues(&self) -> &[Issue] {
        match self {
            Self::Invalid(issues) => issues,
            _ => &[],
        }
    }

    /// The first field a 400 names.
    pub fn field(&self) -> Option<&str> {
        self.issues().first().map(|i| i.field.as_str())
    }

    /// What went wrong, for people: every issue of a 400 (`field: message; …`), else the
    /// error's text.
    pub fn message(&self) -> String {
        match self {
            Self::Invalid(issues) => join(issues),
            other => other.to_string(),
        }
    }

    /// A failed API call made on the caller's behalf (a write or a token request).
    pub fn from_kube(what: &str, err: &CallError) -> Self {
        match err {
            CallError::Kube(kube::Error::Api(status)) => {
                let message = format!("{what}: {}", status.message);
                match status.code {
                    404 => Self::NotFound(message),
                    409 if status.reason == "AlreadyExists" => Self::Conflict(message),
                    409 => Self::Conflict(message),
                    // A quota on the object count refuses a create with 403 "exceeded quota".
                    403 if status.message.contains("exceeded quota") => {
                        Self::LimitExceeded(message)
                    }
                    // A new quota the controller has not counted yet: it will.
                    403 if status.message.contains("status unknown for quota") => {
                        Self::Unavailable {
                            message,
                            retry_after: 10,
                        }
                    }
                    // The API server's own validation of what the caller sent.
                    400 | 422 => Self::invalid("body", status.message.clone()),
                    429 | 503 | 504 => Self::Unavailable {
                        message,
                        retry_after: 5,
                    },
                    _ => Self::Internal(message),
                }
            }
            CallError::Timeout(_) => Self::Unavailable {
                message: format!("{what}: the API server did not answer in time"),
                retry_after: 5,
            },
            CallError::Kube(other) => Self::Internal(format!("{what}: {other}")),
        }
    }

    /// Adds the headers every seed's error response carries (Retry-After, WWW-Authenticate).
    pub fn with_headers(&self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        match self {
            Self::Unavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"plugin-operator\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// How one seed's callers read an error: its error body, and how they send their token.
pub trait ErrorShape: Send + Sync + 'static {
    /// Whether the seed's callers may send their token in `X-Auth-Token` (seed 004) besides
    /// `Authorization: Bearer`.
    const X_AUTH_TOKEN: bool = false;

    /// The body of `error` in this seed's shape.
    fn body(error: &ApiError) -> impl serde::Serialize;
}

/// An error of a route of the seed whose error body is `S`.
pub struct SeedError<S> {
    pub error: ApiError,
    _shape: PhantomData<fn() -> S>,
}

impl<S> SeedError<S> {
    pub fn new(error: ApiError) -> Self {
        Self {
            error,
            _shape: PhantomData,
        }
    }
}

impl<S> From<ApiError> for SeedError<S> {
    fn from(error: ApiError) -> Self {
        Self::new(error)
    }
}

impl<S> fmt::Debug for SeedError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl<S: ErrorShape> IntoResponse for SeedError<S> {
    fn into_response(self) -> Response {
        respond(&self.error, S::body(&self.error))
    }
}

/// Renders `body` with the error's status and headers.
pub fn respond(error: &ApiError, body: impl serde::Serialize) -> Response {
    error.with_headers((error.status(), axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::call::CallError as Error;
    use kube::core::Status;

    fn api(code: u16, reason: &str, message: &str) -> Error {
        Error::Kube(kube::Error::Api(
            Status::failure(message, reason).with_code(code).boxed(),
        ))
    }

    #[test]
    fn api_server_answers_map_to_statuses() {
        let cases = [
            (api(404, "NotFound", "gone"), StatusCode::NOT_FOUND),
            (
                api(409, "AlreadyExists", "plugins \"a\" already exists"),
                StatusCode::CONFLICT,
            ),
            (
                api(
                    403,
                    "Forbidden",
                    "plugins.plugin-operator.dev \"b\" is forbidden: exceeded quota: limit, requested: count/plugins.plugin-operator.dev=1",
                ),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                api(
                    403,
                    "Forbidden",
                    "plugins.plugin-operator.dev \"b\" is forbidden: status unknown for quota: plugins",
                ),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                api(403, "Forbidden", "the operator may not"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                api(422, "Invalid", "metadata.name: Invalid value"),
                StatusCode::BAD_REQUEST,
            ),
            (
                api(500, "InternalError", "etcd"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                Error::Timeout(std::time::Duration::from_secs(10)),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(
                ApiError::from_kube("create", &err).status(),
                status,
                "{err}"
            );
        }
    }

    #[test]
    fn errors_carry_their_headers() {
        let unavailable = ApiError::Unavailable {
            message: "starting".into(),
            retry_after: 7,
        };
        let response = respond(&unavailable, serde_json::json!({}));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let response = respond(&ApiError::Unauthenticated("no".into()), ());
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn an_invalid_request_names_its_fields() {
        let err = ApiError::Invalid(vec![
            Issue::new("name", "required"),
            Issue::new("spec.type", "expected a string"),
        ]);
        assert_eq!(err.field(), Some("name"));
        assert_eq!(
            err.to_string(),
            "invalid request: name: required; spec.type: expected a string"
        );
    }
}
