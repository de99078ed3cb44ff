//! The install lifecycle of SPEC §3, end to end against the local control plane: every state and
//! transition reached through the node simulator's knobs, one namespace per test.
mod support;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service, ServiceAccount},
};
use kube::{Api, Resource, api::DeleteParams};
use plugin_operator::resources::{Phase, PluginInstall};
use serde_json::json;
use support::*;

#[tokio::test]
async fn starting_connecting_active() {
    let client = setup().await;
    let ns = namespace(&client, "life-start").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "slow:12").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "version": "^1"}),
    )
    .await;

    let rolling_out = wait_install(&client, &ns.name, "echo", "rolling out", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| s.target_version.is_some())
    })
    .await;
    assert_eq!(
        rolling_out
            .status
            .as_ref()
            .and_then(|s| s.target_version.as_deref()),
        Some("1.0.0")
    );
    let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    let status = active.status.expect("status");
    assert_eq!(status.version.as_deref(), Some("1.0.0"));
    assert_eq!(status.target_version, None);
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://echo.{}.svc:8080", ns.name).as_str())
    );
    assert!(status.activated_at.is_some());
    assert_eq!(status.observed_generation, Some(1));
    let ready = condition_status(&active_again(&client, &ns.name).await, "Ready");
    assert_eq!(ready.as_deref(), Some("True"));
    let history = &status.history;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].version, "1.0.0");

    let events = wait_events(&client, &ns.name, "echo", "Active announced", |e| {
        e.iter().any(|a| a == "Active")
    })
    .await;
    assert_eq!(
        events,
        ["Starting", "Connecting", "Active"],
        "one event per transition"
    );
}

async fn active_again(client: &kube::Client, ns: &str) -> PluginInstall {
    get_install(client, ns, "echo").await
}

fn condition_status(install: &PluginInstall, type_: &str) -> Option<String> {
    condition(install, type_).map(|c| c.status.clone())
}

#[tokio::test]
async fn children_are_owned_labelled_and_collected() {
    let client = setup().await;
    let ns = namespace(&client, "life-children").await;
    plugin(&client, &ns.name, "echo").await;
    version_with(
        &client,
        &ns.name,
        "echo",
        "1.0.0",
        "ready",
        json!({"execution": {"port": 9000, "stopCommand": ["/bin/stop"]}}),
    )
    .await;
    let created = install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "config": {"greeting": "hi"}}),
    )
    .await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    let uid = created.meta().uid.clone().expect("uid");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let deployment = deployments.get("echo").await.expect("deployment");
    let metas = [
        deployment.metadata.clone(),
        services.get("echo").await.expect("service").metadata,
        accounts
            .get("echo")
            .await
            .expect("service account")
            .metadata,
        config_maps
            .get("echo-config")
            .await
            .expect("config map")
            .metadata,
    ];
    for meta in &metas {
        let owner = &meta.owner_references.as_ref().expect("owner references")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("PluginInstall", uid.as_str(), Some(true))
        );
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("plugin-operator")
        );
        assert_eq!(
            labels.get("plugin-operator.dev/plugin").map(String::as_str),
            Some("echo")
        );
        assert_eq!(
            labels
                .get("plugin-operator.dev/install")
                .map(String::as_str),
            Some("echo")
        );
    }
    let config = config_maps.get("echo-config").await.expect("config map");
    assert!(config.data.expect("data")["config.json"].contains("\"greeting\": \"hi\""));
    let spec = deployment.spec.expect("deployment spec");
    let rolling = spec
        .strategy
        .and_then(|s| s.rolling_update)
        .expect("rolling update");
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    let container = &spec.template.spec.expect("pod spec").containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example.com/echo:1.0.0")
    );
    assert_eq!(
        container.ports.as_ref().expect("ports")[0].container_port,
        9000
    );
    let pre_stop = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref());
    assert_eq!(
        pre_stop.and_then(|e| e.command.clone()),
        Some(vec!["/bin/stop".to_owned()])
    );

    // Deleting the install lets the garbage collector remove every child.
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), &ns.name);
    installs
        .delete("echo", &DeleteParams::foreground())
        .await
        .expect("delete install");
    devtools::testkit::wait_until("children to be collected", DEADLINE, || {
        let (d, s, a, c) = (
            deployments.clone(),
            services.clone(),
            accounts.clone(),
            config_maps.clone(),
        );
        async move {
            let left = [
                d.get_opt("echo")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                s.get_opt("echo")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                a.get_opt("echo")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                c.get_opt("echo-config")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
            ];
            if left.iter().any(|l| *l) {
                Err(format!(
                    "still there (deployment, service, account, config): {left:?}"
                ))
            } else {
                Ok(())
            }
        }
    })
    .await;
}

#[tokio::test]
async fn active_restarting_active_after_a_crash() {
    let client = setup().await;
    let ns = namespace(&client, "life-crash").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo", json!({"plugin": "echo"})).await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;

    crash_pods(&client, &ns.name, "echo").await;
    let restarting = wait_install(&client, &ns.name, "echo", "a restart", |i| {
        i.status.as_ref().is_some_and(|s| s.restarts == 1)
    })
    .await;
    let failure = restarting
        .status
        .as_ref()
        .and_then(|s| s.last_failure.clone())
        .expect("lastFailure");
    assert!(
        ["PodUnready", "ContainerRestarted"].contains(&failure.reason.as_str()),
        "{failure:?}"
    );
    assert_eq!(failure.reported_by, "operator");
    let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    assert_eq!(active.status.as_ref().map(|s| s.restarts), Some(1));
    let events = wait_events(&client, &ns.name, "echo", "Active after Restarting", |e| {
        events_from(e, "Restarting").last() == Some(&"Active")
    })
    .await;
    assert_eq!(
        events_from(&events, "Restarting").first(),
        Some(&"Restarting"),
        "events: {events:?}"
    );
}

#[tokio::test]
async fn restarting_ends_in_error_when_the_restart_fails() {
    let client = setup().await;
    let ns = namespace(&client, "life-restart-fail").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo", json!({"plugin": "echo"})).await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;

    // Pods started from now on crash-loop: the one restart cannot succeed.
    sim_behavior(&client, &ns.name, "echo", "crash").await;
    crash_pods(&client, &ns.name, "echo").await;
    let error = wait_phase(&client, &ns.name, "echo", Phase::Error).await;
    let status = error.status.expect("status");
    assert_eq!(status.restarts, 1, "exactly one restart is attempted");
    assert_eq!(
        status.last_failure.map(|f| f.reason).as_deref(),
        Some("CrashLoop")
    );
    let events = wait_events(&client, &ns.name, "echo", "Error after Restarting", |e| {
        events_from(e, "Restarting").last() == Some(&"Error")
    })
    .await;
    assert_eq!(
        events_from(&events, "Restarting"),
        ["Restarting", "Error"],
        "events: {events:?}"
    );
}

#[tokio::test]
async fn connecting_that_never_turns_active_fails_at_the_deadline() {
    let client = setup().await;
    let ns = namespace(&client, "life-never").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "never-ready").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "progressDeadlineSeconds": 15}),
    )
    .await;
    let error = wait_phase(&client, &ns.name, "echo", Phase::Error).await;
    assert_eq!(
        error
            .status
            .and_then(|s| s.last_failure)
            .map(|f| f.reason)
            .as_deref(),
        Some("ProgressDeadlineExceeded")
    );
    let events = wait_events(&client, &ns.name, "echo", "Error announced", |e| {
        e.iter().any(|a| a == "Error")
    })
    .await;
    assert_eq!(
        events,
        ["Starting", "Connecting", "Error"],
        "it was Connecting until the deadline"
    );
}

#[tokio::test]
async fn pull_errors_and_crash_loops_are_errors_at_once() {
    let client = setup().await;
    let ns = namespace(&client, "life-fail").await;
    plugin(&client, &ns.name, "pull").await;
    version(&client, &ns.name, "pull", "1.0.0", "pull-error").await;
    plugin(&client, &ns.name, "crash").await;
    version(&client, &ns.name, "crash", "1.0.0", "crash").await;
    // A long deadline: these must fail as soon as the state is seen, not at the deadline.
    install(
        &client,
        &ns.name,
        "pull",
        json!({"plugin": "pull", "progressDeadlineSeconds": 600}),
    )
    .await;
    install(
        &client,
        &ns.name,
        "crash",
        json!({"plugin": "crash", "progressDeadlineSeconds": 600}),
    )
    .await;
    let pull = wait_phase(&client, &ns.name, "pull", Phase::Error).await;
    assert_eq!(
        pull.status
            .and_then(|s| s.last_failure)
            .map(|f| f.reason)
            .as_deref(),
        Some("ImagePullFailed")
    );
    let crash = wait_phase(&client, &ns.name, "crash", Phase::Error).await;
    let failure = crash
        .status
        .and_then(|s| s.last_failure)
        .expect("lastFailure");
    assert_eq!(failure.reason, "CrashLoop");
    assert!(
        failure.message.contains("CrashLoopBackOff"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn invalid_config_is_an_error_that_keeps_the_running_version() {
    let client = setup().await;
    let ns = namespace(&client, "life-config").await;
    plugin(&client, &ns.name, "echo").await;
    let schema = json!({"configSchema": {
        "type": "object", "required": ["url"],
        "properties": {"url": {"type": "string", "pattern": "^https://"}, "retries": {"type": "integer", "default": 3}}
    }});
    version_with(&client, &ns.name, "echo", "1.0.0", "ready", schema).await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "config": {"url": "https://ok.example"}}),
    )
    .await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    let before = deployment(&client, &ns.name, "echo")
        .await
        .expect("deployment");

    patch_install(
        &client,
        &ns.name,
        "echo",
        json!({"spec": {"config": {"url": "ftp://nope"}}}),
    )
    .await;
    let error = wait_phase(&client, &ns.name, "echo", Phase::Error).await;
    let valid = condition(&error, "ConfigValid").expect("ConfigValid");
    assert_eq!(valid.status, "False");
    assert!(
        valid.message.contains("spec.config.url"),
        "names the field: {}",
        valid.message
    );
    let after = deployment(&client, &ns.name, "echo")
        .await
        .expect("deployment still there");
    assert_eq!(
        before.metadata.generation, after.metadata.generation,
        "the running Deployment is untouched"
    );

    // Fixing the config ends the error.
    patch_install(
        &client,
        &ns.name,
        "echo",
        json!({"spec": {"config": {"url": "https://fixed.example"}}}),
    )
    .await;
    let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    assert_eq!(
        condition(&active, "ConfigValid").map(|c| c.status.as_str()),
        Some("True")
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let config = config_maps
        .get("echo-config")
        .await
        .expect("config map")
        .data
        .expect("data");
    assert!(
        config["config.json"].contains("\"retries\": 3"),
        "the schema's defaults fill in: {}",
        config["config.json"]
    );
}

#[tokio::test]
async fn an_unknown_version_is_an_error() {
    let client = setup().await;
    let ns = namespace(&client, "life-unknown").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(
        &client,
        &ns.name,
        "exact",
        json!({"plugin": "echo", "version": "2.0.0"}),
    )
    .await;
    install(
        &client,
        &ns.name,
        "range",
        json!({"plugin": "echo", "version": "^3"}),
    )
    .await;
    let exact = wait_phase(&client, &ns.name, "exact", Phase::Error).await;
    assert_eq!(
        exact
            .status
            .and_then(|s| s.last_failure)
            .map(|f| f.reason)
            .as_deref(),
        Some("VersionNotFound")
    );
    let range = wait_phase(&client, &ns.name, "range", Phase::Error).await;
    assert_eq!(
        range
            .status
            .and_then(|s| s.last_failure)
            .map(|f| f.reason)
            .as_deref(),
        Some("NoMatchingVersion")
    );
    assert!(deployment(&client, &ns.name, "exact").await.is_none());

    // The version appearing later ends the error.
    version(&client, &ns.name, "echo", "2.0.0", "ready").await;
    wait_phase(&client, &ns.name, "exact", Phase::Active).await;
}

#[tokio::test]
async fn inactive_and_back() {
    let client = setup().await;
    let ns = namespace(&client, "life-inactive").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo", json!({"plugin": "echo"})).await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;

    patch_install(
        &client,
        &ns.name,
        "echo",
        json!({"spec": {"active": false}}),
    )
    .await;
    let inactive = wait_phase(&client, &ns.name, "echo", Phase::Inactive).await;
    assert!(
        inactive
            .status
            .as_ref()
            .and_then(|s| s.deactivated_at.clone())
            .is_some()
    );
    devtools::testkit::wait_until("the Deployment to be removed", DEADLINE, || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            if deployment(&client, &ns, "echo").await.is_none() {
                Ok(())
            } else {
                Err("still there".into())
            }
        }
    })
    .await;

    patch_install(&client, &ns.name, "echo", json!({"spec": {"active": true}})).await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    assert!(deployment(&client, &ns.name, "echo").await.is_some());
}

#[tokio::test]
async fn an_external_install_is_active_once_its_endpoint_answers() {
    let client = setup().await;
    let ns = namespace(&client, "life-external").await;
    // An endpoint that does not answer yet: reserve a port, then serve on it later.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let endpoint = format!("http://{addr}/healthz");
    external_plugin(&client, &ns.name, "remote", &endpoint).await;
    install(&client, &ns.name, "remote", json!({"plugin": "remote"})).await;
    let connecting = wait_phase(&client, &ns.name, "remote", Phase::Connecting).await;
    assert_eq!(
        connecting.status.and_then(|s| s.endpoint).as_deref(),
        Some(endpoint.as_str())
    );

    let server = tokio::net::TcpListener::bind(addr)
        .await
        .expect("serve the endpoint");
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let serving = tokio::spawn(async move { axum::serve(server, app).await });
    wait_phase(&client, &ns.name, "remote", Phase::Active).await;
    assert!(
        deployment(&client, &ns.name, "remote").await.is_none(),
        "external installs run no Deployment"
    );
    serving.abort();
}

#[tokio::test]
async fn catalog_plugins_install_anywhere_other_namespaces_plugins_nowhere() {
    let client = setup().await;
    let catalog = operator().catalog_namespace.clone();
    let catalog_ns = ensure_namespace(&client, &catalog).await;
    let suffix = format!("{:x}", std::process::id());
    let shared = format!("shared-{suffix}");
    plugin(&client, &catalog_ns, &shared).await;
    version(&client, &catalog_ns, &shared, "1.0.0", "ready").await;

    let tenant = namespace(&client, "life-tenant").await;
    let other = namespace(&client, "life-other").await;
    plugin(&client, &other.name, "private").await;
    version(&client, &other.name, "private", "1.0.0", "ready").await;

    install(
        &client,
        &tenant.name,
        "from-catalog",
        json!({"plugin": {"name": shared, "namespace": catalog}}),
    )
    .await;
    install(
        &client,
        &tenant.name,
        "from-other",
        json!({"plugin": {"name": "private", "namespace": other.name}}),
    )
    .await;
    let ok = wait_phase(&client, &tenant.name, "from-catalog", Phase::Active).await;
    // The Plugin printer column reads status.plugin: namespace/name for a catalog Plugin.
    assert_eq!(
        ok.status.as_ref().and_then(|s| s.plugin.clone()),
        Some(format!("{catalog}/{shared}"))
    );
    assert_eq!(ok.status.and_then(|s| s.version).as_deref(), Some("1.0.0"));
    let refused = wait_phase(&client, &tenant.name, "from-other", Phase::Error).await;
    let failure = refused
        .status
        .and_then(|s| s.last_failure)
        .expect("lastFailure");
    assert_eq!(failure.reason, "PluginNotInstallable");
    assert!(
        failure.message.contains("spec.plugin"),
        "{}",
        failure.message
    );

    let plugins: Api<plugin_operator::resources::Plugin> =
        Api::namespaced(client.clone(), &catalog_ns);
    devtools::testkit::wait_until("the catalog plugin to count the install", DEADLINE, || {
        let plugins = plugins.clone();
        let shared = shared.clone();
        async move {
            let p = plugins.get(&shared).await.map_err(|e| e.to_string())?;
            match p.status.map(|s| s.installs) {
                Some(1) => Ok(()),
                other => Err(format!("installs: {other:?}")),
            }
        }
    })
    .await;
    let _ = plugins.delete(&shared, &DeleteParams::default()).await;
}

/// Creates a namespace that outlives the test (the shared catalog).
async fn ensure_namespace(client: &kube::Client, name: &str) -> String {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.expect("get namespace").is_none() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let _ = api
            .create(
                &Default::default(),
                &serde_json::from_value(ns).expect("namespace"),
            )
            .await;
    }
    ready_namespace(client, name).await;
    name.to_owned()
}
