//! Who the caller is (TokenReview) and what they may do (SubjectAccessReview), both cached by
//! the SHA-256 of the token.
//!
//! The caches ([`moka`]: concurrent, bounded, evicts the least used first) hold at most
//! [`CAPACITY`] entries each. Every entry carries its own end ([`cache_until`]): never after the
//! token expires (the JWT `exp` claim, read without verifying it — the API server verifies), never
//! more than [`MAX_TTL`] after the review, [`DEFAULT_TTL`] for tokens without `exp`, and
//! [`NEGATIVE_TTL`] for refusals, so that a new RoleBinding takes effect quickly. So a revoked
//! permission or a deleted ServiceAccount still works for at most [`MAX_TTL`].
use std::{sync::Arc, time::Duration};

use base64::Engine;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use super::{
    backend::{Access, Backend, User},
    error::ApiError,
};
use crate::runtime::clock::Clock;

/// Most entries each cache holds.
pub const CAPACITY: u64 = 10_000;
/// Longest an answer is reused.
pub const MAX_TTL: Duration = Duration::from_secs(120);
/// How long an accepted token without an `exp` claim is trusted before it is reviewed again.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// How long a refusal (unknown token, RBAC no) is reused.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// SHA-256 of a token: the caches never hold tokens.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: TokenKey,
    pub user: Arc<User>,
    /// When the token expires, if it says.
    pub expires: Option<Timestamp>,
}

#[derive(Clone)]
struct Cached<T> {
    value: T,
    until: Timestamp,
}

/// Authentication and authorization with their caches.
pub struct Auth {
    backend: Arc<dyn Backend>,
    clock: Clock,
    users: Cache<TokenKey, Cached<Option<Arc<User>>>>,
    decisions: Cache<(TokenKey, Access), Cached<bool>>,
}

impl Auth {
    pub fn new(backend: Arc<dyn Backend>, clock: Clock) -> Self {
        Self {
            backend,
            clock,
            users: bounded(),
            decisions: bounded(),
        }
    }

    /// The caller a token belongs to, or 401.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        if !plausible_token(token) {
            return Err(unauthenticated(
                "the token is malformed (printable ASCII only, at most 16 KiB)",
            ));
        }
        let key = token_key(token);
        let now = self.clock.now();
        let expires = jwt_expiry(token);
        if expires.is_some_and(|exp| exp <= now) {
            self.users.invalidate(&key);
            return Err(unauthenticated("the token has expired"));
        }
        let user = match self.users.get(&key).filter(|c| c.until > now) {
            Some(cached) => cached.value,
            None => {
                let user = self.backend.review_token(token).await?.map(Arc::new);
                if let Some(until) = cache_until(now, expires, user.is_some()) {
                    self.users.insert(
                        key,
                        Cached {
                            value: user.clone(),
                            until,
                        },
                    );
                }
                user
            }
        };
        match user {
            Some(user) => Ok(Caller { key, user, expires }),
            None => Err(unauthenticated(
                "the token is not valid (the API server's TokenReview refused it)",
            )),
        }
    }

    /// Whether the caller may do `access`.
    pub async fn allowed(&self, caller: &Caller, access: &Access) -> Result<bool, ApiError> {
        let now = self.clock.now();
        let key = (caller.key, access.clone());
        if let Some(cached) = self.decisions.get(&key).filter(|c| c.until > now) {
            return Ok(cached.value);
        }
        let allowed = self.backend.review_access(&caller.user, access).await?;
        if let Some(until) = cache_until(now, caller.expires, allowed) {
            self.decisions.insert(
                key,
                Cached {
                    value: allowed,
                    until,
                },
            );
        }
        Ok(allowed)
    }

    /// `Ok` when the caller may do `access`, else 403.
    pub async fn authorize(&self, caller: &Caller, access: &Access) -> Result<(), ApiError> {
        if self.allowed(caller, access).await? {
            Ok(())
        } else {
            Err(ApiError::Forbidden(access.refusal(&caller.user)))
        }
    }
}

/// Longest token sent to a TokenReview.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Whether `token` could be a token at all: a refusal that costs no TokenReview (and takes no
/// place in the cache). Bearer tokens are printable ASCII (RFC 6750's `b64token` and the opaque
/// tokens Kubernetes accepts alike); ServiceAccount tokens are about 1 KiB.
pub fn plausible_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.bytes().all(|b| b.is_ascii_graphic())
}

fn bounded<K, V>() -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(MAX_TTL)
        .build()
}

fn unauthenticated(why: &str) -> ApiError {
    ApiError::Unauthenticated(format!("{why}; send a ServiceAccount or user token"))
}

/// Until when an answer about a token may be reused: `positive` answers (a user, an allow) for
/// [`MAX_TTL`] ([`DEFAULT_TTL`] when the token's expiry is unknown), refusals for
/// [`NEGATIVE_TTL`]; never after the token expires. `None`: not at all.
pub fn cache_until(
    now: Timestamp,
    expires: Option<Timestamp>,
    positive: bool,
) -> Option<Timestamp> {
    let ttl = match (positive, expires) {
        (false, _) => NEGATIVE_TTL,
        (true, Some(_)) => MAX_TTL,
        (true, None) => DEFAULT_TTL,
    };
    let ttl = SignedDuration::try_from(ttl).ok()?;
    let until = now.checked_add(ttl).ok()?;
    let until = match expires {
        Some(exp) => until.min(exp),
        None => until,
    };
    (until > now).then_some(until)
}

/// The `exp` claim of a JWT, read without verifying the signature; `None` when the token is not
/// a JWT or has no numeric `exp`.
pub fn jwt_expiry(token: &str) -> Option<Timestamp> {
    Timestamp::from_second(jwt_seconds(token, "exp")?).ok()
}

/// The lifetime a JWT was issued with: its `exp` minus its `iat` claim, in seconds (not
/// verified: only for telling a caller what the API server issued).
pub fn jwt_lifetime(token: &str) -> Option<i64> {
    Some(jwt_seconds(token, "exp")? - jwt_seconds(token, "iat")?)
}

/// A numeric date claim of a JWT (not verified).
fn jwt_seconds(token: &str, claim: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let value = claims.get(claim)?;
    value.as_i64().or_else(|| value.as_f64().map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    };

    use futures::future::BoxFuture;

    use super::*;
    use crate::api::backend::IssuedToken;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("valid")
    }

    fn jwt(claims: serde_json::Value) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            engine.encode(br#"{"alg":"RS256"}"#),
            engine.encode(claims.to_string())
        )
    }

    #[test]
    fn the_expiry_is_read_from_a_jwt_without_verifying_it() {
        assert_eq!(
            jwt_expiry(&jwt(serde_json::json!({"exp": 1_700_000_000}))),
            Some(at(1_700_000_000))
        );
        assert_eq!(jwt_expiry(&jwt(serde_json::json!({"sub": "x"}))), None);
        assert_eq!(jwt_expiry(&jwt(serde_json::json!({"exp": "soon"}))), None);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.%%%.c"), None);
        assert_eq!(jwt_expiry("a.b.c.d"), None);
        assert_eq!(
            jwt_lifetime(&jwt(
                serde_json::json!({"iat": 1_700_000_000, "exp": 1_700_086_400})
            )),
            Some(86_400)
        );
        assert_eq!(
            jwt_lifetime(&jwt(serde_json::json!({"exp": 1_700_000_000}))),
            None
        );
    }

    #[test]
    fn answers_are_reused_at_most_until_the_token_expires() {
        let now = at(1_000);
        // A token that lives long: MAX_TTL.
        assert_eq!(cache_until(now, Some(at(100_000)), true), Some(at(1_120)));
        // One that expires sooner: until it expires.
        assert_eq!(cache_until(now, Some(at(1_030)), true), Some(at(1_030)));
        // Without an expiry: DEFAULT_TTL.
        assert_eq!(cache_until(now, None, true), Some(at(1_060)));
        // Refusals briefly, and not past the expiry either.
        assert_eq!(cache_until(now, None, false), Some(at(1_010)));
        assert_eq!(cache_until(now, Some(at(1_005)), false), Some(at(1_005)));
        // An expired token: not at all.
        assert_eq!(cache_until(now, Some(at(1_000)), true), None);
        assert_eq!(cache_until(now, Some(at(900)), true), None);
    }

    /// Counts the reviews; accepts tokens that start with "good", allows namespaces "a*".
    #[derive(Default)]
    struct Counting {
        token_reviews: AtomicUsize,
        access_reviews: AtomicUsize,
        deny_all: Mutex<bool>,
    }

    impl Backend for Counting {
        fn review_token<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<User>, ApiError>> {
            self.token_reviews.fetch_add(1, Ordering::SeqCst);
            let user = token.starts_with("good").then(|| User {
                username: "alice".into(),
                ..Default::default()
            });
            Box::pin(async move { Ok(user) })
        }

        fn review_access<'a>(
            &'a self,
            _user: &'a User,
            access: &'a Access,
        ) -> BoxFuture<'a, Result<bool, ApiError>> {
            self.access_reviews.fetch_add(1, Ordering::SeqCst);
            let deny = self.deny_all.lock().map(|d| *d).unwrap_or(true);
            let allowed = !deny && access.namespace.starts_with('a');
            Box::pin(async move { Ok(allowed) })
        }

        fn request_token<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: i64,
        ) -> BoxFuture<'a, Result<IssuedToken, ApiError>> {
            Box::pin(async { Err(ApiError::Internal("not here".into())) })
        }
    }

    fn auth_at(clock: &'static AtomicI64) -> (Arc<Counting>, Auth) {
        let backend = Arc::new(Counting::default());
        let now = Clock::new(move || at(clock.load(Ordering::SeqCst)));
        (backend.clone(), Auth::new(backend, now))
    }

    #[tokio::test]
    async fn a_token_is_reviewed_once_until_its_cache_entry_ends() {
        static CLOCK: AtomicI64 = AtomicI64::new(1_000);
        let (backend, auth) = auth_at(&CLOCK);
        let token = format!("good{}", jwt(serde_json::json!({"exp": 1_090})));
        for _ in 0..3 {
            let caller = auth.authenticate(&token).await.expect("accepted");
            assert_eq!(caller.user.username, "alice");
            assert_eq!(caller.expires, Some(at(1_090)));
        }
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 1);
        // The entry ends with the token: later it is not reviewed again but refused.
        CLOCK.store(1_089, Ordering::SeqCst);
        auth.authenticate(&token).await.expect("still valid");
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 1);
        CLOCK.store(1_090, Ordering::SeqCst);
        let err = auth.authenticate(&token).await.expect_err("expired");
        assert!(matches!(err, ApiError::Unauthenticated(_)), "{err:?}");
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_token_without_expiry_is_reviewed_again_after_the_default_ttl() {
        static CLOCK: AtomicI64 = AtomicI64::new(1_000);
        let (backend, auth) = auth_at(&CLOCK);
        auth.authenticate("good-opaque").await.expect("accepted");
        CLOCK.store(1_059, Ordering::SeqCst);
        auth.authenticate("good-opaque").await.expect("accepted");
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 1);
        CLOCK.store(1_060, Ordering::SeqCst);
        auth.authenticate("good-opaque").await.expect("accepted");
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn tokens_that_cannot_be_tokens_cost_no_review() {
        static CLOCK: AtomicI64 = AtomicI64::new(1_000);
        let (backend, auth) = auth_at(&CLOCK);
        for bad in ["good token", "good\u{e9}", &"g".repeat(MAX_TOKEN_BYTES + 1)] {
            let err = auth.authenticate(bad).await.expect_err("malformed");
            assert!(matches!(err, ApiError::Unauthenticated(_)), "{err:?}");
        }
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 0);
        auth.authenticate(&"good".repeat(100))
            .await
            .expect("long but fine");
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refusals_are_cached_briefly() {
        static CLOCK: AtomicI64 = AtomicI64::new(1_000);
        let (backend, auth) = auth_at(&CLOCK);
        for _ in 0..2 {
            let err = auth.authenticate("garbage").await.expect_err("refused");
            assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
        }
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 1);
        CLOCK.store(1_010, Ordering::SeqCst);
        auth.authenticate("garbage").await.expect_err("refused");
        assert_eq!(backend.token_reviews.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn decisions_are_cached_per_token_and_access() {
        static CLOCK: AtomicI64 = AtomicI64::new(1_000);
        let (backend, auth) = auth_at(&CLOCK);
        *backend.deny_all.lock().expect("lock") = false;
        let caller = auth.authenticate("good-1").await.expect("accepted");
        let in_a = Access::new("get", "plugininstalls", "a1");
        let in_b = Access::new("get", "plugininstalls", "b1");
        auth.authorize(&caller, &in_a).await.expect("allowed");
        auth.authorize(&caller, &in_a).await.expect("allowed");
        let denied = auth.authorize(&caller, &in_b).await.expect_err("denied");
        assert_eq!(denied.status(), axum::http::StatusCode::FORBIDDEN);
        assert!(denied.to_string().contains("cannot get"), "{denied}");
        assert_eq!(backend.access_reviews.load(Ordering::SeqCst), 2);
        // An allow lasts as long as an accepted token (DEFAULT_TTL without expiry), a refusal
        // NEGATIVE_TTL.
        *backend.deny_all.lock().expect("lock") = true;
        CLOCK.store(1_010, Ordering::SeqCst);
        auth.authorize(&caller, &in_a).await.expect("still allowed");
        auth.authorize(&caller, &in_b).await.expect_err("denied");
        assert_eq!(backend.access_reviews.load(Ordering::SeqCst), 3);
        CLOCK.store(1_120, Ordering::SeqCst);
        auth.authorize(&caller, &in_a).await.expect_err("revoked");
        assert_eq!(backend.access_reviews.load(Ordering::SeqCst), 4);
    }
}
