//! The HTTP API protects itself and its state stays bounded (issue 15), end to end on the local
//! control plane: the header-read timeout, load shedding with `/readyz` still up, the token
//! route's rate limit (and that a wrong secret writes nothing), the access log and the metrics,
//! the refresh-token cap, the jobs' time to live, and Lease names. The binary's operator runs
//! with small limits (the flags below); the tests that need other limits start operators of
//! their own, each watching only its own namespace.
mod support;

use std::{net::SocketAddr, time::Duration};

use devtools::testkit::{TestNamespace, wait_until};
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Secret},
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt};
use plugin_operator::resources::{Phase, PluginInstall, PluginJob};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The binary operator's limits: small, so that the tests run fast.
const HEADER_READ_TIMEOUT_SECONDS: u64 = 2;
const TOKEN_BURST_PER_CLIENT: usize = 8;
const MAX_REFRESH_TOKENS: usize = 3;

async fn setup() -> Client {
    setup_with_flags(&[
        "--api-header-read-timeout-seconds=2",
        // One more try per minute after the burst: none during a test.
        "--token-rate-per-client=1",
        "--token-burst-per-client=8",
        "--token-burst-per-peer=10000",
        "--max-refresh-tokens=3",
        "--job-ttl-seconds=3600",
    ])
    .await
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

/// One request on a connection of its own (no keep-alive connection the server may be closing
/// after the short header-read timeout).
async fn call_at(
    addr: SocketAddr,
    method: Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> Answer {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut request = http.request(method, format!("http://{addr}{path}"));
    request = match auth {
        Auth::None => request,
        Auth::Bearer(t) => request.bearer_auth(t),
        Auth::Basic(id, secret) => request.basic_auth(id, Some(secret)),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
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

async fn call(method: Method, path: &str, auth: Auth<'_>, body: Option<Value>) -> Answer {
    call_at(operator().api_addr, method, path, auth, body).await
}

/// `POST /a/auth/v0/token`, client credentials with Basic auth.
async fn login(id: &str, secret: &str) -> Answer {
    call(
        Method::POST,
        "/a/auth/v0/token",
        Auth::Basic(id, secret),
        Some(json!({"grant_type": "client_credentials", "scope": "plugin,token.refresh"})),
    )
    .await
}

async fn refresh(id: &str, secret: &str, token: &str) -> Answer {
    call(
        Method::POST,
        "/a/auth/v0/token",
        Auth::Basic(id, secret),
        Some(json!({"grant_type": "refresh_token", "refresh_token": token})),
    )
    .await
}

fn text(answer: &Answer, field: &str) -> String {
    answer.body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {answer:?}"))
        .to_owned()
}

/// A namespace with plugin `p` and the Active installs `names`.
async fn installs(
    client: &Client,
    prefix: &str,
    names: &[&str],
) -> (TestNamespace, Vec<PluginInstall>) {
    let ns = namespace(client, prefix).await;
    plugin(client, &ns.name, "p").await;
    version(client, &ns.name, "p", "1.0.0", "ready").await;
    for name in names {
        install(client, &ns.name, name, json!({"plugin": "p"})).await;
    }
    let mut ready = Vec::new();
    for name in names {
        ready.push(wait_phase(client, &ns.name, name, Phase::Active).await);
    }
    (ns, ready)
}

/// The install's client id and secret, once the controller has made its credentials.
async fn credentials(client: &Client, namespace: &str, install: &str) -> (String, String) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = format!("{install}-credentials");
    let secret = wait_until("the credentials Secret", DEADLINE, || {
        let (api, name) = (api.clone(), name.clone());
        async move {
            api.get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    let data = secret.data.expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("text");
    (text("client_id"), text("client_secret"))
}

/// The operator's metrics, as Prometheus text.
async fn metrics(operator: &Operator) -> String {
    reqwest::get(format!("http://{}/metrics", operator.admin_addr))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("text")
}

/// The value of one series in Prometheus text (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_slow_with_its_headers_is_cut_off_while_others_are_served() {
    let _client = setup().await;
    let addr = operator().api_addr;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let started = std::time::Instant::now();
    let head = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let trickle = async {
        let mut answered = Vec::new();
        // One byte a second: the head would take over a minute.
        for byte in head {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            let mut buf = [0_u8; 256];
            // Wait a second for the server to close the connection (a read of 0 bytes) or to
            // answer with an error status.
            match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => {
                    answered.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => {}
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answered).into_owned(),
        )
    };
    // Meanwhile others are served, one after another.
    let others = async {
        let mut served = 0;
        while started.elapsed() < Duration::from_secs(HEADER_READ_TIMEOUT_SECONDS) {
            let answer = call(Method::GET, "/openapi.json", Auth::None, None).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            served += 1;
        }
        served
    };
    let ((cut_after, answered), served) = tokio::join!(trickle, others);
    assert!(
        answered.is_empty() || answered.starts_with("HTTP/1.1 4"),
        "the slow client got {answered:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(HEADER_READ_TIMEOUT_SECONDS * 1000 - 200)
            && cut_after < Duration::from_secs(HEADER_READ_TIMEOUT_SECONDS + 3),
        "the slow client was cut off after {cut_after:?}, the header-read timeout is {HEADER_READ_TIMEOUT_SECONDS} s"
    );
    assert!(served >= 2, "{served} other requests served meanwhile");
}

/// Starts a request to the token route whose body never arrives: it holds one of the server's
/// permits until the request timeout or until the connection is dropped.
async fn hold_a_permit(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /a/auth/v0/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"grant",
        )
        .await
        .expect("write");
    stream
}

#[tokio::test]
async fn a_flood_beyond_the_concurrency_limit_is_shed_with_retry_after_and_readyz_stays_up() {
    let client = setup().await;
    let ns = namespace(&client, "limits-flood").await;
    // An operator of its own (this namespace only) that handles 4 requests at once.
    let flooded = spawn_operator(&[
        "--no-leader-election",
        &format!("--namespace={}", ns.name),
        "--api-max-concurrent-requests=4",
        "--api-request-timeout-seconds=60",
    ]);
    wait_ready(&flooded).await;
    let before = metrics(&flooded).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(hold_a_permit(flooded.api_addr).await);
    }
    // Once the four are in, the next request is shed.
    wait_until(
        "the four slow requests to hold every permit",
        DEADLINE,
        || async {
            let answer = call_at(
                flooded.api_addr,
                Method::GET,
                "/openapi.json",
                Auth::None,
                None,
            )
            .await;
            match answer.status {
                StatusCode::SERVICE_UNAVAILABLE => Ok(()),
                other => Err(format!("answered {other}")),
            }
        },
    )
    .await;

    let flood: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(call_at(
                flooded.api_addr,
                Method::GET,
                "/openapi.json",
                Auth::None,
                None,
            ))
        })
        .collect();
    let readyz = reqwest::get(format!("http://{}/readyz", flooded.admin_addr))
        .await
        .expect("/readyz answers during the flood");
    assert_eq!(readyz.status(), StatusCode::OK);
    for answer in flood {
        let answer = answer.await.expect("task");
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
        assert_eq!(answer.headers["retry-after"], "1", "{answer:?}");
        assert_eq!(answer.body["error"], "unavailable", "{answer:?}");
    }
    let after = metrics(&flooded).await;
    let shed =
        r#"plugin_operator_http_requests_total{route="/openapi.json",method="GET",status="503"}"#;
    assert!(
        series(&after, shed) - series(&before, shed) >= 41.0,
        "the metrics count the shed requests:\n{after}"
    );

    // The slow clients go away: their permits come back.
    drop(held);
    wait_until("requests to be served again", DEADLINE, || async {
        let answer = call_at(
            flooded.api_addr,
            Method::GET,
            "/openapi.json",
            Auth::None,
            None,
        )
        .await;
        match answer.status {
            StatusCode::OK => Ok(()),
            other => Err(format!("answered {other}")),
        }
    })
    .await;
}

/// Writes (not reads) of Secrets in `namespace` since `since`, from the audit log.
fn secret_writes(namespace: &str, since: Timestamp) -> Vec<Value> {
    audit_events()
        .into_iter()
        .filter(|e| {
            e["objectRef"]["resource"] == "secrets"
                && e["objectRef"]["namespace"] == namespace
                && matches!(
                    e["verb"].as_str(),
                    Some("create" | "update" | "patch" | "delete")
                )
                && e["requestReceivedTimestamp"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .is_some_and(|t| t >= since)
        })
        .collect()
}

#[tokio::test]
async fn a_wrong_client_secret_writes_nothing_and_is_rate_limited() {
    let client = setup().await;
    let (ns, _) = installs(&client, "limits-secret", &["a", "b"]).await;
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let (other_id, other_secret) = credentials(&client, &ns.name, "b").await;
    let since = Timestamp::now();

    for attempt in 0..TOKEN_BURST_PER_CLIENT {
        let answer = login(&id, "not-the-secret").await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "try {attempt}: {answer:?}"
        );
        assert_eq!(answer.body["error"], "invalid_client");
    }
    // The burst is spent: the next tries are refused before the secret is looked at, the
    // right secret too.
    for wrong_or_right in ["not-the-secret", secret.as_str()] {
        let answer = login(&id, wrong_or_right).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
        let wait: u64 = answer.headers["retry-after"]
            .to_str()
            .expect("text")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        assert_eq!(answer.body["error"], "temporarily_unavailable");
    }
    // Another client has its own budget.
    let answer = login(&other_id, &other_secret).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");

    // Nothing was written for the wrong secrets; the one login of b wrote its refresh token
    // (which shows that the audit log sees such writes).
    let writes = wait_until("b's refresh token in the audit log", DEADLINE, || async {
        let writes = secret_writes(&ns.name, since);
        if writes
            .iter()
            .any(|e| e["objectRef"]["name"] == "b-credentials")
        {
            Ok(writes)
        } else {
            Err(format!("{writes:?}"))
        }
    })
    .await;
    let names: Vec<&str> = writes
        .iter()
        .filter_map(|e| e["objectRef"]["name"].as_str())
        .collect();
    assert_eq!(names, ["b-credentials"], "{writes:?}");
}

#[tokio::test]
async fn the_access_log_and_the_metrics_show_each_route_and_no_token() {
    let client = setup().await;
    let (ns, installs) = installs(&client, "limits-log", &["a"]).await;
    let install_id = installs[0].metadata.uid.clone().expect("uid");
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let before = metrics(operator()).await;

    let answer = login(&id, &secret).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let access = text(&answer, "access_token");
    let refresh_token = text(&answer, "refresh_token");
    let answer = call(
        Method::POST,
        "/api/v2/plugin-services/storage",
        Auth::Bearer(&access),
        Some(json!({"commands": [{"action": "set", "key": "k", "value": 1}]})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = call(
        Method::GET,
        &format!("/api/v2/plugin-services/installs/{install_id}/config"),
        Auth::Bearer(&access),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = call(
        Method::GET,
        &format!("/api/v2/plugin-services/installs/{install_id}/config"),
        Auth::Bearer("not-a-token"),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");

    // Metrics: by route template (the install's id is not a label), method and status.
    let after = metrics(operator()).await;
    for (series_name, at_least) in [
        (
            r#"plugin_operator_http_requests_total{route="/a/auth/v0/token",method="POST",status="200"}"#,
            1.0,
        ),
        (
            r#"plugin_operator_http_requests_total{route="/api/v2/plugin-services/storage",method="POST",status="200"}"#,
            1.0,
        ),
        (
            r#"plugin_operator_http_requests_total{route="/api/v2/plugin-services/installs/{installId}/config",method="GET",status="200"}"#,
            1.0,
        ),
        (
            r#"plugin_operator_http_requests_total{route="/api/v2/plugin-services/installs/{installId}/config",method="GET",status="401"}"#,
            1.0,
        ),
        (
            r#"plugin_operator_http_request_duration_seconds_count{route="/api/v2/plugin-services/storage",method="POST"}"#,
            1.0,
        ),
    ] {
        let grew = series(&after, series_name) - series(&before, series_name);
        assert!(grew >= at_least, "{series_name} grew by {grew}:\n{after}");
    }
    assert!(!after.contains(&install_id), "an id in a label");

    // The access log: one line per request, naming the route template and the caller.
    let plugin_user = format!("system:serviceaccount:{}:a", ns.name);
    let wanted = [
        ("POST", "/a/auth/v0/token", "200", id.as_str()),
        (
            "POST",
            "/api/v2/plugin-services/storage",
            "200",
            plugin_user.as_str(),
        ),
        (
            "GET",
            "/api/v2/plugin-services/installs/{installId}/config",
            "200",
            plugin_user.as_str(),
        ),
    ];
    let log = wait_until("the access log lines", DEADLINE, || async {
        let log = std::fs::read_to_string(&operator().log_path).map_err(|e| e.to_string())?;
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(method, route, status, user)| {
                !log.lines().any(|l| {
                    l.contains("plugin_operator::access")
                        && l.contains(&format!("method={method} "))
                        && l.contains(&format!("route={route} "))
                        && l.contains(&format!("status={status} "))
                        && l.contains(&format!("user={user} "))
                })
            })
            .collect();
        if missing.is_empty() {
            Ok(log)
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    assert!(
        !log.contains(&format!("/api/v2/plugin-services/installs/{install_id}")),
        "a path with an id is in the log"
    );
    for issued in [&access, &refresh_token, &secret] {
        assert!(issued.len() >= 20);
        assert!(
            !log.contains(issued.as_str()),
            "a token or secret is in the log"
        );
    }
}

#[tokio::test]
async fn a_refresh_token_beyond_the_cap_revokes_the_oldest() {
    let client = setup().await;
    let (ns, _) = installs(&client, "limits-cap", &["a"]).await;
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let mut refresh_tokens = Vec::new();
    for _ in 0..=MAX_REFRESH_TOKENS {
        let answer = login(&id, &secret).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        refresh_tokens.push(text(&answer, "refresh_token"));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let stored = secrets.get("a-credentials").await.expect("secret");
    let records: serde_json::Map<String, Value> =
        serde_json::from_slice(&stored.data.expect("data")["refresh_tokens"].0).expect("json");
    assert_eq!(records.len(), MAX_REFRESH_TOKENS, "{records:?}");

    // The oldest was revoked; the newest works (and is spent by it).
    let answer = refresh(&id, &secret, &refresh_tokens[0]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    assert_eq!(answer.body["error"], "invalid_grant");
    let answer = refresh(&id, &secret, &refresh_tokens[MAX_REFRESH_TOKENS]).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = refresh(&id, &secret, &refresh_tokens[1]).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the second oldest is kept: {answer:?}"
    );
}

#[tokio::test]
async fn a_settled_job_is_deleted_after_its_time_to_live() {
    let client = setup().await;
    let (ns, installs) = installs(&client, "limits-jobs", &["a"]).await;
    let install_id = installs[0].metadata.uid.clone().expect("uid");
    let (id, secret) = credentials(&client, &ns.name, "a").await;
    let answer = login(&id, &secret).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let token = text(&answer, "access_token");

    let mut ids = Vec::new();
    for ttl in [json!(2), Value::Null] {
        let answer = call(
            Method::POST,
            "/api/v2/plugin-services/jobs",
            Auth::Bearer(&token),
            Some(
                json!({"install_id": install_id, "name": "sync", "identifier": "x",
                        "ttl_seconds_after_finished": ttl}),
            ),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        ids.push(answer.body["data"]["id"].as_str().expect("id").to_owned());
    }
    let jobs: Api<PluginJob> = Api::namespaced(client.clone(), &ns.name);
    let by_uid = |uid: &str, list: &[PluginJob]| {
        list.iter()
            .find(|j| j.metadata.uid.as_deref() == Some(uid))
            .cloned()
    };
    let listed = jobs.list(&Default::default()).await.expect("list").items;
    let short = by_uid(&ids[0], &listed).expect("the short-lived job");
    assert_eq!(short.spec.ttl_seconds_after_finished, Some(2));
    let stored: Value = serde_json::to_value(by_uid(&ids[1], &listed).expect("job")).expect("json");
    assert!(
        stored["spec"].get("ttlSecondsAfterFinished").is_none(),
        "omitted when not given: {stored}"
    );
    // Pending, it stays, whatever its time to live.
    for id in &ids {
        let answer = call(
            Method::PATCH,
            &format!("/api/v2/plugin-services/jobs/{id}"),
            Auth::Bearer(&token),
            Some(json!({"status": "done", "status_message": "synced"})),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let settled = jobs
        .get(&short.name_any())
        .await
        .expect("still there just after");
    assert!(settled.status.and_then(|s| s.settled_at).is_some());

    wait_until(
        "the settled job with a TTL of 2 s to be deleted",
        DEADLINE,
        || async {
            let listed = jobs
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            match by_uid(&ids[0], &listed) {
                None => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        },
    )
    .await;
    // The one under the default time to live (an hour here) is kept.
    let listed = jobs.list(&Default::default()).await.expect("list").items;
    assert!(by_uid(&ids[1], &listed).is_some(), "{listed:?}");
}

#[tokio::test]
async fn two_operators_with_different_lease_names_both_lead() {
    let client = setup().await;
    let ns = namespace(&client, "limits-lease").await;
    let scope = format!("--namespace={}", ns.name);
    let lease_namespace = format!("--lease-namespace={}", ns.name);
    let first = spawn_operator(&[&scope, &lease_namespace, "--lease-name=release-one-leader"]);
    let second = spawn_operator(&[&scope, &lease_namespace, "--lease-name=release-two-leader"]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    for (name, operator) in [
        ("release-one-leader", &first),
        ("release-two-leader", &second),
    ] {
        wait_until(
            &format!("{name} held by {}", operator.identity),
            DEADLINE,
            || async {
                let lease = leases.get_opt(name).await.map_err(|e| e.to_string())?;
                let holder = lease
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                if holder == operator.identity {
                    Ok(())
                } else {
                    Err(format!("held by {holder:?}"))
                }
            },
        )
        .await;
    }
    // Neither took the default Lease.
    assert!(
        leases
            .get_opt(plugin_operator::runtime::leader::LEASE_NAME)
            .await
            .expect("get")
            .is_none()
    );
}
