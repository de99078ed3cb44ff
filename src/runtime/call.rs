//! Calls to the API server, for the controllers and the HTTP API alike: every one gives up after
//! [`API_TIMEOUT`], and fails with a [`CallError`], which tells whether a retry can help
//! ([`CallError::refusal`]).
use std::{future::Future, time::Duration};

use crate::resources::conditions::reason;

/// Every API call gives up after this long.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call to the API server.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("API request timed out after {0:?}")]
    Timeout(Duration),
}

impl CallError {
    /// The HTTP status the API server answered, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Kube(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }

    /// 404: the object is not there.
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    /// 409: the object exists already, or changed since it was read.
    pub fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "client",
            Self::Timeout(_) => "timeout",
        }
    }

    /// Why the API server refused the call, when a retry alone cannot change its answer (400,
    /// 401, 403, 404, 422, quota and admission denials: someone must change the object, a quota,
    /// RBAC or a policy). `None` for what may pass on the next try: timeouts, connection errors,
    /// 409 conflicts, 429 and 5xx.
    pub fn refusal(&self) -> Option<ApiRefusal> {
        let Self::Kube(kube::Error::Api(status)) = self else {
            return None;
        };
        ApiRefusal::of(status.code, &status.message)
    }

    /// The API server's own words when it answered, else what went wrong on the way.
    pub fn message(&self) -> String {
        match self {
            Self::Kube(kube::Error::Api(status)) => status.message.clone(),
            other => other.to_string(),
        }
    }
}

/// An answer of the API server that no retry can change by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRefusal {
    /// A ResourceQuota of the namespace leaves no room (403 "exceeded quota").
    QuotaExceeded,
    /// RBAC or an admission plugin or webhook denied it (401, 403).
    Forbidden,
    /// The object is invalid to the server (400, 422: a schema, a name, a policy).
    Invalid,
    /// Something the write needs is gone (404: e.g. the namespace).
    NotFound,
}

impl ApiRefusal {
    /// From an answer's HTTP status and message.
    pub fn of(code: u16, message: &str) -> Option<Self> {
        match code {
            403 if message.contains("exceeded quota") => Some(Self::QuotaExceeded),
            401 | 403 => Some(Self::Forbidden),
            404 => Some(Self::NotFound),
            409 | 429 => None,
            400..=499 => Some(Self::Invalid),
            _ => None,
        }
    }

    /// The condition reason it is reported with.
    pub fn reason(self) -> &'static str {
        match self {
            Self::QuotaExceeded => reason::QUOTA_EXCEEDED,
            Self::Forbidden => reason::FORBIDDEN,
            Self::Invalid => reason::INVALID,
            Self::NotFound => reason::NOT_FOUND,
        }
    }
}

/// Runs an API call with [`API_TIMEOUT`].
pub async fn with_timeout<T>(
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(result) => result.map_err(CallError::Kube),
        Err(_) => Err(CallError::Timeout(API_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_retry_cannot_change_are_refusals() {
        let quota =
            "services \"x\" is forbidden: exceeded quota: no-services, requested: services=1";
        assert_eq!(ApiRefusal::of(403, quota), Some(ApiRefusal::QuotaExceeded));
        assert_eq!(
            ApiRefusal::of(403, "forbidden: User cannot patch"),
            Some(ApiRefusal::Forbidden)
        );
        assert_eq!(
            ApiRefusal::of(401, "Unauthorized"),
            Some(ApiRefusal::Forbidden)
        );
        assert_eq!(
            ApiRefusal::of(422, "metadata.name: Invalid value"),
            Some(ApiRefusal::Invalid)
        );
        assert_eq!(
            ApiRefusal::of(400, "bad request"),
            Some(ApiRefusal::Invalid)
        );
        assert_eq!(
            ApiRefusal::of(404, "namespaces \"gone\" not found"),
            Some(ApiRefusal::NotFound)
        );
        for transient in [409, 429, 500, 503, 504] {
            assert_eq!(ApiRefusal::of(transient, "try again"), None, "{transient}");
        }
        assert_eq!(ApiRefusal::QuotaExceeded.reason(), "QuotaExceeded");
        assert_eq!(ApiRefusal::Forbidden.reason(), "Forbidden");
    }

    #[test]
    fn timeouts_and_connection_errors_are_not_refusals() {
        assert_eq!(CallError::Timeout(API_TIMEOUT).refusal(), None);
    }
}
