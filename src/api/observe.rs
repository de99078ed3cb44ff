//! One access-log line and the metrics of every request (a layer, [`observe`]).
//!
//! The line (`INFO`, target `plugin_operator::access`) holds the method, the route template
//! (`/v1/plugins/{plugin_id}`, never the path: no ids, no query), the status, the latency in
//! milliseconds, the caller's user name when the route learned it ([`CallerName`]: a
//! Kubernetes user, `system:serviceaccount:<ns>:<install>` for a plugin token, the client id on
//! the token route) and the peer address. Never a header, a body or a token.
//!
//! Why a middleware of our own rather than `tower_http::trace`: one function both logs and
//! counts with the route template, and the user name comes from a slot the extractors fill,
//! which a `TraceLayer`'s callbacks cannot read once the request is gone.
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::request::Parts,
    middleware::Next,
    response::Response,
};

use crate::runtime::metrics::HttpMetrics;

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// Who called, as the route found out (set once, by the extractor that authenticated).
#[derive(Clone, Default, Debug)]
pub struct CallerName(Arc<OnceLock<String>>);

impl CallerName {
    /// Records the caller of the request these parts belong to (no-op outside [`observe`]).
    pub fn record(parts: &Parts, name: &str) {
        if let Some(slot) = parts.extensions.get::<Self>() {
            let _ = slot.0.set(name.to_owned());
        }
    }

    /// Records through the slot itself (for handlers that hold it as an extension).
    pub fn set(&self, name: &str) {
        let _ = self.0.set(name.to_owned());
    }

    fn get(&self) -> &str {
        self.0.get().map_or("-", String::as_str)
    }
}

/// Logs and counts every request (see the module's documentation).
pub async fn observe(
    State(metrics): State<HttpMetrics>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |m| m.as_str().to_owned());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let caller = CallerName::default();
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    metrics.answered(&route, method.as_str(), status, took);
    tracing::info!(
        target: "plugin_operator::access",
        method = %method,
        route = %route,
        status,
        latency_ms = format_args!("{:.3}", took.as_secs_f64() * 1e3),
        user = %caller.get(),
        peer = %peer,
        "request"
    );
    response
}
