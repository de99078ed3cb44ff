//! Typed extractors whose rejections are the seed's own error body, naming the field: the
//! caller ([`Authenticated`]), the JSON body ([`JsonBody`], read with [`Fields`] so that every
//! issue is reported, not only the first), path segments ([`SeedPath`]) and the query
//! ([`SeedQuery`]).
use std::marker::PhantomData;

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{HeaderMap, header, request::Parts},
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{
    ApiState,
    auth::Caller,
    error::{ApiError, ErrorShape, Issue, SeedError},
};

/// Largest body the API reads (`--api-body-limit-bytes` may lower it).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The authenticated caller of a route whose errors have the shape `E`.
pub struct Authenticated<E> {
    pub caller: Caller,
    _seed: PhantomData<fn() -> E>,
}

impl<E: ErrorShape> FromRequestParts<ApiState> for Authenticated<E> {
    type Rejection = SeedError<E>;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, SeedError<E>> {
        if !state.is_ready() {
            return Err(ApiError::Unavailable {
                message: "the operator's caches are not synced yet".into(),
                retry_after: 1,
            }
            .into());
        }
        let token = token(&parts.headers, E::X_AUTH_TOKEN)?;
        let caller = state.auth().authenticate(&token).await?;
        super::observe::CallerName::record(parts, &caller.user.username);
        Ok(Self {
            caller,
            _seed: PhantomData,
        })
    }
}

/// The caller's token: `Authorization: Bearer <token>` (and, where `x_auth_token`, the
/// `X-Auth-Token` header).
pub fn token(headers: &HeaderMap, x_auth_token: bool) -> Result<String, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| {
            ApiError::Unauthenticated("the Authorization header is not text".into())
        })?;
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthenticated(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(ApiError::Unauthenticated(
                "the Authorization header has an empty token".into(),
            ));
        }
        return Ok(token.to_owned());
    }
    if x_auth_token && let Some(value) = headers.get("x-auth-token") {
        let token = value.to_str().map(str::trim).unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::Unauthenticated(
                "the X-Auth-Token header is empty".into(),
            ));
        }
        return Ok(token.to_owned());
    }
    let wanted = if x_auth_token {
        "send `Authorization: Bearer <token>` or `X-Auth-Token: <token>`"
    } else {
        "send `Authorization: Bearer <token>`"
    };
    Err(ApiError::Unauthenticated(format!("no token: {wanted}")))
}

/// A request body read from a JSON object.
pub trait FromJson: Sized {
    fn from_json(fields: &mut Fields<'_>) -> Option<Self>;
}

/// A JSON object body read into `T`; a malformed body, a missing field or a field of the wrong
/// type is a 400 in `E`'s body naming every field that is wrong.
pub struct JsonBody<T, E> {
    pub value: T,
    _seed: PhantomData<fn() -> E>,
}

impl<T, E, S> FromRequest<S> for JsonBody<T, E>
where
    T: FromJson,
    E: ErrorShape,
    S: Send + Sync,
{
    type Rejection = SeedError<E>;

    async fn from_request(req: Request, _: &S) -> Result<Self, SeedError<E>> {
        let object = json_object(req).await?;
        let mut fields = Fields::new(&object);
        let value = T::from_json(&mut fields);
        fields.finish()?;
        let value = value.ok_or_else(|| ApiError::invalid("body", "is not valid"))?;
        Ok(Self {
            value,
            _seed: PhantomData,
        })
    }
}

/// Reads the body as one JSON object.
pub async fn json_object(req: Request) -> Result<Map<String, Value>, ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let content_type = content_type.to_str().unwrap_or_default();
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !(mime == "application/json" || mime.ends_with("+json")) {
            return Err(ApiError::invalid(
                "Content-Type",
                format!("{content_type:?}: the body must be application/json"),
            ));
        }
    }
    // The server's body-limit layer (`--api-body-limit-bytes`, at most this) may end it sooner.
    let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| ApiError::invalid("body", "larger than the body limit"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "body",
            "empty: a JSON object is required",
        ));
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid("body", format!("malformed JSON: {err}")))?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(ApiError::invalid(
            "body",
            format!("expected a JSON object, got {}", type_name(&other)),
        )),
    }
}

/// The JSON type of a value, for messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the fields of a JSON object and collects every issue.
pub struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: String,
    issues: Vec<Issue>,
}

impl<'a> Fields<'a> {
    pub fn new(object: &'a Map<String, Value>) -> Self {
        Self {
            object,
            prefix: String::new(),
            issues: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Records an issue about `name` (relative to this object).
    pub fn issue(&mut self, name: &str, message: impl Into<String>) {
        let field = self.path(name);
        self.issues.push(Issue::new(field, message));
    }

    /// A field that is there and not null.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    /// A required, non-empty string.
    pub fn required_str(&mut self, name: &str) -> Option<String> {
        match self.get(name) {
            None => {
                self.issue(name, "required");
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.issue(name, "required: must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.issue(name, format!("expected a string, got {}", type_name(other)));
                None
            }
        }
    }

    /// An optional string (absent, null and `""` are all `None`).
    pub fn optional_str(&mut self, name: &str) -> Option<String> {
        match self.get(name) {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.issue(name, format!("expected a string, got {}", type_name(other)));
                None
            }
        }
    }

    /// An optional integer.
    pub fn optional_i64(&mut self, name: &str) -> Option<i64> {
        match self.get(name) {
            None => None,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(other) => {
                self.issue(
                    name,
                    format!("expected an integer, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An optional object, read with `read` (its issues are named `name.field`).
    pub fn object<T>(
        &mut self,
        name: &str,
        required: bool,
        read: impl FnOnce(&mut Fields<'a>) -> Option<T>,
    ) -> Option<T> {
        match self.get(name) {
            None if required => {
                self.issue(name, "required");
                None
            }
            None => None,
            Some(Value::Object(object)) => {
                let mut inner = Fields {
                    object,
                    prefix: format!("{}.", self.path(name)),
                    issues: Vec::new(),
                };
                let value = read(&mut inner);
                let ok = inner.issues.is_empty();
                self.issues.append(&mut inner.issues);
                value.filter(|_| ok)
            }
            Some(other) => {
                self.issue(
                    name,
                    format!("expected an object, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// The entries of this object.
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.object.iter()
    }

    pub fn is_ok(&self) -> bool {
        self.issues.is_empty()
    }

    /// `Err` with every issue, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.issues))
        }
    }
}

/// Path parameters whose rejection is `E`'s 400.
pub struct SeedPath<T, E> {
    pub value: T,
    _seed: PhantomData<fn() -> E>,
}

impl<T, E, S> FromRequestParts<S> for SeedPath<T, E>
where
    T: DeserializeOwned + Send,
    E: ErrorShape,
    S: Send + Sync,
{
    type Rejection = SeedError<E>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, SeedError<E>> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self {
                value,
                _seed: PhantomData,
            }),
            Err(rejection) => Err(ApiError::invalid("path", rejection.body_text()).into()),
        }
    }
}

/// The query string as name → value (the last one wins), rejecting a malformed query with
/// `E`'s 400.
pub struct SeedQuery<E> {
    pub params: std::collections::BTreeMap<String, String>,
    _seed: PhantomData<fn() -> E>,
}

impl<E, S> FromRequestParts<S> for SeedQuery<E>
where
    E: ErrorShape,
    S: Send + Sync,
{
    type Rejection = SeedError<E>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, SeedError<E>> {
        match Query::<Vec<(String, String)>>::from_request_parts(parts, state).await {
            Ok(Query(pairs)) => Ok(Self {
                params: pairs.into_iter().collect(),
                _seed: PhantomData,
            }),
            Err(rejection) => Err(ApiError::invalid("query", rejection.body_text()).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn read(value: Value, reader: impl FnOnce(&mut Fields<'_>)) -> Vec<String> {
        let Value::Object(object) = value else {
            panic!("an object")
        };
        let mut fields = Fields::new(&object);
        reader(&mut fields);
        match fields.finish() {
            Ok(()) => Vec::new(),
            Err(err) => err.issues().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn fields_report_every_issue_by_name() {
        let issues = read(
            json!({"name": 7, "empty": " ", "spec": {"type": [], "componentRevision": "one"}}),
            |f| {
                f.required_str("name");
                f.required_str("empty");
                f.required_str("missing");
                f.optional_str("absent");
                f.object("spec", true, |s| {
                    s.required_str("type");
                    s.optional_i64("componentRevision");
                    Some(())
                });
                f.object("other", true, |_| Some(()));
            },
        );
        assert_eq!(
            issues,
            [
                "name: expected a string, got an integer",
                "empty: required: must not be empty",
                "missing: required",
                "spec.type: expected a string, got an array",
                "spec.componentRevision: expected an integer, got a string",
                "other: required",
            ]
        );
    }

    #[test]
    fn null_counts_as_absent() {
        let issues = read(json!({"a": null, "b": null}), |f| {
            assert_eq!(f.optional_str("a"), None);
            f.required_str("b");
        });
        assert_eq!(issues, ["b: required"]);
    }

    #[test]
    fn tokens_come_from_the_authorization_header_or_x_auth_token() {
        let mut headers = HeaderMap::new();
        assert!(token(&headers, true).is_err());
        headers.insert("x-auth-token", HeaderValue::from_static("t1"));
        assert_eq!(token(&headers, true).ok().as_deref(), Some("t1"));
        assert!(token(&headers, false).is_err(), "only where the seed says");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  t2 "),
        );
        assert_eq!(token(&headers, false).ok().as_deref(), Some("t2"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(token(&headers, true).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(token(&headers, true).is_err());
    }

    async fn body(
        content_type: Option<&str>,
        body: &'static str,
    ) -> Result<Map<String, Value>, ApiError> {
        let mut builder = Request::builder().method("POST").uri("/");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        json_object(builder.body(axum::body::Body::from(body)).expect("request")).await
    }

    #[tokio::test]
    async fn a_body_must_be_one_json_object() {
        assert!(body(Some("application/json"), r#"{"a":1}"#).await.is_ok());
        assert!(body(None, r#"{"a":1}"#).await.is_ok());
        let cases = [
            (Some("text/plain"), r#"{"a":1}"#, "Content-Type"),
            (Some("application/json"), "", "body"),
            (Some("application/json"), r#"{"a":"#, "body"),
            (Some("application/json"), "[1]", "body"),
        ];
        for (ct, text, field) in cases {
            let err = body(ct, text).await.expect_err(text);
            assert_eq!(err.field(), Some(field), "{text}");
        }
        let err = body(None, "{nope").await.expect_err("malformed");
        assert!(err.to_string().contains("malformed JSON"), "{err}");
    }
}
