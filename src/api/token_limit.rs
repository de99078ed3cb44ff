//! Rate limits of `POST /a/auth/v0/token` (a layer on that route): per client id and per peer IP
//! address, each a token bucket (`governor`, GCRA) of [`Rate::burst`] requests refilled at
//! [`Rate::per_minute`]. Every request counts, right or wrong, so guessing a client secret costs
//! a burst and then one try per refill; a legitimate plugin asks for a token once per access
//! token lifetime (hours). Over the limit: 429 `temporarily_unavailable` (OAuth's error body)
//! with `Retry-After`, before the route reads or writes anything.
//!
//! The client id is read the way the route reads it (Basic auth, else the form or JSON body),
//! so the layer buffers the body (already bounded by the body limit) and hands it on. Keys are
//! bounded in size (a client id is `<namespace>.<install>`, so at most [`MAX_CLIENT_ID`] bytes
//! are kept) and in number: past [`MAX_KEYS`] keys the ones whose bucket is full again are
//! dropped (`retain_recent`), so made-up client ids cannot grow the map without bound.
use std::{net::IpAddr, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};

use super::server::{Limits, Rate};

/// Longest client id kept as a key: a namespace (63) and a name (253) with their dot.
pub const MAX_CLIENT_ID: usize = 317;
/// Keys per limiter before the idle ones are dropped.
pub const MAX_KEYS: usize = 10_000;

/// The token route's two limiters.
pub struct TokenRateLimits {
    per_client: DefaultKeyedRateLimiter<String>,
    per_peer: DefaultKeyedRateLimiter<IpAddr>,
}

fn quota(rate: Rate) -> Quota {
    Quota::per_minute(rate.per_minute).allow_burst(rate.burst)
}

impl TokenRateLimits {
    pub fn new(limits: &Limits) -> Self {
        Self {
            per_client: DefaultKeyedRateLimiter::keyed(quota(limits.token_rate_per_client)),
            per_peer: DefaultKeyedRateLimiter::keyed(quota(limits.token_rate_per_peer)),
        }
    }

    /// `Err(seconds to wait)` when the peer or the client is over its limit; else counts the
    /// request against both.
    pub fn check(&self, peer: Option<IpAddr>, client_id: Option<&str>) -> Result<(), u64> {
        let clock = DefaultClock::default();
        let wait = |not_until: governor::NotUntil<_>| {
            not_until.wait_time_from(clock.now()).as_secs().max(1)
        };
        if let Some(peer) = peer {
            prune(&self.per_peer);
            self.per_peer.check_key(&peer).map_err(wait)?;
        }
        if let Some(id) = client_id {
            prune(&self.per_client);
            let key: String = id.chars().take(MAX_CLIENT_ID).collect();
            self.per_client.check_key(&key).map_err(wait)?;
        }
        Ok(())
    }
}

fn prune<K: Clone + std::hash::Hash + Eq>(limiter: &DefaultKeyedRateLimiter<K>) {
    if limiter.len() > MAX_KEYS {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// The layer's function (see the module's documentation). Without [`TokenRateLimits`] in the
/// request's extensions (a router not built by `server::app`) it lets everything through.
pub async fn limit(request: Request, next: Next) -> Response {
    let Some(limits) = request.extensions().get::<Arc<TokenRateLimits>>().cloned() else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        // Over the body limit (or the client went away): the route says so.
        return next.run(Request::from_parts(parts, Body::empty())).await;
    };
    let client_id = super::routes::plugin_services::client_id(&parts.headers, &bytes).await;
    match limits.check(peer, client_id.as_deref()) {
        Ok(()) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(seconds) => too_many(seconds),
    }
}

fn too_many(seconds: u64) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(serde_json::json!({
            "error": "temporarily_unavailable",
            "error_description": format!("too many token requests; try again in {seconds} s"),
        })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_and_each_peer_has_its_own_bucket() {
        let limits = TokenRateLimits::new(&Limits {
            token_rate_per_client: Rate::new(1, 3),
            token_rate_per_peer: Rate::new(1, 5),
            ..Limits::default()
        });
        let peer: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert_eq!(limits.check(Some(peer), Some("ns.a")), Ok(()));
        }
        let wait = limits.check(Some(peer), Some("ns.a")).expect_err("over");
        assert!((1..=60).contains(&wait), "{wait}");
        // Another client from the same peer: its own bucket, until the peer's is empty (the
        // refused request counted against the peer too).
        assert_eq!(limits.check(Some(peer), Some("ns.b")), Ok(()));
        assert!(limits.check(Some(peer), Some("ns.b")).is_err(), "peer over");
        // Another peer is not limited by the first.
        assert_eq!(
            limits.check(Some([10, 0, 0, 2].into()), Some("ns.c")),
            Ok(())
        );
    }
}
