//! Safe to hand to tenants (SPEC §3, Safety): the operator never adopts an object it did not
//! create, uses a Secret for `configFrom` only with its consent, runs plugin pods that a
//! `restricted` namespace admits, and tenants get the plugin resources through the built-in
//! `view` and `edit` roles. (The operator run in namespace mode with the chart's RBAC is in
//! tests/tenancy_namespaces.rs: it needs a test binary without an all-namespace operator.)
mod support;

use std::process::Command;

use devtools::testkit::{self, wait_until};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
    events::v1::Event,
    rbac::v1::{ClusterRole, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use plugin_operator::resources::{
    Phase, PluginInstall,
    conditions::{CONFIG_VALID, READY, reason},
    names::consent,
};
use serde_json::{Value, json};
use support::*;

/// Name, resourceVersion, uid and owner references: what must not change on an object the
/// operator does not own.
fn fingerprint<K: kube::Resource>(object: &K) -> (String, Option<String>, Option<String>, usize) {
    (
        object.name_any(),
        object.resource_version(),
        object.uid(),
        object.owner_references().len(),
    )
}

async fn foreign_objects(client: &Client, namespace: &str, name: &str) -> Vec<Value> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let credentials = format!("{name}-credentials");
    let config = format!("{name}-config");
    let mut found = Vec::new();
    if let Some(o) = services.get_opt(name).await.expect("get Service") {
        found.push(json!(["Service", fingerprint(&o), o.spec]));
    }
    if let Some(o) = config_maps.get_opt(&config).await.expect("get ConfigMap") {
        found.push(json!(["ConfigMap", fingerprint(&o), o.data]));
    }
    if let Some(o) = accounts.get_opt(name).await.expect("get ServiceAccount") {
        found.push(json!([
            "ServiceAccount",
            fingerprint(&o),
            o.automount_service_account_token
        ]));
    }
    if let Some(o) = secrets.get_opt(&credentials).await.expect("get Secret") {
        found.push(json!(["Secret", fingerprint(&o), o.data]));
    }
    found
}

/// Events about `install` with this reason: (type, note).
async fn events_with_reason(
    client: &Client,
    namespace: &str,
    install: &str,
    reason: &str,
) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    api.list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(install))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

async fn wait_ready_reason(
    client: &Client,
    namespace: &str,
    name: &str,
    wanted: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let install = wait_install(client, namespace, name, &format!("Ready {wanted}"), |i| {
        condition(i, READY).is_some_and(|c| c.reason == wanted)
    })
    .await;
    condition(&install, READY).cloned().expect("Ready")
}

#[tokio::test]
async fn names_held_by_objects_the_install_does_not_own_are_left_alone() {
    let client = setup().await;
    let ns = namespace(&client, "ten-adopt").await;
    // What a user had before anyone installed a plugin named `victim`.
    let _: Service = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "victim"},
               "spec": {"selector": {"app": "victim"}, "ports": [{"name": "https", "port": 443}]}}),
    )
    .await;
    let _: ConfigMap = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "victim-config"},
               "data": {"own.key": "own value"}}),
    )
    .await;
    let _: ServiceAccount = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "victim"},
               "automountServiceAccountToken": true}),
    )
    .await;
    let _: Secret = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "victim-credentials"},
               "stringData": {"client_secret": "the user's own"}}),
    )
    .await;
    let before = foreign_objects(&client, &ns.name, "victim").await;
    assert_eq!(before.len(), 4);

    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "victim", json!({"plugin": "echo"})).await;

    let ready = wait_ready_reason(&client, &ns.name, "victim", reason::NAME_CONFLICT).await;
    assert_eq!(ready.status, "False");
    for object in ["Service", "ConfigMap", "ServiceAccount", "Secret"] {
        assert!(
            ready.message.contains(object),
            "{object}: {}",
            ready.message
        );
    }
    for name in ["/victim ", "/victim-config ", "/victim-credentials "] {
        assert!(ready.message.contains(name), "{name}: {}", ready.message);
    }
    // One Warning Event says so.
    let events = wait_until("a NameConflict Event", DEADLINE, || async {
        let events = events_with_reason(&client, &ns.name, "victim", reason::NAME_CONFLICT).await;
        if events.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(events)
        }
    })
    .await;
    assert_eq!(events[0].0, "Warning");
    assert!(events[0].1.contains("never adopts"), "{}", events[0].1);

    // Nothing was changed, and nothing was made under the install's name.
    assert_eq!(foreign_objects(&client, &ns.name, "victim").await, before);
    assert!(deployment(&client, &ns.name, "victim").await.is_none());
    // The operator made no write to any of them (the API server's audit log).
    let writes: Vec<Value> = audit_events()
        .into_iter()
        .filter(|e| e["objectRef"]["namespace"] == ns.name.as_str())
        .filter(|e| {
            matches!(
                e["objectRef"]["name"].as_str(),
                Some("victim" | "victim-config" | "victim-credentials")
            ) && e["objectRef"]["resource"] != "plugininstalls"
        })
        .filter(|e| matches!(e["verb"].as_str(), Some("patch" | "update" | "delete")))
        .collect();
    assert!(writes.is_empty(), "writes to foreign objects: {writes:?}");

    // The HTTP API does not take the foreign Secret for the install's credentials either.
    let login = reqwest::Client::new()
        .post(format!("http://{}/a/auth/v0/token", operator().api_addr))
        .basic_auth(format!("{}.victim", ns.name), Some("the user's own"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("the token route answers");
    assert_eq!(login.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);

    // Deleting the install leaves them.
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), &ns.name);
    installs
        .delete("victim", &DeleteParams::foreground())
        .await
        .expect("delete the install");
    wait_gone(&installs, "victim").await;
    assert_eq!(foreign_objects(&client, &ns.name, "victim").await, before);
}

#[tokio::test]
async fn an_install_stopped_by_a_name_conflict_starts_once_the_name_is_free() {
    let client = setup().await;
    let ns = namespace(&client, "ten-freed").await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let _: Service = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
               "spec": {"ports": [{"port": 443}]}}),
    )
    .await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo", json!({"plugin": "echo"})).await;
    let ready = wait_ready_reason(&client, &ns.name, "echo", reason::NAME_CONFLICT).await;
    assert!(
        ready
            .message
            .starts_with(&format!("Service {}/echo (no controller)", ns.name)),
        "{}",
        ready.message
    );
    // Only the Service was in the way: the credentials are the install's own.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    assert!(!ready.message.contains("Secret"), "{}", ready.message);

    services
        .delete("echo", &DeleteParams::default())
        .await
        .expect("free the name");
    wait_gone(&services, "echo").await;
    // The next retry (5 s, 10 s, … after the failures so far) finds the name free.
    let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    let service = services.get("echo").await.expect("the install's Service");
    assert_eq!(
        service.owner_references()[0].uid,
        active.uid().expect("uid"),
        "made by the install"
    );
    let credentials = secrets.get("echo-credentials").await.expect("credentials");
    assert_eq!(
        credentials.owner_references()[0].uid,
        active.uid().expect("uid")
    );
}

/// Touches an install so that it is reconciled now (a Secret's change is not watched).
async fn touch(client: &Client, namespace: &str, name: &str, value: &str) {
    patch_install(
        client,
        namespace,
        name,
        json!({"metadata": {"annotations": {"tests.plugin-operator.dev/touch": value}}}),
    )
    .await;
}

#[tokio::test]
async fn a_secret_is_used_by_config_from_only_with_its_consent() {
    let client = setup().await;
    let ns = namespace(&client, "ten-consent").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    // One Secret consents to the plugin's installs, one to no one.
    let _: Secret = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "shared", "annotations": {consent::PLUGINS_ANNOTATION: "echo"}},
               "stringData": {"apiKey": "s3cret"}}),
    )
    .await;
    let _: Secret = create(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "private"},
               "stringData": {"password": "not for plugins"}}),
    )
    .await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "configFrom": [{"name": "shared"}]}),
    )
    .await;
    let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    assert_eq!(
        condition(&active, CONFIG_VALID).map(|c| c.status.as_str()),
        Some("True")
    );
    let running = deployment(&client, &ns.name, "echo")
        .await
        .expect("a Deployment");
    let template = |d: &Deployment| {
        d.spec
            .as_ref()
            .map(|s| serde_json::to_value(&s.template).expect("template"))
    };
    let mounted = |d: &Deployment| -> Vec<String> {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.secret.and_then(|s| s.secret_name))
            .collect()
    };
    assert!(mounted(&running).contains(&"shared".to_owned()));

    // The install now asks for a Secret that did not consent: refused, naming the Secret and
    // the rule; the plugin runs on as it was.
    patch_install(
        &client,
        &ns.name,
        "echo",
        json!({"spec": {"configFrom": [{"name": "shared"}, {"name": "private"}]}}),
    )
    .await;
    let refused = wait_install(&client, &ns.name, "echo", "ConfigValid=False", |i| {
        condition(i, CONFIG_VALID).is_some_and(|c| c.status == "False")
    })
    .await;
    let config_valid = condition(&refused, CONFIG_VALID).expect("ConfigValid");
    assert_eq!(config_valid.reason, reason::SECRET_NOT_SHARED);
    assert!(
        config_valid.message.contains("spec.configFrom[1].name")
            && config_valid.message.contains("Secret private")
            && config_valid.message.contains(consent::INSTALLS_ANNOTATION)
            && config_valid.message.contains(consent::PLUGINS_ANNOTATION),
        "{}",
        config_valid.message
    );
    let after = deployment(&client, &ns.name, "echo")
        .await
        .expect("still a Deployment");
    assert_eq!(template(&after), template(&running), "last good config");
    assert!(!mounted(&after).contains(&"private".to_owned()));

    // The Secret's owner consents (to this install by name): the install uses it.
    secrets
        .patch(
            "private",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {consent::INSTALLS_ANNOTATION: "other, echo"}}}),
            ),
        )
        .await
        .expect("consent");
    touch(&client, &ns.name, "echo", "1").await;
    wait_install(&client, &ns.name, "echo", "ConfigValid=True", |i| {
        condition(i, CONFIG_VALID).is_some_and(|c| c.status == "True")
    })
    .await;
    wait_until("the private Secret mounted", DEADLINE, || async {
        let d = deployment(&client, &ns.name, "echo")
            .await
            .expect("a Deployment");
        let names = mounted(&d);
        if names.contains(&"private".to_owned()) {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
}

async fn restricted_namespace(client: &Client, prefix: &str) -> testkit::TestNamespace {
    let ns = namespace(client, prefix).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"
            }}})),
        )
        .await
        .expect("label the namespace");
    ns
}

#[tokio::test]
async fn plugins_reach_active_in_a_restricted_namespace() {
    let client = setup().await;
    let ns = restricted_namespace(&client, "ten-restricted").await;
    // The namespace really is restricted: a pod with no security context is refused.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    let plain: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/plain:1"}]}
    }))
    .expect("a pod");
    let refused = pods
        .create(&PostParams::default(), &plain)
        .await
        .expect_err("a pod without a security context is refused");
    assert!(refused.to_string().contains("restricted"), "{refused}");

    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(&client, &ns.name, "echo", json!({"plugin": "echo"})).await;
    // An install that loosens what `restricted` allows to loosen (a writable root filesystem).
    install(
        &client,
        &ns.name,
        "writable",
        json!({"plugin": "echo",
               "runtime": {"securityContext": {"readOnlyRootFilesystem": false}}}),
    )
    .await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    wait_phase(&client, &ns.name, "writable", Phase::Active).await;

    let pod = pods_of(&client, &ns.name, "echo")
        .await
        .into_iter()
        .next()
        .expect("a pod");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.automount_service_account_token, Some(false));
    let security = spec.containers[0]
        .security_context
        .clone()
        .expect("security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let writable = pods_of(&client, &ns.name, "writable")
        .await
        .into_iter()
        .next()
        .expect("a pod")
        .spec
        .expect("spec");
    let security = writable.containers[0]
        .security_context
        .clone()
        .expect("security context");
    assert_eq!(security.read_only_root_filesystem, Some(false));
    assert_eq!(security.run_as_non_root, Some(true));
}

/// The chart's ClusterRoles for tenants (those aggregated to view, edit and admin), applied
/// from `helm template`.
fn chart_tenant_roles() -> Vec<ClusterRole> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let helm = Command::new(root.join("devtools/scripts/deploy-tools.sh"))
        .arg("helm")
        .output()
        .expect("deploy-tools.sh helm");
    assert!(helm.status.success(), "{helm:?}");
    let helm = String::from_utf8_lossy(&helm.stdout).trim().to_owned();
    let out = Command::new(helm)
        .args([
            "template",
            "plugin-operator",
            "charts/plugin-operator",
            "--namespace",
            "plugin-operator",
            "--kube-version",
            "1.33.0",
        ])
        .current_dir(root)
        .output()
        .expect("helm template");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|v| v["kind"] == "ClusterRole")
        .filter(|v| {
            v["metadata"]["labels"].as_object().is_some_and(|l| {
                l.keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            })
        })
        .map(|v| serde_json::from_value(v).expect("a ClusterRole"))
        .collect()
}

use serde::Deserialize;

/// A client that acts as `user` (impersonation by the admin).
async fn as_user(user: &str) -> Client {
    let kubeconfig =
        Kubeconfig::read_from(testkit::local_kubeconfig_path()).expect("admin kubeconfig");
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("config");
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).expect("client")
}

async fn bind(client: &Client, namespace: &str, role: &str, user: &str) {
    let _: RoleBinding = create(
        client,
        namespace,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("{user}-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }),
    )
    .await;
}

#[tokio::test]
async fn tenants_bound_to_edit_install_plugins_and_view_reads_them() {
    let client = setup().await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let tenant_roles = chart_tenant_roles();
    assert_eq!(tenant_roles.len(), 2, "view and edit");
    for role in &tenant_roles {
        roles
            .patch(
                &role.name_any(),
                &PatchParams::apply("plugin-operator-tests").force(),
                &Patch::Apply(role),
            )
            .await
            .expect("apply the chart's tenant ClusterRole");
    }
    let ns = namespace(&client, "ten-rbac").await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    bind(&client, &ns.name, "edit", "alice").await;
    bind(&client, &ns.name, "view", "bob").await;
    let alice: Api<PluginInstall> = Api::namespaced(as_user("alice").await, &ns.name);
    let bob: Api<PluginInstall> = Api::namespaced(as_user("bob").await, &ns.name);
    let object: PluginInstall = serde_json::from_value(json!({
        "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
        "metadata": {"name": "by-alice"}, "spec": {"plugin": "echo"}
    }))
    .expect("an install");
    // The aggregation controller adds the rules to `edit` within moments.
    wait_until("alice (edit) creates an install", DEADLINE, || async {
        alice
            .create(&PostParams::default(), &object)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    wait_phase(&client, &ns.name, "by-alice", Phase::Active).await;
    // bob (view) reads it, with its status, and cannot change or delete it, nor create one.
    let seen = bob.get("by-alice").await.expect("bob reads the install");
    assert_eq!(phase_of(&seen), Some(Phase::Active));
    assert_eq!(
        bob.list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let mut other = object.clone();
    other.metadata.name = Some("by-bob".into());
    let denied = bob
        .create(&PostParams::default(), &other)
        .await
        .expect_err("view cannot create");
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    let denied = bob
        .delete("by-alice", &DeleteParams::default())
        .await
        .expect_err("view cannot delete");
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    // alice cannot write the status the operator owns.
    let status = json!({"status": {"phase": "Active"}});
    let denied = alice
        .patch_status("by-alice", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect_err("edit cannot write status");
    assert!(denied.to_string().contains("forbidden"), "{denied}");
}
