//! Answers seed 003: `POST /a/auth/v0/token`, plugin-scoped tokens by OAuth 2 client credentials
//! (RFC 6749 §4.4) and refresh (§6).
use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt, api::PostParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{AUDIENCE, Settings};
use crate::{
    api::{ApiState, error::ApiError, observe::CallerName},
    resources::{
        PluginInstall,
        names::{self, FIELD_MANAGER, credentials},
    },
    runtime::{
        call::{CallError, with_timeout},
        random,
    },
};

/// Seconds a client waits before asking again while its credentials are being made.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// The scopes a plugin may ask for.
pub const SCOPE_PLUGIN: &str = "plugin";
pub const SCOPE_REFRESH: &str = "token.refresh";

/// The token request (form-encoded; a JSON object is taken too).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub struct TokenForm {
    /// `client_credentials` or `refresh_token`.
    grant_type: String,
    /// The client id (`<namespace>.<install>`), unless sent with Basic auth.
    client_id: Option<String>,
    /// The client secret, unless sent with Basic auth.
    client_secret: Option<String>,
    /// `plugin,token.refresh` (the default) or `plugin` (no refresh token); comma or space
    /// separated.
    scope: Option<String>,
    /// For `refresh_token`: the refresh token.
    refresh_token: Option<String>,
}

/// The OAuth 2 token response.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// `Bearer`.
    pub token_type: &'static str,
    /// A ServiceAccount token of the install for the audience
    /// `plugin-operator.dev/plugin-services`.
    pub access_token: String,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_in: Option<i64>,
    /// The scopes granted.
    pub scope: String,
}

/// The OAuth 2 error response (RFC 6749 §5.2).
#[derive(Serialize, ToSchema, Debug)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unsupported_grant_type`,
    /// `invalid_scope`, `temporarily_unavailable` or `server_error`.
    pub error: &'static str,
    pub error_description: String,
    #[serde(skip)]
    pub status: u16,
    /// A 503's `Retry-After`, in seconds.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            error_description: description.into(),
            status,
            retry_after: None,
        }
    }
    /// 503 `temporarily_unavailable`, to be asked again after `retry_after` seconds.
    fn unavailable(description: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(503, "temporarily_unavailable", description)
        }
    }
    fn server_error(d: impl Into<String>) -> Self {
        Self::new(500, "server_error", d)
    }
    fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", d)
    }
    fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", d)
    }
    fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", d)
    }
    fn from_api(what: &str, err: &ApiError) -> Self {
        match err {
            ApiError::Unavailable { retry_after, .. } => {
                Self::unavailable(format!("{what}: {err}; try again shortly"), *retry_after)
            }
            ApiError::NotFound(_) => Self::unavailable(
                format!("{what}: {err}; try again shortly"),
                RETRY_AFTER_SECONDS,
            ),
            _ => Self::server_error(format!("{what}: {err}")),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let retry_after = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"plugin-operator\""),
            );
        }
        response
    }
}

type Result<T> = std::result::Result<T, OAuthError>;

/// SHA-256 of a refresh token, hex: all the Secret keeps of it.
pub fn refresh_token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The granted scopes: `plugin` must be among them; unknown ones are refused.
pub fn parse_scope(scope: Option<&str>) -> Result<(bool, String)> {
    let Some(scope) = scope.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok((true, format!("{SCOPE_PLUGIN},{SCOPE_REFRESH}")));
    };
    let mut refresh = false;
    let mut plugin = false;
    for item in scope.split([',', ' ']).filter(|s| !s.is_empty()) {
        match item {
            SCOPE_PLUGIN => plugin = true,
            SCOPE_REFRESH => refresh = true,
            other => {
                return Err(OAuthError::new(
                    400,
                    "invalid_scope",
                    format!("unknown scope {other:?}: only {SCOPE_PLUGIN} and {SCOPE_REFRESH}"),
                ));
            }
        }
    }
    if !plugin {
        return Err(OAuthError::new(
            400,
            "invalid_scope",
            format!("the scope must include {SCOPE_PLUGIN}"),
        ));
    }
    let granted = if refresh {
        format!("{SCOPE_PLUGIN},{SCOPE_REFRESH}")
    } else {
        SCOPE_PLUGIN.to_owned()
    };
    Ok((refresh, granted))
}

/// The request's parameters: a form, or a JSON object.
async fn parameters(headers: &HeaderMap, body: Bytes) -> Result<BTreeMap<String, String>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| OAuthError::invalid_request(format!("malformed JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(OAuthError::invalid_request(
                "the body must be a JSON object",
            ));
        };
        return Ok(object
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Null => None,
                other => Some((k, other.to_string())),
            })
            .collect());
    }
    let request = axum::http::Request::builder()
        .method("POST")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .map_err(|e| OAuthError::invalid_request(e.to_string()))?;
    let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(request, &())
        .await
        .map_err(|e| OAuthError::invalid_request(format!("malformed form body: {e}")))?;
    Ok(pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect())
}

/// The client id and secret: Basic auth, else the body's `client_id` and `client_secret`.
fn client_credentials(
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<(String, String)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| OAuthError::invalid_client("the Authorization header is not text"))?;
        let (scheme, encoded) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(OAuthError::invalid_client(
                "the Authorization header must be `Basic base64(client_id:client_secret)`",
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| OAuthError::invalid_client("the Basic credentials are not base64"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| OAuthError::invalid_client("the Basic credentials lack a `:`"))?;
        return Ok((id.to_owned(), secret.to_owned()));
    }
    match (params.get("client_id"), params.get("client_secret")) {
        (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
        _ => Err(OAuthError::invalid_client(
            "no client credentials: send Basic auth or client_id and client_secret",
        )),
    }
}

/// The client id a token request names (Basic auth, else the body), read as the route reads
/// it: for the route's rate limits.
pub async fn client_id(headers: &HeaderMap, body: &Bytes) -> Option<String> {
    let params = parameters(headers, body.clone()).await.unwrap_or_default();
    client_credentials(headers, &params).ok().map(|(id, _)| id)
}

/// What the credentials Secret keeps of one refresh token (under its SHA-256): when it expires
/// (Unix seconds) and when it was issued (Unix milliseconds), which tells the oldest when the
/// cap is reached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshRecord {
    pub expires: i64,
    pub issued: i64,
}

/// A record as stored: the object above, or a bare expiry as written before the cap existed
/// (read as issued at 0: the oldest).
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Record(RefreshRecord),
    Expiry(i64),
}

impl From<Stored> for RefreshRecord {
    fn from(stored: Stored) -> Self {
        match stored {
            Stored::Record(record) => record,
            Stored::Expiry(expires) => Self { expires, issued: 0 },
        }
    }
}

/// The live refresh tokens of a credentials Secret, expired ones left out (none before the
/// first is issued). A record that does not read is an error, not an empty record: writing over
/// it would revoke every token without a word.
fn refresh_tokens(secret: &Secret, now: i64) -> Result<BTreeMap<String, RefreshRecord>> {
    let Some(stored) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(credentials::REFRESH_TOKENS))
    else {
        return Ok(BTreeMap::new());
    };
    let stored: BTreeMap<String, Stored> = serde_json::from_slice(&stored.0).map_err(|err| {
        OAuthError::server_error(format!(
            "the credentials Secret's {} do not read ({err}); rotate the credentials \
             (annotation {}) to start afresh",
            credentials::REFRESH_TOKENS,
            credentials::ROTATE_ANNOTATION
        ))
    })?;
    Ok(stored
        .into_iter()
        .map(|(hash, stored)| (hash, RefreshRecord::from(stored)))
        .filter(|(_, record)| record.expires > now)
        .collect())
}

/// Drops the oldest records (by issue time) until at most `cap` are left.
fn keep_newest(tokens: &mut BTreeMap<String, RefreshRecord>, cap: usize) {
    while tokens.len() > cap {
        let oldest = tokens
            .iter()
            .min_by_key(|(hash, record)| (record.issued, record.expires, hash.as_str()))
            .map(|(hash, _)| hash.clone());
        match oldest {
            Some(hash) => tokens.remove(&hash),
            None => break,
        };
    }
}

fn client_secret(secret: &Secret) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(credentials::CLIENT_SECRET))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

/// Get a plugin-scoped access token.
///
/// Client credentials (`grant_type=client_credentials`) with Basic auth or `client_id` and
/// `client_secret` in the body; or a refresh (`grant_type=refresh_token`, `refresh_token`, and
/// the client credentials again). A refresh answers a new refresh token and revokes the old.
/// Errors are OAuth 2's: 401 `invalid_client`, 400 `invalid_request`, `invalid_grant`,
/// `unsupported_grant_type`, `invalid_scope`; 503 `temporarily_unavailable` with `Retry-After`
/// until the operator has created the install's credentials (or finished rotating them).
#[utoipa::path(
    post,
    path = "/a/auth/v0/token",
    tag = "seed 003",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, body = OAuthError), (status = 401, body = OAuthError),
        (status = 503, body = OAuthError),
    ),
    security((), ("basic" = []))
)]
pub async fn token(
    State(state): State<ApiState>,
    settings: Option<axum::Extension<Settings>>,
    caller_name: Option<axum::Extension<CallerName>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let settings = settings.map(|s| s.0).unwrap_or_default();
    let caller_name = caller_name.map(|c| c.0).unwrap_or_default();
    match issue(&state, settings, &caller_name, &headers, body).await {
        Ok(answer) => {
            let mut response = Json(answer).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(err) => err.into_response(),
    }
}

async fn issue(
    state: &ApiState,
    settings: Settings,
    caller_name: &CallerName,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<TokenResponse> {
    if !state.is_ready() {
        return Err(OAuthError::unavailable(
            "the operator's caches are not synced yet",
            1,
        ));
    }
    let params = parameters(headers, body).await?;
    let grant = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?
        .clone();
    if grant != "client_credentials" && grant != "refresh_token" {
        return Err(OAuthError::new(
            400,
            "unsupported_grant_type",
            format!("{grant:?}: only client_credentials and refresh_token"),
        ));
    }
    let (client_id, client_secret_sent) = client_credentials(headers, &params)?;
    let (refresh, scope) = parse_scope(params.get("scope").map(String::as_str))?;
    let refresh_token = if grant == "refresh_token" {
        Some(
            params
                .get("refresh_token")
                .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?
                .clone(),
        )
    } else {
        None
    };

    let unknown = || OAuthError::invalid_client("unknown client or wrong secret");
    let (namespace, name) = client_id.split_once('.').ok_or_else(unknown)?;
    let install = crate::runtime::cache::get(&state.caches().installs, namespace, name)
        .ok_or_else(unknown)?;
    let secret = credentials_of(state, &install).await?;
    if !constant_time_eq(client_secret_sent.as_bytes(), &client_secret(&secret)) {
        tracing::info!(%namespace, install = %name, "token request with a wrong client secret");
        return Err(unknown());
    }
    // The access log names the client only once its secret is right.
    caller_name.set(&client_id);

    let new_refresh = if refresh {
        let secret = random::secret().map_err(|err| {
            OAuthError::server_error(format!("no random refresh token can be made: {err}"))
        })?;
        Some(secret)
    } else {
        None
    };
    if refresh_token.is_some() || new_refresh.is_some() {
        store_refresh_token(
            state,
            &install,
            secret,
            refresh_token.as_deref(),
            new_refresh.as_deref(),
            settings,
        )
        .await?;
    }
    let issued = state
        .backend()
        .request_token(namespace, name, AUDIENCE, settings.access_token_seconds)
        .await
        .map_err(|e| OAuthError::from_api("TokenRequest for the install's ServiceAccount", &e))?;
    tracing::info!(%namespace, install = %name, grant = %grant, "plugin token issued");
    // The lifetime the API server gave the token (`exp - iat` of its claims), which may be
    // shorter than asked for (`--service-account-max-token-expiration`); else the time left
    // until its expirationTimestamp.
    let expires_in = crate::api::auth::jwt_lifetime(&issued.token)
        .unwrap_or_else(|| issued.expires.duration_since(state.now()).as_secs())
        .max(0);
    Ok(TokenResponse {
        token_type: "Bearer",
        access_token: issued.token,
        expires_in,
        refresh_token_expires_in: new_refresh.as_ref().map(|_| settings.refresh_token_seconds),
        refresh_token: new_refresh,
        scope,
    })
}

/// The install's credentials Secret as the controller made it. Only the controller creates and
/// rotates it: until it has created it, and while a rotation the install asks for is not done
/// yet, the answer is 503 with `Retry-After`.
async fn credentials_of(state: &ApiState, install: &PluginInstall) -> Result<Secret> {
    let api: Api<Secret> = Api::namespaced(
        state.client().clone(),
        &install.namespace().unwrap_or_default(),
    );
    let name = names::credentials_secret_name(&install.name_any());
    let secret = with_timeout(api.get_opt(&name)).await.map_err(|e| {
        OAuthError::from_api(
            "reading the credentials",
            &ApiError::from_kube("Secret", &e),
        )
    })?;
    // A Secret of that name that the install does not own is not its credentials (the
    // controller reports the install's NameConflict): never authenticate against it.
    let Some(secret) = secret.filter(|s| {
        names::owned_by(
            Some(s.owner_references()),
            &install.uid().unwrap_or_default(),
        )
    }) else {
        return Err(OAuthError::unavailable(
            "the install's credentials are not created yet; try again shortly",
            RETRY_AFTER_SECONDS,
        ));
    };
    let made_for = secret
        .annotations()
        .get(credentials::ROTATION_ANNOTATION)
        .map_or("", String::as_str);
    if made_for != names::credentials_rotation(install) {
        return Err(OAuthError::unavailable(
            "the install's credentials are being rotated; try again shortly",
            RETRY_AFTER_SECONDS,
        ));
    }
    Ok(secret)
}

/// Consumes `old` (a refresh; `invalid_grant` when unknown or expired) and records `new`,
/// pruning expired ones, with the Secret's resourceVersion (retried on a conflict).
async fn store_refresh_token(
    state: &ApiState,
    install: &PluginInstall,
    mut secret: Secret,
    old: Option<&str>,
    new: Option<&str>,
    settings: Settings,
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(
        state.client().clone(),
        &install.namespace().unwrap_or_default(),
    );
    let name = names::credentials_secret_name(&install.name_any());
    let failed = |e: CallError| {
        OAuthError::from_api(
            "storing the refresh token",
            &ApiError::from_kube("Secret", &e),
        )
    };
    for _ in 0..5 {
        let now = state.now();
        let mut tokens = refresh_tokens(&secret, now.as_second())?;
        if let Some(old) = old
            && tokens.remove(&refresh_token_hash(old)).is_none()
        {
            return Err(OAuthError::invalid_grant(
                "the refresh token is unknown, expired or revoked",
            ));
        }
        if let Some(new) = new {
            let record = RefreshRecord {
                expires: now.as_second() + settings.refresh_token_seconds,
                issued: now.as_millisecond(),
            };
            tokens.insert(refresh_token_hash(new), record);
        }
        keep_newest(&mut tokens, settings.max_refresh_tokens.max(1));
        let encoded = serde_json::to_vec(&tokens).map_err(|err| {
            OAuthError::server_error(format!("the refresh tokens cannot be written: {err}"))
        })?;
        secret
            .data
            .get_or_insert_with(Default::default)
            .insert(credentials::REFRESH_TOKENS.to_owned(), ByteString(encoded));
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match with_timeout(api.replace(&name, &params, &secret)).await {
            Ok(_) => return Ok(()),
            Err(err) if err.is_conflict() => {
                secret = with_timeout(api.get(&name)).await.map_err(failed)?;
            }
            Err(err) => return Err(failed(err)),
        }
    }
    Err(OAuthError::unavailable(
        "the credentials changed concurrently; try again",
        1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope(None).map(|s| s.0).ok(),
            Some(true),
            "both by default"
        );
        assert_eq!(
            parse_scope(Some("plugin,token.refresh")).ok(),
            Some((true, "plugin,token.refresh".to_owned()))
        );
        assert_eq!(
            parse_scope(Some("plugin")).ok(),
            Some((false, "plugin".to_owned()))
        );
        assert_eq!(
            parse_scope(Some("token.refresh plugin")).map(|s| s.0).ok(),
            Some(true)
        );
        for bad in ["admin", "token.refresh", "plugin,admin"] {
            assert_eq!(
                parse_scope(Some(bad)).map(|_| ()).expect_err(bad).error,
                "invalid_scope"
            );
        }
    }

    #[test]
    fn secrets_compare_and_hash() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let hash = refresh_token_hash("token");
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains("token"));
    }

    #[test]
    fn basic_auth_wins_over_the_body() {
        let mut headers = HeaderMap::new();
        let params = BTreeMap::from([
            ("client_id".to_owned(), "ns.b".to_owned()),
            ("client_secret".to_owned(), "s2".to_owned()),
        ]);
        assert_eq!(
            client_credentials(&headers, &params).ok(),
            Some(("ns.b".to_owned(), "s2".to_owned()))
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("ns.a:s1");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).expect("header"),
        );
        assert_eq!(
            client_credentials(&headers, &params).ok(),
            Some(("ns.a".to_owned(), "s1".to_owned()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            client_credentials(&headers, &params)
                .expect_err("bearer")
                .status,
            401
        );
        assert_eq!(
            client_credentials(&HeaderMap::new(), &BTreeMap::new())
                .expect_err("none")
                .error,
            "invalid_client"
        );
    }

    fn secret_with(tokens: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                credentials::REFRESH_TOKENS.to_owned(),
                ByteString(tokens.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn expired_refresh_tokens_are_dropped_and_old_records_still_read() {
        let secret = secret_with(
            r#"{"a": 10, "b": 30, "c": {"expires": 40, "issued": 5000}, "d": {"expires": 15, "issued": 1}}"#,
        );
        assert_eq!(
            refresh_tokens(&secret, 20).ok(),
            Some(BTreeMap::from([
                (
                    "b".to_owned(),
                    RefreshRecord {
                        expires: 30,
                        issued: 0
                    }
                ),
                (
                    "c".to_owned(),
                    RefreshRecord {
                        expires: 40,
                        issued: 5000
                    }
                ),
            ]))
        );
        assert_eq!(
            refresh_tokens(&Secret::default(), 20).ok(),
            Some(BTreeMap::new())
        );
        let err = refresh_tokens(&secret_with("not json"), 20).expect_err("loud");
        assert_eq!((err.status, err.error), (500, "server_error"));
    }

    #[test]
    fn the_oldest_refresh_tokens_go_first() {
        let record = |issued| RefreshRecord {
            expires: 1_000,
            issued,
        };
        // Issue order is not hash order.
        let mut tokens = BTreeMap::from([
            ("z".to_owned(), record(1)),
            ("a".to_owned(), record(3)),
            ("m".to_owned(), record(2)),
            ("b".to_owned(), record(4)),
        ]);
        keep_newest(&mut tokens, 2);
        assert_eq!(tokens.keys().collect::<Vec<_>>(), ["a", "b"]);
        keep_newest(&mut tokens, 5);
        assert_eq!(tokens.len(), 2);
    }

    #[test]
    fn unavailable_answers_say_when_to_ask_again() {
        let response = OAuthError::unavailable("not yet", 5).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
