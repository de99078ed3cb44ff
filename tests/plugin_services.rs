//! Seed 003 end to end: plugin credentials and tokens, config, storage and jobs, against the
//! in-process operator (and, where a setting differs, a second API instance in this process).
mod support;

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec},
    core::v1::{ConfigMap, Secret, ServiceAccount},
    events::v1::Event,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use plugin_operator::{
    api::{self, routes::plugin_services::Settings},
    resources::{Phase, PluginInstall, PluginJob},
    runtime::{
        cache::{Caches, Scope},
        clock::Clock,
    },
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

const AUDIENCE: &str = "plugin-operator.dev/plugin-services";

/// A ServiceAccount that may do `verbs` on `resources` of plugin-operator.dev; its token.
async fn caller(
    client: &Client,
    namespace: &str,
    name: &str,
    resources: &[&str],
    verbs: &[&str],
) -> String {
    let _: ServiceAccount = create(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .await;
    if !verbs.is_empty() {
        let _: Role = create(client, namespace, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
            "rules": [{"apiGroups": ["plugin-operator.dev"], "resources": resources, "verbs": verbs}]
        }))
        .await;
        let _: RoleBinding = create(client, namespace, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        }))
        .await;
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
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

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

enum Body<'a> {
    None,
    Json(Value),
    Form(&'a [(&'a str, &'a str)]),
}

async fn call_at(
    addr: SocketAddr,
    method: Method,
    path: &str,
    auth: Auth<'_>,
    body: Body<'_>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    request = match auth {
        Auth::None => request,
        Auth::Bearer(t) => request.bearer_auth(t),
        Auth::Basic(id, secret) => request.basic_auth(id, Some(secret)),
    };
    request = match body {
        Body::None => request,
        Body::Json(v) => request.json(&v),
        Body::Form(pairs) => request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.replace(',', "%2C")))
                    .collect::<Vec<_>>()
                    .join("&"),
            ),
    };
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the API answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

async fn call(method: Method, path: &str, auth: Auth<'_>, body: Body<'_>) -> Answer {
    call_at(operator().api_addr, method, path, auth, body).await
}

#[track_caller]
fn expect(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{answer:?}");
}

/// A plugin-services error: `{error, message, field?}`.
#[track_caller]
fn expect_error(answer: &Answer, status: StatusCode, error: &str, field: Option<&str>) {
    expect(answer, status);
    assert_eq!(answer.body["error"], error, "{answer:?}");
    assert!(answer.body["message"].is_string(), "{answer:?}");
    assert_eq!(answer.body["field"].as_str(), field, "{answer:?}");
}

#[track_caller]
fn expect_oauth(answer: &Answer, status: StatusCode, error: &str) {
    expect(answer, status);
    assert_eq!(answer.body["error"], error, "{answer:?}");
    assert!(answer.body["error_description"].is_string(), "{answer:?}");
}

/// A namespace with plugin `p` (its version's configSchema: `retries` ≤ 5) and Active installs.
async fn installs(
    client: &Client,
    prefix: &str,
    names: &[&str],
) -> (devtools::testkit::TestNamespace, Vec<PluginInstall>) {
    let ns = namespace(client, prefix).await;
    plugin(client, &ns.name, "p").await;
    version_with(
        client,
        &ns.name,
        "p",
        "1.0.0",
        "ready",
        json!({"configSchema": {
            "type": "object",
            "properties": {"retries": {"type": "integer", "maximum": 5}, "url": {"type": "string"}}
        }}),
    )
    .await;
    for name in names {
        install(client, &ns.name, name, json!({"plugin": "p"})).await;
    }
    let mut ready = Vec::new();
    for name in names {
        ready.push(wait_phase(client, &ns.name, name, Phase::Active).await);
    }
    (ns, ready)
}

/// The install's client id and secret, from its credentials Secret.
async fn credentials(client: &Client, namespace: &str, install: &str) -> (String, String) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get(&format!("{install}-credentials"))
        .await
        .expect("credentials Secret");
    let data = secret.data.expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("text");
    (text("client_id"), text("client_secret"))
}

async fn login(id: &str, secret: &str) -> Answer {
    call(
        Method::POST,
        "/a/auth/v0/token",
        Auth::Basic(id, secret),
        Body::Form(&[
            ("grant_type", "client_credentials"),
            ("scope", "plugin,token.refresh"),
        ]),
    )
    .await
}

fn text(answer: &Answer, field: &str) -> String {
    answer.body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {answer:?}"))
        .to_owned()
}

fn uid(install: &PluginInstall) -> String {
    install.metadata.uid.clone().expect("uid")
}

/// Nothing the API issued or checked appears in the operator's log or the namespace's Events.
async fn assert_not_leaked(client: &Client, namespace: &str, secrets: &[String]) {
    let binary = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .expect("binary");
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/local-cluster/logs/operator-{binary}.log"));
    let log = std::fs::read_to_string(&log).expect("the operator's log");
    assert!(!log.is_empty());
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let events = serde_json::to_string(
        &events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items,
    )
    .expect("json");
    for secret in secrets {
        assert!(secret.len() >= 20, "a real secret");
        assert!(
            !log.contains(secret.as_str()),
            "a secret is in the operator's log"
        );
        assert!(!events.contains(secret.as_str()), "a secret is in an Event");
    }
}

/// A second API instance in this process (its own caches), with other token lifetimes.
async fn second_api(client: &Client, settings: Settings) -> SocketAddr {
    let (caches, _feeds, drivers) = Caches::new(client, &Scope::AllNamespaces, "plugin-catalog");
    for driver in drivers {
        tokio::spawn(driver);
    }
    let state = api::ApiState::new(
        client.clone(),
        caches.clone(),
        "plugin-catalog".into(),
        Clock::system(),
    );
    assert!(caches.ready().await);
    state.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = api::router(state).layer(settings.extension());
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plugins_log_in_use_refresh_and_rotate_their_tokens() {
    let client = setup().await;
    let (ns, installs) = installs(&client, "ps-token", &["a"]).await;
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    assert_eq!(id, format!("{}.a", ns.name));
    let mut issued = vec![secret.clone()];

    // Basic auth.
    let answer = login(&id, &secret).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["expires_in"], 43_200);
    assert_eq!(answer.body["refresh_token_expires_in"], 259_200);
    assert_eq!(answer.headers["cache-control"], "no-store");
    let access = text(&answer, "access_token");
    let refresh = text(&answer, "refresh_token");
    issued.extend([access.clone(), refresh.clone()]);

    // The access token is verifiable without the operator: a TokenReview for the audience.
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(access.clone()),
            audiences: Some(vec![AUDIENCE.into()]),
        },
        ..Default::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("review")
        .status
        .expect("status");
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(
        status.user.and_then(|u| u.username).as_deref(),
        Some(format!("system:serviceaccount:{}:a", ns.name).as_str())
    );

    // It works on the plugin services.
    let config_path = format!(
        "/api/v2/plugin-services/installs/{}/config",
        uid(&installs[0])
    );
    let answer = call(Method::GET, &config_path, Auth::Bearer(&access), Body::None).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"data": {}}));

    // Form-encoded client credentials; `plugin` alone: no refresh token.
    let answer = call(
        Method::POST,
        "/a/auth/v0/token",
        Auth::None,
        Body::Form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("scope", "plugin"),
        ]),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert!(answer.body.get("refresh_token").is_none(), "{answer:?}");
    issued.push(text(&answer, "access_token"));

    // The Secret keeps only hashes of refresh tokens.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let stored = secrets.get("a-credentials").await.expect("secret");
    let stored =
        String::from_utf8(stored.data.expect("data")["refresh_tokens"].0.clone()).expect("text");
    assert!(!stored.contains(&refresh), "{stored}");
    let records: serde_json::Map<String, Value> =
        serde_json::from_str(&stored).expect("a JSON object");
    assert_eq!(records.len(), 1, "one refresh token: {stored}");

    // Refresh: a new pair; the old refresh token is spent.
    let refresh_with = |token: String| {
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            call(
                Method::POST,
                "/a/auth/v0/token",
                Auth::Basic(&id, &secret),
                Body::Form(&[("grant_type", "refresh_token"), ("refresh_token", &token)]),
            )
            .await
        }
    };
    let answer = refresh_with(refresh.clone()).await;
    expect(&answer, StatusCode::OK);
    let refresh2 = text(&answer, "refresh_token");
    issued.extend([text(&answer, "access_token"), refresh2.clone()]);
    assert_ne!(refresh2, refresh);
    expect_oauth(
        &refresh_with(refresh.clone()).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );

    // Bad requests, each with its OAuth error.
    let wrong = login(&id, "not-the-secret").await;
    expect_oauth(&wrong, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(wrong.headers.contains_key("www-authenticate"));
    expect_oauth(
        &login(&format!("{}.nope", ns.name), &secret).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    let form = |pairs: &'static [(&'static str, &'static str)]| {
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            call(
                Method::POST,
                "/a/auth/v0/token",
                Auth::Basic(&id, &secret),
                Body::Form(pairs),
            )
            .await
        }
    };
    expect_oauth(
        &form(&[("scope", "plugin")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    expect_oauth(
        &form(&[("grant_type", "password")]).await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    expect_oauth(
        &form(&[("grant_type", "client_credentials"), ("scope", "admin")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    expect_oauth(
        &form(&[("grant_type", "refresh_token")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    expect_oauth(
        &call(
            Method::POST,
            "/a/auth/v0/token",
            Auth::None,
            Body::Form(&[("grant_type", "client_credentials")]),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );

    // Rotation: a new secret, the old one and every refresh token revoked.
    patch_install(
        &client,
        &ns.name,
        "a",
        json!({"metadata": {"annotations": {"plugin-operator.dev/rotate-credentials": "1"}}}),
    )
    .await;
    devtools::testkit::wait_until("the old secret to be refused", DEADLINE, || async {
        let answer = login(&id, &secret).await;
        if answer.status == StatusCode::UNAUTHORIZED {
            expect_oauth(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
            Ok(())
        } else {
            Err(format!("{answer:?}"))
        }
    })
    .await;
    let (_, rotated) = credentials(&client, &ns.name, "a").await;
    assert_ne!(rotated, secret);
    issued.push(rotated.clone());
    let answer = call(
        Method::POST,
        "/a/auth/v0/token",
        Auth::Basic(&id, &rotated),
        Body::Form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
        ]),
    )
    .await;
    expect_oauth(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
    let answer = login(&id, &rotated).await;
    expect(&answer, StatusCode::OK);
    issued.extend([
        text(&answer, "access_token"),
        text(&answer, "refresh_token"),
    ]);

    // Lifetimes come from the settings: refresh tokens of 2 s expire.
    let short = second_api(
        &client,
        Settings {
            access_token_seconds: 600,
            refresh_token_seconds: 2,
            ..Settings::default()
        },
    )
    .await;
    let answer = call_at(
        short,
        Method::POST,
        "/a/auth/v0/token",
        Auth::Basic(&id, &rotated),
        Body::Form(&[
            ("grant_type", "client_credentials"),
            ("scope", "plugin,token.refresh"),
        ]),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body["expires_in"], 600);
    assert_eq!(answer.body["refresh_token_expires_in"], 2);
    let short_refresh = text(&answer, "refresh_token");
    issued.extend([text(&answer, "access_token"), short_refresh.clone()]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answer = call_at(
        short,
        Method::POST,
        "/a/auth/v0/token",
        Auth::Basic(&id, &rotated),
        Body::Form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &short_refresh),
        ]),
    )
    .await;
    expect_oauth(&answer, StatusCode::BAD_REQUEST, "invalid_grant");

    assert_not_leaked(&client, &ns.name, &issued).await;
}

#[tokio::test]
async fn config_merges_validates_and_reaches_only_its_own_install() {
    let client = setup().await;
    let (ns, installs) = installs(&client, "ps-config", &["a", "b"]).await;
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let access = text(&login(&id, &secret).await, "access_token");
    let path = |i: &PluginInstall| format!("/api/v2/plugin-services/installs/{}/config", uid(i));
    let (a, b) = (&installs[0], &installs[1]);

    let answer = call(
        Method::PUT,
        &path(a),
        Auth::Bearer(&access),
        Body::Json(json!({"retries": 3, "url": "https://x"})),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({"data": {"retries": 3, "url": "https://x"}})
    );
    let answer = call(
        Method::PUT,
        &path(a),
        Auth::Bearer(&access),
        Body::Json(json!({"url": null, "retries": 4})),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"data": {"retries": 4}}));
    let answer = call(Method::GET, &path(a), Auth::Bearer(&access), Body::None).await;
    assert_eq!(answer.body, json!({"data": {"retries": 4}}));

    // A schema violation: 400 naming the field, nothing written.
    let answer = call(
        Method::PUT,
        &path(a),
        Auth::Bearer(&access),
        Body::Json(json!({"retries": 9})),
    )
    .await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("config.retries"),
    );
    assert_eq!(
        get_install(&client, &ns.name, "a").await.spec.config,
        Some(json!({"retries": 4}))
    );
    let answer = call(
        Method::PUT,
        &path(a),
        Auth::Bearer(&access),
        Body::Json(json!([1])),
    )
    .await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("body"),
    );
    let answer = call(
        Method::GET,
        "/api/v2/plugin-services/installs/nope/config",
        Auth::Bearer(&access),
        Body::None,
    )
    .await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("installId"),
    );
    let answer = call(
        Method::GET,
        "/api/v2/plugin-services/installs/00000000-0000-0000-0000-000000000000/config",
        Auth::Bearer(&access),
        Body::None,
    )
    .await;
    expect_error(&answer, StatusCode::NOT_FOUND, "not_found", None);

    // Another install's id: 403; no token or a garbage one: 401.
    expect_error(
        &call(Method::GET, &path(b), Auth::Bearer(&access), Body::None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    expect_error(
        &call(
            Method::PUT,
            &path(b),
            Auth::Bearer(&access),
            Body::Json(json!({"retries": 1})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    expect_error(
        &call(Method::GET, &path(a), Auth::None, Body::None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    expect_error(
        &call(Method::GET, &path(a), Auth::Bearer("garbage"), Body::None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );

    // Kubernetes callers: RBAC on the install decides.
    let admin = caller(
        &client,
        &ns.name,
        "admin",
        &["plugininstalls"],
        &["get", "patch"],
    )
    .await;
    let nobody = caller(&client, &ns.name, "nobody", &[], &[]).await;
    let answer = call(
        Method::PUT,
        &path(b),
        Auth::Bearer(&admin),
        Body::Json(json!({"retries": 2})),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"data": {"retries": 2}}));
    expect_error(
        &call(Method::GET, &path(b), Auth::Bearer(&nobody), Body::None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    // Storage and settling are for plugin tokens only.
    let answer = call(
        Method::POST,
        "/api/v2/plugin-services/storage",
        Auth::Bearer(&admin),
        Body::Json(json!({"commands": []})),
    )
    .await;
    expect_error(&answer, StatusCode::FORBIDDEN, "forbidden", None);

    assert_not_leaked(&client, &ns.name, &[secret, access]).await;
}

#[tokio::test]
async fn storage_lives_in_the_cluster_per_plugin_or_install() {
    let client = setup().await;
    let (ns, installs) = installs(&client, "ps-storage", &["a", "b"]).await;
    let token_of = |name: &'static str| {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move {
            let (id, secret) = credentials(&client, &ns, name).await;
            text(&login(&id, &secret).await, "access_token")
        }
    };
    let (ta, tb) = (token_of("a").await, token_of("b").await);
    let storage = |token: &str, body: Value| {
        let token = token.to_owned();
        async move {
            call(
                Method::POST,
                "/api/v2/plugin-services/storage",
                Auth::Bearer(&token),
                Body::Json(body),
            )
            .await
        }
    };

    let answer = storage(
        &ta,
        json!({"commands": [
            {"action": "set", "key": "vr:entry:1", "value": "x"},
            {"action": "set", "key": "vr:entry:2", "value": {"n": 2}},
            {"action": "get", "key": "vr:entry:1"},
            {"action": "list", "key": "vr:"},
            {"action": "unset", "key": "vr:entry:1"},
            {"action": "get", "key": "vr:entry:1"},
        ]}),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({"data": [
            {"key": "vr:entry:1", "value": "x"},
            {"key": "vr:entry:2", "value": {"n": 2}},
            {"key": "vr:entry:1", "value": "x"},
            {"key": "vr:", "value": ["vr:entry:1", "vr:entry:2"]},
            {"key": "vr:entry:1", "value": "x"},
            {"key": "vr:entry:1", "value": null},
        ]})
    );
    // The plugin's storage is shared by its installs; the install's is not.
    let answer = storage(
        &tb,
        json!({"commands": [{"action": "get", "key": "vr:entry:2"}]}),
    )
    .await;
    assert_eq!(answer.body["data"][0]["value"], json!({"n": 2}));
    let answer = storage(&ta, json!({"install_id": uid(&installs[0]), "commands": [{"action": "set", "key": "mine", "value": 1}]})).await;
    expect(&answer, StatusCode::OK);
    let answer = storage(
        &tb,
        json!({"install_id": uid(&installs[1]), "commands": [{"action": "get", "key": "mine"}]}),
    )
    .await;
    assert_eq!(answer.body["data"][0]["value"], Value::Null);
    let answer = storage(
        &tb,
        json!({"install_id": uid(&installs[0]), "commands": [{"action": "get", "key": "mine"}]}),
    )
    .await;
    expect_error(&answer, StatusCode::FORBIDDEN, "forbidden", None);

    // It is in ConfigMaps (kubectl sees it); the install's is owned by the install.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let shared = cms.get("p-plugin-storage").await.expect("plugin storage");
    assert!(shared.data.expect("data")["storage.json"].contains("vr:entry:2"));
    let own = cms.get("a-storage").await.expect("install storage");
    assert_eq!(own.owner_references()[0].uid, uid(&installs[0]));

    // Another API instance (as after a restart) reads the same data.
    let other = second_api(&client, Settings::default()).await;
    let answer = call_at(other, Method::POST, "/api/v2/plugin-services/storage", Auth::Bearer(&ta),
        Body::Json(json!({"install_id": uid(&installs[0]), "commands": [{"action": "get", "key": "mine"}]}))).await;
    assert_eq!(answer.body["data"][0]["value"], 1, "{answer:?}");

    // Concurrent writers lose nothing.
    let writes = (0..8).map(|n| {
        storage(
            &ta,
            json!({"commands": [{"action": "set", "key": format!("c{n}"), "value": n}]}),
        )
    });
    for answer in futures::future::join_all(writes).await {
        expect(&answer, StatusCode::OK);
    }
    let answer = storage(&ta, json!({"commands": [{"action": "list", "key": "c"}]})).await;
    assert_eq!(
        answer.body["data"][0]["value"].as_array().map(Vec::len),
        Some(8),
        "{answer:?}"
    );

    // Bad commands and limits.
    let answer = storage(&ta, json!({"commands": [{"action": "drop", "key": "a"}]})).await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("commands[0].action"),
    );
    let answer = storage(
        &ta,
        json!({"commands": [{"action": "set", "key": "big", "value": "v".repeat(70_000)}]}),
    )
    .await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("commands[0].value"),
    );
    let fill: Vec<Value> = (0..15)
        .map(|n| json!({"action": "set", "key": format!("f{n}"), "value": "v".repeat(65_000)}))
        .collect();
    let answer = storage(&ta, json!({"commands": fill})).await;
    expect_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "limit_exceeded",
        None,
    );

    assert_not_leaked(&client, &ns.name, &[ta, tb]).await;
}

#[tokio::test]
async fn jobs_are_created_by_callers_and_settled_by_the_plugin() {
    let client = setup().await;
    let (ns, installs) = installs(&client, "ps-jobs", &["a", "b"]).await;
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let ta = text(&login(&id, &secret).await, "access_token");
    let (idb, secretb) = credentials(&client, &ns.name, "b").await;
    let tb = text(&login(&idb, &secretb).await, "access_token");
    let creator = caller(&client, &ns.name, "creator", &["pluginjobs"], &["create"]).await;
    let nobody = caller(&client, &ns.name, "nobody", &[], &[]).await;

    let body = json!({"install_id": uid(&installs[0]), "name": "entry_sign_in", "identifier": "vr:entry:19", "payload": {"entry": 19}});
    let answer = call(
        Method::POST,
        "/api/v2/plugin-services/jobs",
        Auth::Bearer(&creator),
        Body::Json(body.clone()),
    )
    .await;
    expect(&answer, StatusCode::CREATED);
    assert_eq!(answer.body["data"]["name"], "entry_sign_in");
    assert_eq!(answer.body["data"]["identifier"], "vr:entry:19");
    let job_id = text(
        &Answer {
            status: answer.status,
            headers: answer.headers.clone(),
            body: answer.body["data"].clone(),
        },
        "id",
    );
    expect_error(
        &call(
            Method::POST,
            "/api/v2/plugin-services/jobs",
            Auth::Bearer(&nobody),
            Body::Json(body),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let answer = call(
        Method::POST,
        "/api/v2/plugin-services/jobs",
        Auth::Bearer(&creator),
        Body::Json(json!({"install_id": uid(&installs[0]), "identifier": "x"})),
    )
    .await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("name"),
    );

    // A PluginJob in the namespace, owned by the install, pending.
    let jobs: Api<PluginJob> = Api::namespaced(client.clone(), &ns.name);
    let job = jobs
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .into_iter()
        .find(|j| j.metadata.uid.as_deref() == Some(job_id.as_str()))
        .expect("the job");
    assert_eq!(job.spec.install, "a");
    assert_eq!(job.owner_references()[0].uid, uid(&installs[0]));

    let path = format!("/api/v2/plugin-services/jobs/{job_id}");
    let settle = json!({"status": "failed", "status_message": "no badge", "failure_reason": "offline",
        "attachments": [{"label": "log", "type": "url", "value": "https://x/log"}]});
    // Only the install's own plugin settles it.
    expect_error(
        &call(
            Method::PATCH,
            &path,
            Auth::Bearer(&tb),
            Body::Json(settle.clone()),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    expect_error(
        &call(
            Method::PATCH,
            &path,
            Auth::Bearer(&creator),
            Body::Json(settle.clone()),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let answer = call(
        Method::PATCH,
        &path,
        Auth::Bearer(&ta),
        Body::Json(json!({"status": "pending"})),
    )
    .await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("status"),
    );
    let answer = call(
        Method::PATCH,
        &path,
        Auth::Bearer(&ta),
        Body::Json(json!({"status": "done"})),
    )
    .await;
    expect_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("status_message"),
    );
    let answer = call(
        Method::PATCH,
        "/api/v2/plugin-services/jobs/00000000-0000-0000-0000-000000000000",
        Auth::Bearer(&ta),
        Body::Json(settle.clone()),
    )
    .await;
    expect_error(&answer, StatusCode::NOT_FOUND, "not_found", None);
    let answer = call(Method::PATCH, &path, Auth::Bearer(&ta), Body::Json(settle)).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(
        answer.body["data"],
        json!({"id": job_id, "name": "entry_sign_in", "identifier": "vr:entry:19"})
    );
    let status = jobs
        .get(&job.name_any())
        .await
        .expect("job")
        .status
        .expect("status");
    assert_eq!(status.status.as_str(), "failed");
    assert_eq!(status.status_message.as_deref(), Some("no badge"));
    assert_eq!(status.failure_reason.as_deref(), Some("offline"));
    assert_eq!(status.attachments[0].value, "https://x/log");

    assert_not_leaked(&client, &ns.name, &[secret, secretb, ta, tb, creator]).await;
}

/// Creates a job for `install` as `creator`; its id.
async fn new_job(creator: &str, install: &PluginInstall, name: &str, identifier: &str) -> String {
    let answer = call(
        Method::POST,
        "/api/v2/plugin-services/jobs",
        Auth::Bearer(creator),
        Body::Json(
            json!({"install_id": uid(install), "name": name, "identifier": identifier,
            "payload": {"n": identifier}}),
        ),
    )
    .await;
    expect(&answer, StatusCode::CREATED);
    answer.body["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id in {answer:?}"))
        .to_owned()
}

/// The ids of a jobs page, in order.
fn ids(answer: &Answer) -> Vec<String> {
    answer.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("data in {answer:?}"))
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn plugins_list_their_pending_jobs_page_by_page_wait_for_new_ones_and_settle_each_once() {
    let client = setup().await;
    let (ns, installs) = installs(&client, "ps-joblist", &["a", "b"]).await;
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let ta = text(&login(&id, &secret).await, "access_token");
    let (idb, secretb) = credentials(&client, &ns.name, "b").await;
    let tb = text(&login(&idb, &secretb).await, "access_token");
    let creator = caller(&client, &ns.name, "creator", &["pluginjobs"], &["create"]).await;
    let list = |token: &str, query: &str| {
        let token = token.to_owned();
        let path = format!("/api/v2/plugin-services/jobs{query}");
        async move { call(Method::GET, &path, Auth::Bearer(&token), Body::None).await }
    };

    // Nothing yet: an empty page at once.
    let answer = list(&ta, "?status=pending").await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"data": []}));

    // Three jobs for a, one for b.
    let mut mine = Vec::new();
    for n in 1..=3 {
        mine.push(
            new_job(
                &creator,
                &installs[0],
                "entry_sign_in",
                &format!("vr:entry:{n}"),
            )
            .await,
        );
    }
    let theirs = new_job(&creator, &installs[1], "entry_sign_in", "vr:entry:b").await;

    // Two pages of two: a's jobs only, each once, with what the caller gave.
    let first = list(&ta, "?status=pending&limit=2").await;
    expect(&first, StatusCode::OK);
    assert_eq!(
        first.body["data"].as_array().map(Vec::len),
        Some(2),
        "{first:?}"
    );
    let job = &first.body["data"][0];
    assert_eq!(job["name"], "entry_sign_in");
    assert_eq!(job["status"], "pending");
    assert_eq!(job["payload"]["n"], job["identifier"]);
    let token = text(&first, "continue");
    let second = list(&ta, &format!("?status=pending&limit=2&continue={token}")).await;
    expect(&second, StatusCode::OK);
    assert!(second.body.get("continue").is_none(), "{second:?}");
    let mut seen = ids(&first);
    seen.extend(ids(&second));
    seen.sort();
    let mut expected = mine.clone();
    expected.sort();
    assert_eq!(seen, expected, "a sees exactly its own three jobs");
    assert_eq!(
        ids(&list(&tb, "?status=pending").await),
        std::slice::from_ref(&theirs)
    );
    expect_error(
        &list(&ta, "?continue=not-a-token").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("continue"),
    );
    expect_error(
        &list(&ta, "?waitSeconds=61").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("waitSeconds"),
    );
    // The caller that creates jobs does not work them: listing takes a plugin token.
    expect_error(
        &list(&creator, "?status=pending").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );

    // Settle one: failure_reason is required for failed and ignored; once settled, 409.
    let path = format!("/api/v2/plugin-services/jobs/{}", mine[0]);
    for status in ["failed", "ignored"] {
        expect_error(
            &call(
                Method::PATCH,
                &path,
                Auth::Bearer(&ta),
                Body::Json(json!({"status": status, "status_message": "no badge"})),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("failure_reason"),
        );
    }
    let settle = json!({"status": "done", "status_message": "signed in"});
    let answer = call(
        Method::PATCH,
        &path,
        Auth::Bearer(&ta),
        Body::Json(settle.clone()),
    )
    .await;
    expect(&answer, StatusCode::OK);
    expect_error(
        &call(Method::PATCH, &path, Auth::Bearer(&ta), Body::Json(settle)).await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    let jobs: Api<PluginJob> = Api::namespaced(client.clone(), &ns.name);
    let settled = jobs
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .into_iter()
        .find(|j| j.metadata.uid.as_deref() == Some(mine[0].as_str()))
        .expect("the settled job");
    let status = settled.status.expect("status");
    assert_eq!(status.status.as_str(), "done");
    assert_eq!(
        status.settled_by.as_deref(),
        Some(format!("system:serviceaccount:{}:a", ns.name).as_str())
    );
    let settled_at = status.settled_at.expect("settledAt").0;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(settled_at);
    assert!(
        age.as_secs() >= 0 && age.as_secs() < 120,
        "settled just now: {settled_at}"
    );
    // The settled job leaves the pending list and shows under done.
    let mut pending = ids(&list(&ta, "?status=pending").await);
    pending.sort();
    let mut rest = mine[1..].to_vec();
    rest.sort();
    assert_eq!(pending, rest);
    assert_eq!(ids(&list(&ta, "?status=done").await), &mine[..1]);
    // b cannot settle a's jobs either.
    expect_error(
        &call(
            Method::PATCH,
            &format!("/api/v2/plugin-services/jobs/{}", mine[1]),
            Auth::Bearer(&tb),
            Body::Json(json!({"status": "done", "status_message": "x"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );

    // Long poll: b settles its only job, then waits; a job created after the request started
    // answers it, long before the wait is up.
    let answer = call(
        Method::PATCH,
        &format!("/api/v2/plugin-services/jobs/{theirs}"),
        Auth::Bearer(&tb),
        Body::Json(
            json!({"status": "ignored", "status_message": "dup", "failure_reason": "duplicate"}),
        ),
    )
    .await;
    expect(&answer, StatusCode::OK);
    let started = std::time::Instant::now();
    let poll = tokio::spawn(list(&tb, "?status=pending&waitSeconds=45"));
    // The request is waiting once its list found nothing and its watch is open: the
    // operator's log says so (the audit log records no reads).
    let log = operator().log_path.clone();
    let waiting = format!("namespace={} install=b", ns.name);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("long poll: no job yet") && l.contains(&waiting))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the long poll never watched"
        );
        assert!(
            !poll.is_finished(),
            "the long poll answered before a job existed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = new_job(&creator, &installs[1], "entry_sign_out", "vr:entry:late").await;
    let answer = poll.await.expect("the long poll");
    expect(&answer, StatusCode::OK);
    assert_eq!(ids(&answer), [late]);
    assert_eq!(answer.body["data"][0]["name"], "entry_sign_out");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "answered when the job came, not when the wait was up: {:?}",
        started.elapsed()
    );
    // With nothing to wait for, a short poll answers an empty page when its time is up.
    let started = std::time::Instant::now();
    let answer = list(&ta, "?status=failed&waitSeconds=2").await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"data": []}));
    assert!(started.elapsed() >= Duration::from_secs(2));

    assert_not_leaked(&client, &ns.name, &[secret, secretb, ta, tb, creator]).await;
}

#[tokio::test]
async fn config_answers_the_schema_defaults_and_tokens_their_real_lifetime() {
    let client = setup().await;
    let ns = namespace(&client, "ps-defaults").await;
    plugin(&client, &ns.name, "p").await;
    version_with(
        &client,
        &ns.name,
        "p",
        "1.0.0",
        "ready",
        json!({"configSchema": {
            "type": "object",
            "properties": {
                "retries": {"type": "integer", "default": 3},
                "mode": {"type": "string", "default": "fast"},
                "limits": {"type": "object", "default": {},
                           "properties": {"level": {"type": "integer", "default": 2}}}
            }
        }}),
    )
    .await;
    install(
        &client,
        &ns.name,
        "a",
        json!({"plugin": "p", "config": {"retries": 1}}),
    )
    .await;
    let active = wait_phase(&client, &ns.name, "a", Phase::Active).await;
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let login_answer = login(&id, &secret).await;
    expect(&login_answer, StatusCode::OK);
    let access = text(&login_answer, "access_token");

    // GET: the config the plugin runs with, defaults filled in at every level, as in the
    // ConfigMap; what the install set wins over a default.
    let path = format!("/api/v2/plugin-services/installs/{}/config", uid(&active));
    let effective = json!({"retries": 1, "mode": "fast", "limits": {"level": 2}});
    let answer = call(Method::GET, &path, Auth::Bearer(&access), Body::None).await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"data": effective}));
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let map = maps.get("a-config").await.expect("the install's ConfigMap");
    let in_map: Value =
        serde_json::from_str(&map.data.expect("data")["config.json"]).expect("JSON");
    assert_eq!(in_map, effective);

    // PUT merges into spec.config only (no defaults written there) and answers the whole.
    let answer = call(
        Method::PUT,
        &path,
        Auth::Bearer(&access),
        Body::Json(json!({"mode": "slow"})),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({"data": {"retries": 1, "mode": "slow", "limits": {"level": 2}}})
    );
    let stored = get_install(&client, &ns.name, "a").await.spec.config;
    assert_eq!(stored, Some(json!({"retries": 1, "mode": "slow"})));

    // expires_in: the lifetime of the token issued. The default 12 h is issued as asked; 48 h
    // asked of an API server that caps tokens at 24 h (devtools/scripts/cluster.sh) is 24 h.
    assert_eq!(login_answer.body["expires_in"], 43_200);
    let long = second_api(
        &client,
        Settings {
            access_token_seconds: 172_800,
            ..Settings::default()
        },
    )
    .await;
    let answer = call_at(
        long,
        Method::POST,
        "/a/auth/v0/token",
        Auth::Basic(&id, &secret),
        Body::Form(&[("grant_type", "client_credentials"), ("scope", "plugin")]),
    )
    .await;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body["expires_in"], 86_400, "{answer:?}");
    let token = text(&answer, "access_token");
    let claims: Value = {
        use base64::Engine;
        let payload = token.split('.').nth(1).expect("a JWT");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64"),
        )
        .expect("claims")
    };
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 86_400);

    assert_not_leaked(&client, &ns.name, &[secret, access, token]).await;
}
