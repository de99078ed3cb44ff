//! How the API is served and what protects it (SPEC §4 "the server protects itself"): every
//! limit is a tower / tower-http layer or a hyper setting, not handler code, and
//! [`app`] puts them around a router. `plugin-operator run` and the benchmark (`benches/api.rs`)
//! both build the server through [`app`] and [`serve`], so what is measured is what runs.
//!
//! From the outside in:
//! - hyper reads a request's head within [`Limits::header_read_timeout`] (hyper starts that timer
//!   only with a [`hyper_util::rt::TokioTimer`]; `axum::serve` sets none, so [`serve`] drives
//!   hyper itself). hyper also arms it while a keep-alive connection waits for its next request,
//!   so it is the idle timeout of keep-alive connections too;
//! - the access log and the per-route metrics ([`super::observe`]) see every answer, refusals of
//!   the layers below included;
//! - at most [`Limits::max_concurrent_requests`] requests are handled at once; one more is
//!   answered 503 with `Retry-After` at once (load shedding) instead of waiting in a queue
//!   (`tower::load_shed` over `tower::limit::GlobalConcurrencyLimit`);
//! - a request is answered within [`Limits::request_timeout`] (reading the body counts): 503
//!   with `Retry-After` when it is not. A long poll of the jobs list (`waitSeconds`) gets its wait
//!   on top ([`allowed_time`]): `tower::timeout` takes one duration for every request, so this
//!   one is a small middleware over `tokio::time::timeout`;
//! - a body larger than [`Limits::body_limit`] is refused (`tower_http::limit`: 413 when its
//!   `Content-Length` says so, else the route's 400 when reading it passes the limit);
//! - the token route's rate limits ([`super::token_limit`]).
use std::{future::Future, net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use axum::{
    BoxError, Router,
    error_handling::HandleErrorLayer,
    extract::ConnectInfo,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, limit::GlobalConcurrencyLimitLayer};
use tower_http::{add_extension::AddExtension, limit::RequestBodyLimitLayer};

use super::{observe, token_limit::TokenRateLimits};
use crate::runtime::metrics::HttpMetrics;

/// Seconds a client is told to wait after the server shed its request.
pub const OVERLOAD_RETRY_AFTER_SECONDS: u32 = 1;

/// How long open connections get to finish their requests when the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A rate: a bucket of `burst` requests that refills at `per_minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// The limits of the HTTP API (`plugin-operator run --api-…`, `--token-…`; documented with their
/// defaults in docs/api.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A client must send a request's whole head within this (and a keep-alive connection is
    /// closed after being idle this long).
    pub header_read_timeout: Duration,
    /// A request must be answered within this, reading its body included.
    pub request_timeout: Duration,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Requests handled at once; more are answered 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// `POST /a/auth/v0/token` per client id.
    pub token_rate_per_client: Rate,
    /// `POST /a/auth/v0/token` per peer IP address.
    pub token_rate_per_peer: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            body_limit: super::extract::BODY_LIMIT,
            max_concurrent_requests: 256,
            token_rate_per_client: Rate::new(10, 10),
            token_rate_per_peer: Rate::new(120, 60),
        }
    }
}

/// `router` behind every limit, the access log and the metrics: what the API serves.
pub fn app(router: Router, limits: &Limits, metrics: HttpMetrics) -> Router {
    let shedding = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(refused))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests.max(1),
        ))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            deadline,
        ));
    // `Router::layer` wraps each route (so `MatchedPath` is known to the layers): the
    // concurrency limit is the global one, whose permits every route shares.
    router
        .layer(axum::Extension(Arc::new(TokenRateLimits::new(limits))))
        .layer(RequestBodyLimitLayer::new(limits.body_limit))
        .layer(shedding)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            observe::observe,
        ))
}

/// The time a request gets to be answered: `request_timeout`, and for a long poll of the jobs
/// list (`GET /api/v2/plugin-services/jobs?waitSeconds=N`) the N seconds it waits on top (at
/// most the route's maximum; the route refuses more).
pub fn allowed_time(request_timeout: Duration, request: &axum::extract::Request) -> Duration {
    use crate::api::routes::plugin_services::{JOBS_PATH, MAX_WAIT_SECONDS};
    if request.method() != axum::http::Method::GET || request.uri().path() != JOBS_PATH {
        return request_timeout;
    }
    let wait = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("waitSeconds="))
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        .min(MAX_WAIT_SECONDS);
    request_timeout + Duration::from_secs(wait)
}

/// Answers 503 when a request is not answered within its [`allowed_time`].
async fn deadline(
    axum::extract::State(request_timeout): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let allowed = allowed_time(request_timeout, &request);
    match tokio::time::timeout(allowed, next.run(request)).await {
        Ok(response) => response,
        Err(_) => refusal("the request took too long to be answered; try again"),
    }
}

/// Answers what a layer refused: 503 with `Retry-After`, for a request shed (too many at once).
async fn refused(err: BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        refusal("too many requests at once; try again shortly")
    } else {
        tracing::error!(error = %err, "a layer of the HTTP API failed");
        refusal("the server could not answer; try again")
    }
}

/// 503 with `Retry-After` and `message`.
fn refusal(message: &str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({"error": "unavailable", "message": message})),
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(OVERLOAD_RETRY_AFTER_SECONDS),
    );
    response
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish (for at
/// most 10 s). HTTP/1.1 with hyper's header-read timeout, each request told its peer's address
/// (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // An answer is written at once, whole: Nagle's algorithm would only hold a small one
        // back until the previous one is acknowledged.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(with_peer(app.clone(), peer));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A client that went away or was too slow with its head: nothing to answer.
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {DRAIN_TIMEOUT:?}");
    }
    Ok(())
}

fn with_peer(app: Router, peer: SocketAddr) -> AddExtension<Router, ConnectInfo<SocketAddr>> {
    AddExtension::new(app, ConnectInfo(peer))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::{body::Body, http::Request, routing::get};
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    fn small() -> Limits {
        Limits {
            request_timeout: Duration::from_millis(200),
            body_limit: 16,
            max_concurrent_requests: 1,
            ..Limits::default()
        }
    }

    fn request(method: &str, path: &str, body: &'static str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body))
            .expect("request")
    }

    #[test]
    fn a_long_poll_gets_its_wait_on_top_of_the_request_timeout() {
        let base = Duration::from_secs(30);
        let at = |method: &str, path: &str| allowed_time(base, &request(method, path, ""));
        assert_eq!(
            at(
                "GET",
                "/api/v2/plugin-services/jobs?status=pending&waitSeconds=20"
            ),
            Duration::from_secs(50)
        );
        // Capped at the route's maximum (the route answers 400 above it anyway).
        assert_eq!(
            at("GET", "/api/v2/plugin-services/jobs?waitSeconds=600"),
            Duration::from_secs(90)
        );
        assert_eq!(at("GET", "/api/v2/plugin-services/jobs"), base);
        assert_eq!(
            at("POST", "/api/v2/plugin-services/jobs?waitSeconds=20"),
            base
        );
        assert_eq!(at("GET", "/v1/plugins?waitSeconds=20"), base);
    }

    #[tokio::test]
    async fn a_request_beyond_the_limit_is_shed_and_every_answer_is_counted_by_route() {
        let release = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let (r, e) = (release.clone(), entered.clone());
        let router = Router::new()
            .route(
                "/hold/{id}",
                get(move || {
                    let (r, e) = (r.clone(), e.clone());
                    async move {
                        e.notify_one();
                        r.notified().await;
                        "held"
                    }
                }),
            )
            .route(
                "/echo",
                axum::routing::post(|body: String| async move { body }),
            );
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let app = app(
            router,
            &Limits {
                request_timeout: Duration::from_secs(30),
                ..small()
            },
            metrics,
        );

        let held = tokio::spawn(app.clone().oneshot(request("GET", "/hold/1", "")));
        entered.notified().await;
        let shed = app
            .clone()
            .oneshot(request("GET", "/hold/2", ""))
            .await
            .expect("answer");
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        release.notify_one();
        let held = held.await.expect("task").expect("answer");
        assert_eq!(held.status(), StatusCode::OK);

        // The permit is back; a body over the limit is refused by its Content-Length.
        let big = app
            .clone()
            .oneshot(
                Request::builder()
                    .method("POST")
                    .uri("/echo")
                    .header(header::CONTENT_LENGTH, "17")
                    .body(Body::from("x".repeat(17)))
                    .expect("request"),
            )
            .await
            .expect("answer");
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let fine = app
            .clone()
            .oneshot(request("POST", "/echo", "ok"))
            .await
            .expect("answer");
        assert_eq!(fine.status(), StatusCode::OK);
        let missing = app
            .oneshot(request("GET", "/nowhere/7", ""))
            .await
            .expect("answer");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);

        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        for series in [
            r#"plugin_operator_http_requests_total{route="/hold/{id}",method="GET",status="200"} 1"#,
            r#"plugin_operator_http_requests_total{route="/hold/{id}",method="GET",status="503"} 1"#,
            r#"plugin_operator_http_requests_total{route="/echo",method="POST",status="413"} 1"#,
            r#"plugin_operator_http_requests_total{route="/echo",method="POST",status="200"} 1"#,
            r#"plugin_operator_http_request_duration_seconds_count{route="/echo",method="POST"} 2"#,
        ] {
            assert!(text.contains(series), "{series} not in\n{text}");
        }
        assert!(
            !text.contains("/hold/1") && !text.contains("/nowhere/7"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_request_that_takes_too_long_is_answered_503() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let app = app(router, &small(), HttpMetrics::unregistered());
        let started = std::time::Instant::now();
        let answer = app
            .oneshot(request("GET", "/slow", ""))
            .await
            .expect("answer");
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key(header::RETRY_AFTER));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
