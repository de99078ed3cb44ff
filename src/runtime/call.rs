//! Calls to the API server, for the controllers and the HTTP API alike: every one gives up after
//! [`API_TIMEOUT`], and fails with a [`CallError`].
use std::{future::Future, time::Duration};

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
