//! The HTTP API of SPEC §4 end to end: the in-process operator serves it on `api_addr`; callers
//! are real ServiceAccounts with tokens from TokenRequest and RBAC from Roles made here, one
//! namespace per test.
mod support;

use std::time::Duration;

use devtools::testkit::wait_until;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec},
    core::v1::{ResourceQuota, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use plugin_operator::resources::{Phase, Plugin, PluginInstall};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

// ---------------------------------------------------------------------------------------------
// callers and requests

/// A ServiceAccount `name` in `namespace` that may do `verbs` on `resources` of
/// plugin-operator.dev there; returns its token.
async fn caller(
    client: &Client,
    namespace: &str,
    name: &str,
    resources: &[&str],
    verbs: &[&str],
) -> String {
    let sa: ServiceAccount = create(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .await;
    if !verbs.is_empty() {
        let _: Role = create(
            client,
            namespace,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": name},
                "rules": [{"apiGroups": ["plugin-operator.dev"], "resources": resources, "verbs": verbs}]
            }),
        )
        .await;
        let _: RoleBinding = create(
            client,
            namespace,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
            }),
        )
        .await;
    }
    token_for(client, namespace, &sa.name_any(), None).await
}

/// A token of a ServiceAccount (for the API server's audience unless `audience`).
async fn token_for(client: &Client, namespace: &str, name: &str, audience: Option<&str>) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    api.create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("a token")
        .token
}

/// What the API answered.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

enum Token<'a> {
    None,
    Bearer(&'a str),
    XAuth(&'a str),
}

async fn call(method: Method, path: &str, token: Token<'_>, body: Option<Body>) -> Answer {
    let url = format!("http://{}{path}", operator().api_addr);
    let mut request = reqwest::Client::new().request(method, url);
    request = match token {
        Token::None => request,
        Token::Bearer(t) => request.bearer_auth(t),
        Token::XAuth(t) => request.header("X-Auth-Token", t),
    };
    request = match body {
        None => request,
        Some(Body::Json(value)) => request.json(&value),
        Some(Body::Raw(text)) => request
            .header("content-type", "application/json")
            .body(text.to_owned()),
    };
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the API answers");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        retry_after,
        body,
    }
}

enum Body {
    Json(Value),
    Raw(&'static str),
}

async fn post(path: &str, token: &str, body: Value) -> Answer {
    call(
        Method::POST,
        path,
        Token::Bearer(token),
        Some(Body::Json(body)),
    )
    .await
}

async fn put(path: &str, token: &str, body: Value) -> Answer {
    call(
        Method::PUT,
        path,
        Token::Bearer(token),
        Some(Body::Json(body)),
    )
    .await
}

async fn patch(path: &str, token: &str, body: Value) -> Answer {
    call(
        Method::PATCH,
        path,
        Token::Bearer(token),
        Some(Body::Json(body)),
    )
    .await
}

async fn get(path: &str, token: &str) -> Answer {
    call(Method::GET, path, Token::Bearer(token), None).await
}

async fn delete(path: &str, token: &str) -> Answer {
    call(Method::DELETE, path, Token::Bearer(token), None).await
}

#[track_caller]
fn expect(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{answer:?}");
}

/// Seed 000's error body names the field.
#[track_caller]
fn expect_000(answer: &Answer, status: StatusCode, code: &str, field: Option<&str>) {
    expect(answer, status);
    assert_eq!(answer.body["code"], code, "{answer:?}");
    assert!(answer.body["message"].is_string(), "{answer:?}");
    assert_eq!(answer.body["field"].as_str(), field, "{answer:?}");
}

/// Seed 001: 400 `{code, errors}`, others `{code, error}`.
#[track_caller]
fn expect_001(answer: &Answer, status: StatusCode, code: &str) {
    expect(answer, status);
    assert_eq!(answer.body["code"], code, "{answer:?}");
    if status == StatusCode::BAD_REQUEST {
        assert!(answer.body["errors"].is_array(), "{answer:?}");
    } else {
        assert!(answer.body["error"].is_string(), "{answer:?}");
    }
}

/// Seed 002: `{error, message, suggested, metadata}`.
#[track_caller]
fn expect_002(answer: &Answer, status: StatusCode, error: &str) {
    expect(answer, status);
    assert_eq!(answer.body["error"], error, "{answer:?}");
    for key in ["message", "suggested"] {
        assert!(answer.body[key].is_string(), "{key}: {answer:?}");
    }
    assert!(answer.body["metadata"].is_object(), "{answer:?}");
}

/// Seed 004: `{error_msg, error_code}`.
#[track_caller]
fn expect_004(answer: &Answer, status: StatusCode, code: &str) {
    expect(answer, status);
    assert_eq!(answer.body["error_code"], code, "{answer:?}");
    assert!(answer.body["error_msg"].is_string(), "{answer:?}");
}

fn errors_of(answer: &Answer) -> Vec<String> {
    answer.body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn endpoint_path(plugin: &str) -> String {
    format!("/plugin/v1/plugin/{plugin}/get-endpoint")
}

fn failure_path(plugin: &str) -> String {
    format!("/plugin/v1/plugin/{plugin}/notify-failure")
}

/// An Active install `name` of plugin `plugin` 1.0.0 (created here) with `spec`.
async fn active_install(
    client: &Client,
    ns: &str,
    plugin_name: &str,
    name: &str,
    spec: Value,
) -> PluginInstall {
    plugin(client, ns, plugin_name).await;
    version(client, ns, plugin_name, "1.0.0", "ready").await;
    let mut spec = spec;
    spec["plugin"] = json!(plugin_name);
    install(client, ns, name, spec).await;
    wait_phase(client, ns, name, Phase::Active).await
}

fn uid<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().expect("uid")
}

// ---------------------------------------------------------------------------------------------
// authentication and authorization

#[tokio::test]
async fn every_route_wants_a_valid_token_in_its_seed_shape() {
    let client = setup().await;
    let ns = namespace(&client, "api-auth").await;
    let id = "497f6eca-6276-4993-bfeb-53cbbbba6f08";
    let routes: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::POST, endpoint_path("echo"), Some(json!({})), "000"),
        (Method::PUT, failure_path("echo"), Some(json!({})), "000"),
        (
            Method::GET,
            format!("/v1/accounts/{}/plugins", ns.name),
            None,
            "001",
        ),
        (
            Method::POST,
            format!("/v1/accounts/{}/plugins", ns.name),
            Some(json!({})),
            "001",
        ),
        (Method::GET, format!("/v1/plugins/{id}"), None, "001"),
        (Method::DELETE, format!("/v1/plugins/{id}"), None, "001"),
        (Method::GET, "/plugins".into(), None, "002"),
        (
            Method::PATCH,
            format!("/plugins/{id}/active"),
            Some(json!({})),
            "002",
        ),
        (
            Method::PATCH,
            format!("/plugins/{id}/config"),
            Some(json!({})),
            "002",
        ),
        (
            Method::GET,
            format!("/v1/{}/agent-plugin/detail?plugin_name=echo", ns.name),
            None,
            "004",
        ),
    ];
    for (method, path, body, seed) in routes {
        for token in [
            Token::None,
            Token::Bearer("garbage"),
            Token::Bearer("a.b.c"),
        ] {
            let answer = call(method.clone(), &path, token, body.clone().map(Body::Json)).await;
            match seed {
                "000" => expect_000(
                    &answer,
                    StatusCode::UNAUTHORIZED,
                    "ERROR_AUTHENTICATE_FAILURE",
                    None,
                ),
                "001" => expect_001(&answer, StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
                "002" => expect_002(&answer, StatusCode::UNAUTHORIZED, "unauthorized"),
                _ => expect_004(&answer, StatusCode::UNAUTHORIZED, "PLUGIN.UNAUTHORIZED"),
            }
        }
    }
    // A token for another audience (a plugin's access token) is no token for the API.
    let _ = caller(&client, &ns.name, "someone", &[], &[]).await;
    let plugin_token = token_for(
        &client,
        &ns.name,
        "someone",
        Some("plugin-operator.dev/x/y"),
    )
    .await;
    let answer = get(&format!("/v1/accounts/{}/plugins", ns.name), &plugin_token).await;
    expect_001(&answer, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    // The document is open.
    let doc = call(Method::GET, "/openapi.json", Token::None, None).await;
    expect(&doc, StatusCode::OK);
    assert!(
        doc.body["paths"]["/plugins/{id}/config"]["patch"].is_object(),
        "{doc:?}"
    );
}

#[tokio::test]
async fn rbac_decides_and_other_namespaces_are_forbidden() {
    let client = setup().await;
    let ns = namespace(&client, "api-rbac").await;
    let other = namespace(&client, "api-rbac-other").await;
    let reader = caller(
        &client,
        &ns.name,
        "reader",
        &["plugins", "plugininstalls", "pluginversions"],
        &["get", "list"],
    )
    .await;
    let nobody = caller(&client, &ns.name, "nobody", &[], &[]).await;

    // Allowed here.
    expect(
        &get(&format!("/v1/accounts/{}/plugins", ns.name), &reader).await,
        StatusCode::OK,
    );
    // Not there.
    let answer = get(&format!("/v1/accounts/{}/plugins", other.name), &reader).await;
    expect_001(&answer, StatusCode::FORBIDDEN, "FORBIDDEN");
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot list"),
        "{answer:?}"
    );
    // Not this verb.
    let answer = post(
        &format!("/v1/accounts/{}/plugins", ns.name),
        &reader,
        json!({"name": "x", "spec": {"type": "OplogProcessor"}}),
    )
    .await;
    expect_001(&answer, StatusCode::FORBIDDEN, "FORBIDDEN");
    // Nothing at all.
    let answer = get(&format!("/v1/accounts/{}/plugins", ns.name), &nobody).await;
    expect_001(&answer, StatusCode::FORBIDDEN, "FORBIDDEN");
    let answer = post(
        &endpoint_path("echo"),
        &nobody,
        json!({"plugin_id": "echo", "domain_id": ns.name}),
    )
    .await;
    expect_000(
        &answer,
        StatusCode::FORBIDDEN,
        "ERROR_PERMISSION_DENIED",
        None,
    );
    let answer = post(
        &endpoint_path("echo"),
        &reader,
        json!({"plugin_id": "echo", "domain_id": other.name}),
    )
    .await;
    expect_000(
        &answer,
        StatusCode::FORBIDDEN,
        "ERROR_PERMISSION_DENIED",
        None,
    );
    let answer = put(
        &failure_path("echo"),
        &reader,
        json!({"supervisor_id": "s", "plugin_id": "echo", "version": "1.0.0", "domain_id": ns.name}),
    )
    .await;
    expect_000(
        &answer,
        StatusCode::FORBIDDEN,
        "ERROR_PERMISSION_DENIED",
        None,
    );
    let answer = get(&format!("/plugins?namespace={}", other.name), &reader).await;
    expect_002(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = get(
        &format!("/v1/{}/agent-plugin/detail?plugin_name=echo", other.name),
        &reader,
    )
    .await;
    expect_004(&answer, StatusCode::FORBIDDEN, "PLUGIN.FORBIDDEN");
    let answer = call(
        Method::GET,
        &format!("/v1/{}/agent-plugin/detail?plugin_name=echo", ns.name),
        Token::XAuth(&nobody),
        None,
    )
    .await;
    expect_004(&answer, StatusCode::FORBIDDEN, "PLUGIN.FORBIDDEN");
}

// ---------------------------------------------------------------------------------------------
// seed 000

#[tokio::test]
async fn get_endpoint_answers_with_the_service_and_a_token_for_the_plugin() {
    let client = setup().await;
    let ns = namespace(&client, "api-endpoint").await;
    let token = caller(
        &client,
        &ns.name,
        "supervisor",
        &["plugininstalls"],
        &["get"],
    )
    .await;
    let labels = json!({"team": "billing"});
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install_with_labels(&client, &ns.name, "echo-a", "echo", labels.clone()).await;
    wait_phase(&client, &ns.name, "echo-a", Phase::Active).await;

    let request =
        json!({"plugin_id": "echo", "domain_id": ns.name, "labels": labels, "version": "^1"});
    let answer = post(&endpoint_path("echo"), &token, request.clone()).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(
        answer.body["endpoint"],
        format!("http://echo-a.{}.svc:8080", ns.name)
    );
    assert_eq!(answer.body["updated_version"], "");
    let access_token = answer.body["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();

    // The plugin can verify it: a token of the install's ServiceAccount for its audience.
    let audience = format!("plugin-operator.dev/{}/echo", ns.name);
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(access_token.clone()),
            audiences: Some(vec![audience.clone()]),
        },
        ..Default::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("TokenReview")
        .status
        .expect("status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences, Some(vec![audience]));
    assert_eq!(
        status.user.and_then(|u| u.username).as_deref(),
        Some(format!("system:serviceaccount:{}:echo-a", ns.name).as_str())
    );
    // ... and it is not a token for the API server.
    let as_api = TokenReview {
        spec: TokenReviewSpec {
            token: Some(access_token),
            audiences: None,
        },
        ..Default::default()
    };
    let status = reviews
        .create(&PostParams::default(), &as_api)
        .await
        .expect("TokenReview")
        .status
        .expect("status");
    assert_ne!(status.authenticated, Some(true));

    // A newer version in range is announced.
    version(&client, &ns.name, "echo", "1.1.0", "ready").await;
    wait_install(&client, &ns.name, "echo-a", "1.1.0 available", |i| {
        i.status
            .as_ref()
            .and_then(|s| s.available_version.as_deref())
            == Some("1.1.0")
    })
    .await;
    let answer = post(&endpoint_path("echo"), &token, request).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body["updated_version"], "1.1.0");

    // Nothing matches: other labels, versions, upgrade modes or plugins.
    for body in [
        json!({"plugin_id": "echo", "domain_id": ns.name, "labels": {"team": "sales"}}),
        json!({"plugin_id": "echo", "domain_id": ns.name, "version": "2.0.0"}),
        json!({"plugin_id": "echo", "domain_id": ns.name, "upgrade_mode": "AUTO"}),
    ] {
        let answer = post(&endpoint_path("echo"), &token, body).await;
        expect_000(&answer, StatusCode::NOT_FOUND, "ERROR_NOT_FOUND", None);
    }
    let answer = post(
        &endpoint_path("nope"),
        &token,
        json!({"plugin_id": "nope", "domain_id": ns.name}),
    )
    .await;
    expect_000(&answer, StatusCode::NOT_FOUND, "ERROR_NOT_FOUND", None);
}

async fn install_with_labels(client: &Client, ns: &str, name: &str, plugin: &str, labels: Value) {
    let _: PluginInstall = create(
        client,
        ns,
        json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
            "metadata": {"name": name, "labels": labels},
            "spec": {"plugin": plugin}
        }),
    )
    .await;
}

#[tokio::test]
async fn get_endpoint_says_when_to_come_back_while_nothing_is_active() {
    let client = setup().await;
    let ns = namespace(&client, "api-notyet").await;
    let token = caller(
        &client,
        &ns.name,
        "supervisor",
        &["plugininstalls"],
        &["get"],
    )
    .await;
    plugin(&client, &ns.name, "slow").await;
    version(&client, &ns.name, "slow", "1.0.0", "never-ready").await;
    install(&client, &ns.name, "slow", json!({"plugin": "slow"})).await;
    wait_phase(&client, &ns.name, "slow", Phase::Connecting).await;
    let answer = post(
        &endpoint_path("slow"),
        &token,
        json!({"plugin_id": "slow", "domain_id": ns.name}),
    )
    .await;
    expect_000(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "ERROR_PLUGIN_NOT_READY",
        None,
    );
    assert_eq!(answer.retry_after.as_deref(), Some("5"));
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Connecting"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn seed_000_requests_are_checked_field_by_field() {
    let client = setup().await;
    let ns = namespace(&client, "api-000-bad").await;
    let token = caller(
        &client,
        &ns.name,
        "supervisor",
        &["plugininstalls"],
        &["get", "patch"],
    )
    .await;
    let path = endpoint_path("echo");
    let cases = [
        (
            json!({"domain_id": ns.name}),
            "plugin_id",
            "ERROR_REQUIRED_PARAMETER",
        ),
        (
            json!({"plugin_id": "echo"}),
            "domain_id",
            "ERROR_REQUIRED_PARAMETER",
        ),
        (
            json!({"plugin_id": "other", "domain_id": ns.name}),
            "plugin_id",
            "ERROR_INVALID_ARGUMENT",
        ),
        (
            json!({"plugin_id": 5, "domain_id": ns.name}),
            "plugin_id",
            "ERROR_INVALID_ARGUMENT",
        ),
        (
            json!({"plugin_id": "echo", "domain_id": ns.name, "labels": ["a"]}),
            "labels",
            "ERROR_INVALID_ARGUMENT",
        ),
        (
            json!({"plugin_id": "echo", "domain_id": ns.name, "labels": {"a": {}}}),
            "labels.a",
            "ERROR_INVALID_ARGUMENT",
        ),
        (
            json!({"plugin_id": "echo", "domain_id": ns.name, "version": "one"}),
            "version",
            "ERROR_INVALID_ARGUMENT",
        ),
        (
            json!({"plugin_id": "echo", "domain_id": ns.name, "upgrade_mode": "NEVER"}),
            "upgrade_mode",
            "ERROR_INVALID_ARGUMENT",
        ),
        (
            json!({"plugin_id": "echo", "domain_id": "Not_A_Namespace"}),
            "domain_id",
            "ERROR_INVALID_ARGUMENT",
        ),
    ];
    for (body, field, code) in cases {
        let answer = post(&path, &token, body).await;
        expect_000(&answer, StatusCode::BAD_REQUEST, code, Some(field));
    }
    for raw in ["{\"plugin_id\": ", "[]", ""] {
        let answer = call(
            Method::POST,
            &path,
            Token::Bearer(&token),
            Some(Body::Raw(raw)),
        )
        .await;
        expect_000(
            &answer,
            StatusCode::BAD_REQUEST,
            "ERROR_INVALID_ARGUMENT",
            Some("body"),
        );
    }
    let answer = put(&failure_path("echo"), &token, json!({"plugin_id": "echo"})).await;
    expect_000(
        &answer,
        StatusCode::BAD_REQUEST,
        "ERROR_REQUIRED_PARAMETER",
        Some("supervisor_id"),
    );
    let message = answer.body["message"].as_str().unwrap_or_default();
    for field in ["supervisor_id", "version", "domain_id"] {
        assert!(message.contains(field), "{message}");
    }
    let answer = put(
        &failure_path("echo"),
        &token,
        json!({"supervisor_id": "s", "plugin_id": "echo", "version": "latest", "domain_id": ns.name}),
    )
    .await;
    expect_000(
        &answer,
        StatusCode::BAD_REQUEST,
        "ERROR_INVALID_ARGUMENT",
        Some("version"),
    );
    let answer = put(
        &failure_path("echo"),
        &token,
        json!({"supervisor_id": "s", "plugin_id": "echo", "version": "1.0.0", "domain_id": ns.name}),
    )
    .await;
    expect_000(&answer, StatusCode::NOT_FOUND, "ERROR_NOT_FOUND", None);
}

#[tokio::test]
async fn notify_failure_restarts_the_plugin_and_records_the_reporter() {
    let client = setup().await;
    let ns = namespace(&client, "api-notify").await;
    let token = caller(
        &client,
        &ns.name,
        "supervisor",
        &["plugininstalls"],
        &["get", "patch"],
    )
    .await;
    let before = active_install(&client, &ns.name, "echo", "echo", json!({})).await;
    let restarts = before.status.as_ref().map_or(0, |s| s.restarts);

    let answer = put(
        &failure_path("echo"),
        &token,
        json!({"supervisor_id": "supervisor-7", "plugin_id": "echo", "version": "1.0.0", "domain_id": ns.name}),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({}));

    let restarted = wait_install(&client, &ns.name, "echo", "the report recorded", |i| {
        i.status.as_ref().is_some_and(|s| {
            s.restarts > restarts
                && s.last_failure
                    .as_ref()
                    .is_some_and(|f| f.reported_by == "supervisor-7")
        })
    })
    .await;
    let failure = restarted
        .status
        .and_then(|s| s.last_failure)
        .expect("lastFailure");
    assert_eq!(failure.reason, "FailureReported");
    let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    assert_eq!(
        active
            .status
            .and_then(|s| s.last_failure)
            .map(|f| f.reported_by)
            .as_deref(),
        Some("supervisor-7")
    );
    let events = wait_events(&client, &ns.name, "echo", "Restarting then Active", |e| {
        let after = events_from(e, "Restarting");
        after.contains(&"Active")
    })
    .await;
    assert!(events.iter().any(|e| e == "Restarting"), "{events:?}");
}

// ---------------------------------------------------------------------------------------------
// seed 001

#[tokio::test]
async fn plugins_are_registered_listed_read_and_deleted() {
    let client = setup().await;
    let ns = namespace(&client, "api-001").await;
    let token = caller(
        &client,
        &ns.name,
        "registrar",
        &["plugins", "pluginversions"],
        &["get", "list", "create", "delete"],
    )
    .await;
    let collection = format!("/v1/accounts/{}/plugins", ns.name);

    let empty = get(&collection, &token).await;
    expect(&empty, StatusCode::OK);
    assert_eq!(empty.body, json!({"values": []}));

    let registration = json!({
        "name": "oplog", "version": "0.1.0", "description": "processes oplogs",
        "icon": "https://example.com/icon.png", "homepage": "https://example.com",
        "spec": {"type": "OplogProcessor", "componentId": "616ccd92-d666-4180-8349-8d125b269fac", "componentRevision": 2}
    });
    let created = post(&collection, &token, registration.clone()).await;
    expect(&created, StatusCode::OK);
    let id = created.body["id"].as_str().expect("an id").to_owned();
    // Read your write: the next request finds the plugin by id at once.
    let at_once = get(&format!("/v1/plugins/{id}"), &token).await;
    expect(&at_once, StatusCode::OK);
    assert_eq!(
        created.body,
        json!({
            "id": id, "accountId": ns.name, "name": "oplog", "version": "0.1.0",
            "description": "processes oplogs", "icon": "https://example.com/icon.png",
            "homepage": "https://example.com",
            "spec": {"type": "OplogProcessor", "componentId": "616ccd92-d666-4180-8349-8d125b269fac", "componentRevision": 2}
        })
    );
    // kubectl sees the same Plugin, written by the operator's field manager.
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), &ns.name);
    let stored = plugins.get("oplog").await.expect("the Plugin");
    assert_eq!(stored.spec.plugin_type.as_deref(), Some("OplogProcessor"));
    assert_eq!(uid(&stored), id);
    let managers: Vec<_> = stored
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"plugin-operator".to_owned()),
        "{managers:?}"
    );
    // The version given is a draft PluginVersion of the plugin, owned by it...
    let versions: Api<plugin_operator::resources::PluginVersion> =
        Api::namespaced(client.clone(), &ns.name);
    let draft = versions
        .get("oplog-0.1.0")
        .await
        .expect("the draft version");
    assert_eq!(
        (draft.spec.plugin.as_str(), draft.spec.version.as_str()),
        ("oplog", "0.1.0")
    );
    assert_eq!(
        draft.spec.attribution,
        plugin_operator::resources::VersionAttribution::Draft
    );
    assert_eq!(draft.owner_references()[0].uid, id);
    // ... so an install that names it exactly finds it: it has no execution yet (the publisher
    // fills it in), which is what the install reports, not a missing version.
    install(
        &client,
        &ns.name,
        "oplog",
        json!({"plugin": "oplog", "version": "0.1.0"}),
    )
    .await;
    let waiting = wait_phase(&client, &ns.name, "oplog", Phase::Error).await;
    let status = waiting.status.expect("status");
    assert_eq!(
        status.last_failure.map(|f| f.reason).as_deref(),
        Some("UnsupportedExecution")
    );
    // The printer column's source: the Plugin's name (namespace/name for a catalog one).
    assert_eq!(status.plugin.as_deref(), Some("oplog"));
    // Without `create pluginversions`, a registration with a version is refused whole.
    let plugins_only = caller(&client, &ns.name, "plugins-only", &["plugins"], &["create"]).await;
    let refused = post(
        &collection,
        &plugins_only,
        json!({"name": "other", "version": "1.0.0", "spec": {"type": "OplogProcessor"}}),
    )
    .await;
    expect_001(&refused, StatusCode::FORBIDDEN, "FORBIDDEN");
    assert!(plugins.get_opt("other").await.expect("get").is_none());
    // A version the API server refuses as a PluginVersion (longer than the CRD's 128
    // characters) fails the registration whole: the Plugin made first is removed again.
    let long = format!("1.0.0-{}", "a".repeat(200));
    let refused = post(
        &collection,
        &token,
        json!({"name": "longver", "version": long, "spec": {"type": "OplogProcessor"}}),
    )
    .await;
    expect_001(&refused, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    wait_until(
        "the failed registration's Plugin removed",
        DEADLINE,
        || async {
            match plugins
                .get_opt("longver")
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        },
    )
    .await;
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), &ns.name);
    api.delete("oplog", &Default::default())
        .await
        .expect("delete the install");

    let listed = wait_until("the plugin listed", DEADLINE, || async {
        let answer = get(&collection, &token).await;
        match answer.body["values"].as_array() {
            Some(values) if values.len() == 1 => Ok(values[0].clone()),
            _ => Err(format!("{answer:?}")),
        }
    })
    .await;
    assert_eq!(listed, created.body);
    let one = get(&format!("/v1/plugins/{id}"), &token).await;
    expect(&one, StatusCode::OK);
    assert_eq!(one.body, created.body);

    // Already there.
    let again = post(&collection, &token, registration).await;
    expect_001(&again, StatusCode::CONFLICT, "ALREADY_EXISTS");

    // Unknown and malformed ids.
    let unknown = get("/v1/plugins/00000000-0000-0000-0000-000000000000", &token).await;
    expect_001(&unknown, StatusCode::NOT_FOUND, "NOT_FOUND");
    let unknown = delete("/v1/plugins/00000000-0000-0000-0000-000000000000", &token).await;
    expect_001(&unknown, StatusCode::NOT_FOUND, "NOT_FOUND");
    let bad = get("/v1/plugins/not-an-id", &token).await;
    expect_001(&bad, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert!(errors_of(&bad)[0].starts_with("plugin_id:"), "{bad:?}");

    // Deleted: answered with what it was, then gone.
    let deleted = delete(&format!("/v1/plugins/{id}"), &token).await;
    expect(&deleted, StatusCode::OK);
    assert_eq!(deleted.body["id"], id.as_str());
    wait_until("the plugin gone", DEADLINE, || async {
        let answer = get(&format!("/v1/plugins/{id}"), &token).await;
        if answer.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(format!("{answer:?}"))
        }
    })
    .await;
    assert!(plugins.get_opt("oplog").await.expect("get").is_none());
}

#[tokio::test]
async fn a_registration_lists_every_issue() {
    let client = setup().await;
    let ns = namespace(&client, "api-001-bad").await;
    let token = caller(&client, &ns.name, "registrar", &["plugins"], &["create"]).await;
    let collection = format!("/v1/accounts/{}/plugins", ns.name);
    let answer = post(
        &collection,
        &token,
        json!({"name": "Not Valid", "description": 3, "spec": {"componentRevision": "x"}}),
    )
    .await;
    expect_001(&answer, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let fields: Vec<String> = errors_of(&answer)
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        fields,
        ["name", "description", "spec.type", "spec.componentRevision"],
        "{answer:?}"
    );

    let answer = post(&collection, &token, json!({})).await;
    assert_eq!(
        errors_of(&answer),
        ["name: required", "spec: required"],
        "{answer:?}"
    );
    let answer = post(
        &collection,
        &token,
        json!({"name": "ok", "spec": "OplogProcessor"}),
    )
    .await;
    assert_eq!(
        errors_of(&answer),
        ["spec: expected an object, got a string"],
        "{answer:?}"
    );
    for raw in ["{\"name\": \"x\",", "\"text\""] {
        let answer = call(
            Method::POST,
            &collection,
            Token::Bearer(&token),
            Some(Body::Raw(raw)),
        )
        .await;
        expect_001(&answer, StatusCode::BAD_REQUEST, "BAD_REQUEST");
        assert!(errors_of(&answer)[0].starts_with("body:"), "{answer:?}");
    }
    let answer = post("/v1/accounts/Bad_Account/plugins", &token, json!({})).await;
    expect_001(&answer, StatusCode::BAD_REQUEST, "BAD_REQUEST");
}

#[tokio::test]
async fn a_quota_on_the_plugin_count_is_a_tenant_limit() {
    let client = setup().await;
    let ns = namespace(&client, "api-quota").await;
    let token = caller(&client, &ns.name, "registrar", &["plugins"], &["create"]).await;
    let collection = format!("/v1/accounts/{}/plugins", ns.name);
    let first = post(
        &collection,
        &token,
        json!({"name": "one", "spec": {"type": "App"}}),
    )
    .await;
    expect(&first, StatusCode::OK);
    let _: ResourceQuota = create(
        &client,
        &ns.name,
        json!({
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "plugins"},
            "spec": {"hard": {"count/plugins.plugin-operator.dev": "1"}}
        }),
    )
    .await;
    // Until the quota controller has counted, the API server refuses creates ("status unknown
    // for quota"). It counts a custom resource only once its discovery (every 30 s) knows the
    // CRD, and then only at its next full resync (5 min) or when the quota's spec changes: so
    // change the spec (a key that limits nothing here) every few seconds until it has counted.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let polls = std::sync::atomic::AtomicUsize::new(0);
    wait_until("the quota counted", 3 * DEADLINE, || async {
        let quota = quotas.get("plugins").await.map_err(|e| e.to_string())?;
        let used = quota.status.and_then(|s| s.used).unwrap_or_default();
        if used
            .get("count/plugins.plugin-operator.dev")
            .is_some_and(|count| count.0 == "1")
        {
            return Ok(());
        }
        let poll = polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if poll % 25 == 24 {
            let limit = if (poll / 25).is_multiple_of(2) {
                json!("1000")
            } else {
                Value::Null
            };
            let nudge = json!({"spec": {"hard": {"count/configmaps": limit}}});
            quotas
                .patch("plugins", &PatchParams::default(), &Patch::Merge(&nudge))
                .await
                .map_err(|e| e.to_string())?;
        }
        Err(format!("used: {used:?}"))
    })
    .await;
    let second = post(
        &collection,
        &token,
        json!({"name": "two", "spec": {"type": "App"}}),
    )
    .await;
    expect_001(&second, StatusCode::UNPROCESSABLE_ENTITY, "LIMIT_EXCEEDED");
    assert!(
        second.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded quota"),
        "{second:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// seed 002

fn find_instance<'a>(list: &'a Answer, id: &str) -> Option<&'a Value> {
    list.body.as_array()?.iter().find(|p| p["id"] == id)
}

#[tokio::test]
async fn installed_plugins_are_listed_where_the_caller_may_list() {
    let client = setup().await;
    let ns = namespace(&client, "api-002-list").await;
    let other = namespace(&client, "api-002-hidden").await;
    let token = caller(&client, &ns.name, "viewer", &["plugininstalls"], &["list"]).await;
    let mine = active_install(&client, &ns.name, "echo", "echo", json!({})).await;
    let hidden = active_install(&client, &other.name, "echo", "echo", json!({})).await;

    let list = get("/plugins", &token).await;
    expect(&list, StatusCode::OK);
    let shown = find_instance(&list, &uid(&mine)).expect("the install of the caller's namespace");
    assert!(find_instance(&list, &uid(&hidden)).is_none(), "{list:?}");
    assert!(
        list.body
            .as_array()
            .is_some_and(|l| l.iter().all(|p| p["id"] != uid(&hidden)))
    );
    assert_eq!(shown["name"], "echo");
    assert_eq!(shown["version"], "1.0.0");
    assert_eq!(shown["status"]["active_state"], "active");
    assert_eq!(shown["status"]["deactivated_at"], Value::Null);
    assert_eq!(shown["connection"], json!({"mode": "supervised"}));
    assert_eq!(shown["manifest"], json!({}));
    let added: k8s_openapi::jiff::Timestamp = shown["added_at"]
        .as_str()
        .expect("added_at")
        .parse()
        .expect("RFC 3339");
    assert_eq!(
        Some(added),
        mine.meta().creation_timestamp.as_ref().map(|t| t.0)
    );

    let only = get(&format!("/plugins?namespace={}", ns.name), &token).await;
    expect(&only, StatusCode::OK);
    assert_eq!(only.body.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn the_active_state_is_toggled_and_external_plugins_refuse() {
    let client = setup().await;
    let ns = namespace(&client, "api-002-active").await;
    let token = caller(
        &client,
        &ns.name,
        "operator",
        &["plugininstalls"],
        &["list", "patch"],
    )
    .await;
    let echo = active_install(&client, &ns.name, "echo", "echo", json!({})).await;
    let id = uid(&echo);
    let path = format!("/plugins/{id}/active");

    let answer = patch(&path, &token, json!({"active": "inactive"})).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body["id"], id.as_str());
    let inactive = wait_phase(&client, &ns.name, "echo", Phase::Inactive).await;
    assert!(!inactive.spec.active);
    let listed = wait_until("inactive listed", DEADLINE, || async {
        let list = get(&format!("/plugins?namespace={}", ns.name), &token).await;
        match find_instance(&list, &id) {
            Some(p) if p["status"]["active_state"] == "inactive" => Ok(p.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(listed["status"]["deactivated_at"].is_string(), "{listed}");

    let answer = patch(&path, &token, json!({"active": "active"})).await;
    expect(&answer, StatusCode::OK);
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;

    for body in [
        json!({"active": "starting"}),
        json!({"active": true}),
        json!({}),
    ] {
        let answer = patch(&path, &token, body).await;
        expect_002(&answer, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(answer.body["metadata"]["field"], "active", "{answer:?}");
    }
    let answer = call(
        Method::PATCH,
        &path,
        Token::Bearer(&token),
        Some(Body::Raw("{\"active\"")),
    )
    .await;
    expect_002(&answer, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(answer.body["metadata"]["field"], "body", "{answer:?}");
    let answer = patch(
        "/plugins/00000000-0000-0000-0000-000000000000/active",
        &token,
        json!({"active": "active"}),
    )
    .await;
    expect_002(&answer, StatusCode::NOT_FOUND, "not_found");

    external_plugin(&client, &ns.name, "remote", "http://127.0.0.1:9/").await;
    let remote = install(&client, &ns.name, "remote", json!({"plugin": "remote"})).await;
    let remote_path = format!("/plugins/{}/active", uid(&remote));
    let answer = wait_until("the external install in the cache", DEADLINE, || async {
        let answer = patch(&remote_path, &token, json!({"active": "inactive"})).await;
        if answer.status == StatusCode::NOT_FOUND {
            Err(format!("{answer:?}"))
        } else {
            Ok(answer)
        }
    })
    .await;
    expect_002(&answer, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("external"),
        "{answer:?}"
    );
    assert!(get_install(&client, &ns.name, "remote").await.spec.active);
}

#[tokio::test]
async fn a_config_is_validated_before_it_is_stored() {
    let client = setup().await;
    let ns = namespace(&client, "api-002-config").await;
    let token = caller(
        &client,
        &ns.name,
        "operator",
        &["plugininstalls"],
        &["patch"],
    )
    .await;
    plugin(&client, &ns.name, "echo").await;
    version_with(
        &client,
        &ns.name,
        "echo",
        "1.0.0",
        "ready",
        json!({"configSchema": {
            "type": "object", "required": ["url"],
            "properties": {"url": {"type": "string", "pattern": "^https://"}, "retries": {"type": "integer", "default": 3}}
        }}),
    )
    .await;
    let created = install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "config": {"url": "https://a.example", "extra": true}}),
    )
    .await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    let path = format!("/plugins/{}/config", uid(&created));

    for (body, field) in [
        (json!({"url": "http://plain"}), "url"),
        (json!({"retries": 2}), "url"),
        (
            json!({"url": "https://b.example", "retries": "three"}),
            "retries",
        ),
    ] {
        let answer = patch(&path, &token, body).await;
        expect_002(&answer, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(answer.body["metadata"]["field"], field, "{answer:?}");
    }
    let answer = call(
        Method::PATCH,
        &path,
        Token::Bearer(&token),
        Some(Body::Raw("[1]")),
    )
    .await;
    expect_002(&answer, StatusCode::BAD_REQUEST, "bad_request");
    let answer = patch("/plugins/not-an-id/config", &token, json!({})).await;
    expect_002(&answer, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(answer.body["metadata"]["field"], "id", "{answer:?}");
    let answer = patch(
        "/plugins/00000000-0000-0000-0000-000000000000/config",
        &token,
        json!({}),
    )
    .await;
    expect_002(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = get("/plugins?namespace=Not_A_Namespace", &token).await;
    expect_002(&answer, StatusCode::BAD_REQUEST, "bad_request");
    let unchanged = get_install(&client, &ns.name, "echo").await;
    assert_eq!(
        unchanged.spec.config,
        Some(json!({"url": "https://a.example", "extra": true}))
    );
    assert_eq!(unchanged.meta().generation, created.meta().generation);

    // A valid one replaces the config.
    let answer = patch(&path, &token, json!({"url": "https://b.example"})).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body["name"], "echo");
    let replaced = get_install(&client, &ns.name, "echo").await;
    assert_eq!(
        replaced.spec.config,
        Some(json!({"url": "https://b.example"}))
    );
    wait_install(&client, &ns.name, "echo", "config applied", |i| {
        i.status.as_ref().and_then(|s| s.observed_generation) == i.meta().generation
            && phase_of(i) == Some(Phase::Active)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// seed 004

#[tokio::test]
async fn version_details_follow_the_seed() {
    let client = setup().await;
    let ns = namespace(&client, "api-004").await;
    let token = caller(&client, &ns.name, "viewer", &["pluginversions"], &["get"]).await;
    plugin(&client, &ns.name, "echo").await;
    let v1 = version_with(
        &client,
        &ns.name,
        "echo",
        "0.0.4",
        "ready",
        json!({"description": "first", "composition": "multi",
               "execution": {"command": ["/bin/echo"], "args": ["hi"], "stopCommand": ["/bin/stop"]},
               "configSchema": {"type": "object", "required": ["url"], "properties": {
                   "url": {"type": "string", "title": "URL", "pattern": "^https://", "maxLength": 100},
                   "retries": {"type": "integer", "default": 3}}}}),
    )
    .await;
    version(&client, &ns.name, "echo", "0.1.0", "ready").await;
    version_with(
        &client,
        &ns.name,
        "echo",
        "0.2.0",
        "ready",
        json!({"attribution": "draft"}),
    )
    .await;
    let base = format!("/v1/{}/agent-plugin/detail", ns.name);

    let answer = wait_until("the versions in the cache", DEADLINE, || async {
        let answer = get(&format!("{base}?plugin_name=echo&version=0.0.4"), &token).await;
        if answer.status == StatusCode::OK {
            Ok(answer)
        } else {
            Err(format!("{answer:?}"))
        }
    })
    .await;
    let d = &answer.body;
    assert_eq!(d["plugin_name"], "echo");
    assert_eq!(d["display_name"], "echo");
    assert_eq!(d["version"], "0.0.4");
    assert_eq!(d["unique_id"], uid(&v1).replace('-', ""));
    assert_eq!(d["unique_id"].as_str().map(str::len), Some(32));
    assert_eq!(d["version_description"], "first");
    assert_eq!(d["version_attribution"], "formal");
    assert_eq!(d["plugin_composition_type"], "multi");
    assert_eq!(d["plugin_attribution"], "custom");
    assert_eq!(d["runtime_attribution"], "agentLess");
    let created_ms = v1
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond().to_string());
    assert_eq!(d["op_time"].as_str().map(str::to_owned), created_ms);
    assert!(d["op_user"].is_string());
    let execution = &d["plugin_execution"];
    assert_eq!(execution["execution_type"], "CONTAINER");
    assert_eq!(execution["start_command"], "/bin/echo hi");
    assert_eq!(execution["stop_command"], "/bin/stop");
    assert_eq!(execution["env"], "registry.example.com/echo:0.0.4");
    let inputs = d["input_info"].as_array().expect("input_info");
    let url = inputs.iter().find(|i| i["name"] == "url").expect("url");
    assert_eq!(url["required"], "true");
    assert_eq!(url["label"], "URL");
    assert_eq!(url["validation"]["regex"], "^https://");
    assert_eq!(url["validation"]["max_length"], 100);
    let retries = inputs
        .iter()
        .find(|i| i["name"] == "retries")
        .expect("retries");
    assert_eq!(
        (
            retries["default_value"].as_str(),
            retries["required"].as_str()
        ),
        (Some("3"), Some("false"))
    );

    // Without a version: the newest formal one (not the draft); X-Auth-Token works too.
    let latest = call(
        Method::GET,
        &format!("{base}?plugin_name=echo"),
        Token::XAuth(&token),
        None,
    )
    .await;
    expect(&latest, StatusCode::OK);
    assert_eq!(latest.body["version"], "0.1.0");
    let draft = get(&format!("{base}?plugin_name=echo&version=0.2.0"), &token).await;
    assert_eq!(draft.body["version_attribution"], "draft");

    for (query, field) in [
        ("", "plugin_name"),
        ("?plugin_name=", "plugin_name"),
        ("?plugin_name=bad%20name", "plugin_name"),
        (&format!("?plugin_name={}", "x".repeat(51)), "plugin_name"),
        ("?plugin_name=echo&version=1.2", "version"),
        ("?plugin_name=echo&version=1.234.0", "version"),
        ("?plugin_name=echo&version=latest", "version"),
    ] {
        let answer = get(&format!("{base}{query}"), &token).await;
        expect_004(&answer, StatusCode::BAD_REQUEST, "PLUGIN.INVALID_PARAMETER");
        assert!(
            answer.body["error_msg"]
                .as_str()
                .unwrap_or_default()
                .starts_with(field),
            "{answer:?}"
        );
    }
    let answer = get(&format!("{base}?plugin_name=nothing"), &token).await;
    expect_004(&answer, StatusCode::NOT_FOUND, "PLUGIN.NOT_FOUND");
    let answer = get(&format!("{base}?plugin_name=echo&version=9.9.9"), &token).await;
    expect_004(&answer, StatusCode::NOT_FOUND, "PLUGIN.NOT_FOUND");
}

// ---------------------------------------------------------------------------------------------
// external plugins (issue 17)

/// A tiny external plugin: `/healthz` answers 200 while `healthy` is set, else 503.
async fn serve_external(healthy: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let healthy = healthy.clone();
            async move {
                if healthy.load(Ordering::SeqCst) {
                    (axum::http::StatusCode::OK, "ok")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/healthz")
}

/// Whether a TokenReview for `audience` accepts `token`; the username it names.
async fn review(client: &Client, token: &str, audience: &str) -> (bool, Option<String>) {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..Default::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("TokenReview")
        .status
        .expect("status");
    let ok = status.authenticated == Some(true)
        && status.audiences.iter().flatten().any(|a| a == audience);
    (ok, status.user.and_then(|u| u.username))
}

#[tokio::test]
async fn external_installs_get_tokens_a_version_and_recheck_after_a_reported_failure() {
    use std::sync::atomic::Ordering;
    let client = setup().await;
    let ns = namespace(&client, "api-external").await;
    let token = caller(
        &client,
        &ns.name,
        "supervisor",
        &["plugininstalls"],
        &["get", "list", "patch"],
    )
    .await;
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let endpoint = serve_external(healthy.clone()).await;
    external_plugin(&client, &ns.name, "remote", &endpoint).await;
    for v in ["1.0.0", "1.2.0"] {
        version(&client, &ns.name, "remote", v, "ready").await;
    }
    let remote = install(&client, &ns.name, "remote", json!({"plugin": "remote"})).await;
    let active = wait_install(&client, &ns.name, "remote", "Active on 1.2.0", |i| {
        i.status.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::Active) && s.version.as_deref() == Some("1.2.0")
        })
    })
    .await;
    assert_eq!(
        active.status.as_ref().and_then(|s| s.endpoint.as_deref()),
        Some(endpoint.as_str())
    );
    // Its ServiceAccount, owned by the install; still no Deployment.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let account = wait_until("the external install's ServiceAccount", DEADLINE, || {
        let accounts = accounts.clone();
        async move {
            accounts
                .get_opt("remote")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    assert_eq!(account.owner_references()[0].uid, uid(&remote));
    assert!(deployment(&client, &ns.name, "remote").await.is_none());

    // Seed 000: the endpoint and a token the plugin verifies for its audience.
    let request = json!({"plugin_id": "remote", "domain_id": ns.name});
    let answer = wait_until("get-endpoint with a token", DEADLINE, || async {
        let answer = post(&endpoint_path("remote"), &token, request.clone()).await;
        if answer.status == StatusCode::OK {
            Ok(answer)
        } else {
            Err(format!("{answer:?}"))
        }
    })
    .await;
    assert_eq!(answer.body["endpoint"], endpoint.as_str());
    let access_token = answer.body["access_token"].as_str().expect("a token");
    assert!(!access_token.is_empty(), "{answer:?}");
    let audience = format!("plugin-operator.dev/{}/remote", ns.name);
    assert_eq!(
        review(&client, access_token, &audience).await,
        (
            true,
            Some(format!("system:serviceaccount:{}:remote", ns.name))
        )
    );
    assert!(
        !review(&client, access_token, "plugin-operator.dev/other/remote")
            .await
            .0,
        "only for the plugin's audience"
    );

    // Seed 002 lists its version.
    let list = get(&format!("/plugins?namespace={}", ns.name), &token).await;
    expect(&list, StatusCode::OK);
    let shown = find_instance(&list, &uid(&remote)).expect("the external install");
    assert_eq!(shown["version"], "1.2.0");
    assert_eq!(shown["connection"]["mode"], "external");

    // Seed 003: the plugin logs in with its credentials.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    let data = secrets
        .get("remote-credentials")
        .await
        .expect("credentials")
        .data
        .expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("text");
    let login = reqwest::Client::new()
        .post(format!("http://{}/a/auth/v0/token", operator().api_addr))
        .basic_auth(text("client_id"), Some(text("client_secret")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "plugin,token.refresh"),
        ])
        .send()
        .await
        .expect("the token route answers");
    assert_eq!(login.status(), StatusCode::OK);
    let login: Value = login.json().await.expect("json");
    let plugin_token = login["access_token"].as_str().expect("access_token");
    assert_eq!(
        review(&client, plugin_token, "plugin-operator.dev/plugin-services").await,
        (
            true,
            Some(format!("system:serviceaccount:{}:remote", ns.name))
        )
    );

    // Seed 000 notify-failure while the endpoint answers: Restarting, re-checked, Active.
    let failure = |supervisor: &str| {
        json!({"supervisor_id": supervisor, "plugin_id": "remote", "version": "1.2.0",
               "domain_id": ns.name})
    };
    let answer = put(&failure_path("remote"), &token, failure("sup-ok")).await;
    expect(&answer, StatusCode::OK);
    let events = wait_events(&client, &ns.name, "remote", "Restarting then Active", |e| {
        events_from(e, "Restarting").contains(&"Active")
    })
    .await;
    assert_eq!(
        events_from(&events, "Restarting")[..2],
        ["Restarting", "Active"]
    );
    let back = wait_phase(&client, &ns.name, "remote", Phase::Active).await;
    let last = back
        .status
        .and_then(|s| s.last_failure)
        .expect("lastFailure");
    assert_eq!(
        (last.reason.as_str(), last.reported_by.as_str()),
        ("FailureReported", "sup-ok")
    );

    // ... and while it does not: Restarting, then Error.
    healthy.store(false, Ordering::SeqCst);
    let answer = put(&failure_path("remote"), &token, failure("sup-down")).await;
    expect(&answer, StatusCode::OK);
    let failed = wait_phase(&client, &ns.name, "remote", Phase::Error).await;
    let last = failed
        .status
        .and_then(|s| s.last_failure)
        .expect("lastFailure");
    assert_eq!(
        (last.reason.as_str(), last.reported_by.as_str()),
        ("EndpointUnreachable", "sup-down")
    );
    // EndpointUnreachable is recorded only when a re-check after Restarting fails.
    let events = event_reasons(&client, &ns.name, "remote").await;
    assert!(events.iter().any(|e| e == "Error"), "{events:?}");
}

// ---------------------------------------------------------------------------------------------
// seed 004 from real data (issue 17)

/// Applies the chart's admission policy that stamps who changed a PluginVersion
/// (charts/plugin-operator/files/version-author-policy.yaml), as `helm install` does on a
/// cluster that serves MutatingAdmissionPolicy.
async fn apply_version_author_policy(client: &Client) {
    use kube::{
        api::DynamicObject,
        core::{ApiResource, GroupVersionKind},
    };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/plugin-operator/files/version-author-policy.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the chart's policy");
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document).expect("YAML");
        let object: DynamicObject = serde_json::from_value(value).expect("an object");
        let kind = object.types.as_ref().expect("kind").kind.clone();
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", &kind);
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        api.patch(
            &object.name_any(),
            &PatchParams::apply("api-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .expect("apply the policy");
    }
}

/// A client that acts as `user` (impersonation by the tests' admin).
async fn acting_as(user: &str) -> Client {
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn version_details_name_the_user_who_last_changed_the_version() {
    let client = setup().await;
    apply_version_author_policy(&client).await;
    let ns = namespace(&client, "api-004-author").await;
    let reader = caller(&client, &ns.name, "reader", &["pluginversions"], &["get"]).await;
    let writes = ["create", "get", "patch", "update"];
    for author in ["author-a", "author-b"] {
        caller(&client, &ns.name, author, &["pluginversions"], &writes).await;
    }
    let user = |name: &str| format!("system:serviceaccount:{}:{name}", ns.name);
    let (a, b) = (user("author-a"), user("author-b"));
    plugin(&client, &ns.name, "echo").await;

    // author-a creates a draft; the policy may take a moment to be loaded by the API server,
    // so author-a changes the draft until the API server has stamped it.
    let as_a: Api<plugin_operator::resources::PluginVersion> =
        Api::namespaced(acting_as(&a).await, &ns.name);
    let draft: plugin_operator::resources::PluginVersion = serde_json::from_value(json!({
        "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginVersion",
        "metadata": {"name": "echo-0.1.0"},
        "spec": {"plugin": "echo", "version": "0.1.0", "attribution": "draft",
                 "logicId": "logic-1", "runtimeAttribution": "agent",
                 "configSchema": {"type": "object", "properties": {"mode": {"type": "string"}}},
                 "inputs": {"mode": {"frontDataProp": "modeProp", "layoutContent": "row",
                                     "extendProp": {"apiType": "GET"}}}}
    }))
    .expect("a draft");
    as_a.create(&PostParams::default(), &draft)
        .await
        .expect("author-a creates the draft");
    let stamp = "plugin-operator.dev/changed-by";
    let mut round = 0;
    wait_until("the policy to stamp author-a", DEADLINE, || {
        round += 1;
        let description = format!("by a, round {round}");
        let as_a = as_a.clone();
        let a = a.clone();
        async move {
            let patched = as_a
                .patch(
                    "echo-0.1.0",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"description": description}})),
                )
                .await
                .map_err(|e| e.to_string())?;
            match patched.annotations().get(stamp) {
                Some(by) if *by == a => Ok(()),
                other => Err(format!("stamped {other:?}")),
            }
        }
    })
    .await;

    let path = format!(
        "/v1/{}/agent-plugin/detail?plugin_name=echo&version=0.1.0",
        ns.name
    );
    let versions: Api<plugin_operator::resources::PluginVersion> =
        Api::namespaced(client.clone(), &ns.name);
    // op_time: when the spec was last written, as the API server recorded it.
    let spec_written = |v: &plugin_operator::resources::PluginVersion, manager: &str| {
        v.metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.subresource.is_none())
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.get("f:spec").is_some())
            })
            .filter_map(|m| m.time.as_ref().map(|t| (m.manager.clone(), t.0)))
            .max_by_key(|(_, t)| *t)
            .map(|(who, t)| {
                assert_eq!(who.as_deref(), Some(manager));
                t.as_millisecond().to_string()
            })
            .expect("a spec write")
    };
    let detail_by = |who: String| {
        let path = path.clone();
        let reader = reader.clone();
        async move {
            wait_until(&format!("op_user {who}"), DEADLINE, || async {
                let answer = get(&path, &reader).await;
                if answer.status == StatusCode::OK && answer.body["op_user"] == who.as_str() {
                    Ok(answer)
                } else {
                    Err(format!("{answer:?}"))
                }
            })
            .await
        }
    };
    let answer = detail_by(a.clone()).await;
    let written = versions.get("echo-0.1.0").await.expect("the draft");
    // kubectl and kube-rs clients without a field manager are recorded under their program name.
    let manager = written
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").is_some())
        })
        .and_then(|m| m.manager.clone())
        .expect("a manager");
    assert_eq!(answer.body["op_time"], spec_written(&written, &manager));
    // The remaining seed fields, as the version gives them.
    assert_eq!(answer.body["runtime_attribution"], "agent");
    assert_eq!(answer.body["plugin_execution"], json!({}));
    let mode = &answer.body["input_info"][0];
    assert_eq!(mode["front_data_prop"], "modeProp");
    assert_eq!(mode["layout_content"], "row");
    assert_eq!(mode["extend_prop"]["api_type"], "GET");
    assert_eq!(mode["extend_prop"]["api_options"], "");

    // author-b changes it: op_user follows.
    let as_b: Api<plugin_operator::resources::PluginVersion> =
        Api::namespaced(acting_as(&b).await, &ns.name);
    // A whole second later, so op_time visibly moves (managedFields keep whole seconds).
    let before = answer.body["op_time"].as_str().expect("op_time").to_owned();
    let at_least = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(1))
        .expect("time");
    while k8s_openapi::jiff::Timestamp::now() < at_least {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    as_b.patch(
        "echo-0.1.0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"description": "by b", "logicId": "logic-2"}})),
    )
    .await
    .expect("author-b changes the draft");
    let answer = detail_by(b.clone()).await;
    let written = versions.get("echo-0.1.0").await.expect("the draft");
    assert_eq!(answer.body["op_time"], spec_written(&written, &manager));
    assert_ne!(answer.body["op_time"], before.as_str());

    // author-a writing the annotation by hand, without changing the spec, changes nothing.
    as_a.patch(
        "echo-0.1.0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {stamp: "someone-else"}}})),
    )
    .await
    .expect("author-a patches metadata");
    let kept = versions.get("echo-0.1.0").await.expect("the draft");
    assert_eq!(kept.annotations().get(stamp), Some(&b));
    assert_eq!(get(&path, &reader).await.body["op_user"], b.as_str());
}
