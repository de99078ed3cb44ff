//! The CRDs on the API server (the local control plane, `just cluster-up`): it takes them, fills
//! in their defaults and refuses what their schemas and CEL rules refuse. `crd_files.rs` checks
//! the files without a cluster.

use std::time::Duration;

use devtools::testkit::{self, TestNamespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use plugin_operator::resources::{
    self, ConnectionMode, Plugin, PluginAttribution, PluginInstall, PluginReference, PluginVersion,
    UpgradeMode, VersionAttribution,
};
use serde_json::{Value, json};

/// Applies the CRDs (as `just crds-install` does) and waits until they are established.
async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("plugin-operator-tests").force();
    for crd in resources::crds() {
        let name = crd.metadata.name.clone().expect("CRDs have names");
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .expect("the server takes the CRD");
        testkit::wait_until(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                    let established = conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    let non_structural = conditions
                        .iter()
                        .find(|c| c.type_ == "NonStructuralSchema" && c.status == "True");
                    if let Some(c) = non_structural {
                        panic!(
                            "{name} is not structural: {}",
                            c.message.as_deref().unwrap_or("")
                        );
                    }
                    if established {
                        Ok(())
                    } else {
                        Err(format!("{conditions:?}"))
                    }
                }
            },
        )
        .await;
    }
}

fn dynamic_api<K: Resource<DynamicType = ()>>(
    client: &Client,
    ns: &str,
) -> (Api<DynamicObject>, ApiResource) {
    let ar = ApiResource::erase::<K>(&());
    (Api::namespaced_with(client.clone(), ns, &ar), ar)
}

/// Creates an object from raw JSON (as `kubectl apply` would, without any client-side
/// defaults), returning the server's error message when it refuses it.
async fn create_raw<K: Resource<DynamicType = ()>>(
    client: &Client,
    ns: &str,
    name: &str,
    body: Value,
) -> Result<(), String> {
    let (api, ar) = dynamic_api::<K>(client, ns);
    let object = DynamicObject::new(name, &ar).data(body);
    api.create(&PostParams::default(), &object)
        .await
        .map(drop)
        .map_err(|err| match err {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })
}

async fn patch_raw<K: Resource<DynamicType = ()>>(
    client: &Client,
    ns: &str,
    name: &str,
    patch: Value,
) -> Result<(), String> {
    let (api, _) = dynamic_api::<K>(client, ns);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|err| match err {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })
}

#[tokio::test]
async fn the_api_server_takes_the_crds_applies_defaults_and_refuses_bad_objects() {
    let client = testkit::client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds").await;
    let ns = ns.name.as_str();

    // Defaults are filled in by the API server.
    create_raw::<Plugin>(
        &client,
        ns,
        "billing",
        json!({"spec": {"type": "OplogProcessor"}}),
    )
    .await
    .expect("a minimal Plugin");
    let plugin = Api::<Plugin>::namespaced(client.clone(), ns)
        .get("billing")
        .await
        .expect("get");
    assert_eq!(plugin.spec.attribution, PluginAttribution::Custom);
    assert_eq!(plugin.spec.connection.mode, ConnectionMode::Supervised);

    create_raw::<PluginVersion>(
        &client,
        ns,
        "billing-1.4.0",
        json!({"spec": {
            "plugin": "billing",
            "version": "1.4.0",
            "execution": {"image": "billing:1.4.0"},
            "configSchema": {"type": "object", "properties": {"url": {"type": "string"}}},
            "manifest": {"anything": ["goes", 1, {"deep": true}]},
        }}),
    )
    .await
    .expect("a minimal PluginVersion");
    let version = Api::<PluginVersion>::namespaced(client.clone(), ns)
        .get("billing-1.4.0")
        .await
        .expect("get");
    assert_eq!(version.spec.attribution, VersionAttribution::Formal);
    let execution = version.spec.execution.as_ref().expect("execution");
    assert_eq!(execution.port, 8080);
    assert_eq!(
        version.spec.manifest,
        Some(json!({"anything": ["goes", 1, {"deep": true}]})),
        "free-form fields are kept"
    );

    // `spec.plugin` of an install is a name or {name, namespace}.
    create_raw::<PluginInstall>(
        &client,
        ns,
        "by-name",
        json!({"spec": {"plugin": "billing", "config": {"url": "https://x", "n": {"a": [1]}}}}),
    )
    .await
    .expect("an install by name");
    create_raw::<PluginInstall>(
        &client,
        ns,
        "by-ref",
        json!({"spec": {"plugin": {"name": "billing", "namespace": "plugin-catalog"}, "version": "^1.3"}}),
    )
    .await
    .expect("an install by reference");
    let installs = Api::<PluginInstall>::namespaced(client.clone(), ns);
    let by_name = installs.get("by-name").await.expect("get");
    assert_eq!(by_name.spec.plugin, PluginReference::from("billing"));
    assert_eq!(by_name.spec.version, "*");
    assert_eq!(by_name.spec.upgrade_mode, UpgradeMode::Manual);
    assert!(by_name.spec.active);
    assert_eq!(by_name.spec.replicas, 1);
    assert_eq!(by_name.spec.progress_deadline_seconds, 300);
    assert_eq!(
        by_name.spec.config,
        Some(json!({"url": "https://x", "n": {"a": [1]}}))
    );
    let by_ref = installs.get("by-ref").await.expect("get");
    assert_eq!(by_ref.spec.plugin.name(), "billing");
    assert_eq!(by_ref.spec.plugin.namespace(), Some("plugin-catalog"));
    // The schema cannot refuse another shape; the object still reads, and the operator reports it.
    create_raw::<PluginInstall>(&client, ns, "by-number", json!({"spec": {"plugin": 7}}))
        .await
        .expect("the API server takes any plugin value");
    let by_number = installs
        .get("by-number")
        .await
        .expect("the install still parses");
    assert_eq!(by_number.spec.plugin, PluginReference::Invalid(json!(7)));
    let errors = resources::validate_install(&by_number.spec).expect_err("refused");
    assert_eq!(errors[0].field, "spec.plugin");

    // The status subresource merges conditions by type.
    let status = json!({"status": {"phase": "Active", "restarts": 1, "conditions": [{
        "type": "Ready", "status": "True", "reason": "Active", "message": "up",
        "lastTransitionTime": "2025-01-01T00:00:00Z"}]}});
    installs
        .patch_status(
            "by-name",
            &PatchParams::apply("plugin-operator-tests"),
            &Patch::Apply(&json!({
                "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
                "status": status["status"].clone(),
            })),
        )
        .await
        .expect("status applies");
    let by_name = installs.get("by-name").await.expect("get");
    let status = by_name.status.expect("status");
    assert_eq!(status.phase, Some(resources::Phase::Active));
    assert_eq!(status.conditions.len(), 1);

    // What the schema refuses, with the field named.
    let refused = [
        create_raw::<Plugin>(&client, ns, "bad-plugin", json!({"spec": {"attribution": "mine"}})).await,
        create_raw::<Plugin>(
            &client,
            ns,
            "bad-endpoint",
            json!({"spec": {"connection": {"mode": "external", "endpoint": "ftp://x"}}}),
        )
        .await,
        create_raw::<PluginVersion>(
            &client,
            ns,
            "bad-version",
            json!({"spec": {"plugin": "billing", "version": "1.4", "execution": {"port": 0, "image": "x"}}}),
        )
        .await,
        create_raw::<PluginInstall>(
            &client,
            ns,
            "bad-install",
            json!({"spec": {"plugin": "billing", "replicas": -1, "upgradeMode": "auto"}}),
        )
        .await,
    ];
    let expected = [
        &["spec.attribution"][..],
        &["spec.connection.endpoint"],
        &["spec.version", "spec.execution.port"],
        &["spec.replicas", "spec.upgradeMode"],
    ];
    for (result, fields) in refused.iter().zip(expected) {
        let message = result.as_ref().expect_err("refused");
        for field in fields {
            assert!(message.contains(field), "{field} not named in: {message}");
        }
    }
}

/// Creates the CRDs and a namespace for a test of one CEL rule, which the API server evaluates.
async fn cel_namespace(prefix: &str) -> (Client, TestNamespace) {
    let client = testkit::client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, prefix).await;
    (client, ns)
}

#[tokio::test]
async fn cel_rule_an_external_plugin_needs_an_endpoint() {
    let (client, ns) = cel_namespace("cel-endpoint").await;
    let ns = ns.name.as_str();
    let refused = create_raw::<Plugin>(
        &client,
        ns,
        "external",
        json!({"spec": {"connection": {"mode": "external"}}}),
    )
    .await
    .expect_err("an external plugin needs an endpoint");
    assert!(
        refused.contains("spec.connection")
            && refused.contains("connection.endpoint is required when connection.mode is external"),
        "{refused}"
    );
    let empty = create_raw::<Plugin>(
        &client,
        ns,
        "external-empty",
        json!({"spec": {"connection": {"mode": "external", "endpoint": ""}}}),
    )
    .await
    .expect_err("an empty endpoint is no endpoint");
    assert!(empty.contains("connection.endpoint is required"), "{empty}");
    create_raw::<Plugin>(
        &client,
        ns,
        "external-ok",
        json!({"spec": {"connection": {"mode": "external", "endpoint": "https://plugins.example.com"}}}),
    )
    .await
    .expect("an external plugin with an endpoint");
    create_raw::<Plugin>(
        &client,
        ns,
        "supervised",
        json!({"spec": {"connection": {"mode": "supervised"}}}),
    )
    .await
    .expect("a supervised plugin needs no endpoint");
}

#[tokio::test]
async fn cel_rule_a_container_version_needs_an_image() {
    let (client, ns) = cel_namespace("cel-image").await;
    let ns = ns.name.as_str();
    let refused = create_raw::<PluginVersion>(
        &client,
        ns,
        "echo-1.0.0",
        json!({"spec": {"plugin": "echo", "version": "1.0.0", "execution": {"type": "Container"}}}),
    )
    .await
    .expect_err("a container needs an image");
    assert!(
        refused.contains("spec.execution")
            && refused.contains("execution.image is required when execution.type is Container"),
        "{refused}"
    );
    create_raw::<PluginVersion>(
        &client,
        ns,
        "echo-1.0.1",
        json!({"spec": {"plugin": "echo", "version": "1.0.1", "execution": {"type": "Zip"}}}),
    )
    .await
    .expect("a Zip version runs no image");
    create_raw::<PluginVersion>(
        &client,
        ns,
        "echo-1.0.2",
        json!({"spec": {"plugin": "echo", "version": "1.0.2", "execution": {"image": "echo:1.0.2"}}}),
    )
    .await
    .expect("a container with an image");
}

#[tokio::test]
async fn cel_rule_a_formal_version_spec_is_immutable() {
    let (client, ns) = cel_namespace("cel-immutable").await;
    let ns = ns.name.as_str();
    for (name, attribution) in [("echo-1.0.0", "formal"), ("echo-1.1.0-rc.1", "draft")] {
        let version = name.trim_start_matches("echo-");
        create_raw::<PluginVersion>(
            &client,
            ns,
            name,
            json!({"spec": {"plugin": "echo", "version": version, "attribution": attribution,
                            "execution": {"image": format!("echo:{version}")}}}),
        )
        .await
        .expect("created");
    }
    let refused = patch_raw::<PluginVersion>(
        &client,
        ns,
        "echo-1.0.0",
        json!({"spec": {"execution": {"image": "echo:tampered"}}}),
    )
    .await
    .expect_err("a formal version is immutable");
    assert!(
        refused.contains(
            "the spec of a formal PluginVersion is immutable: create a new PluginVersion instead"
        ),
        "{refused}"
    );
    let kept = Api::<PluginVersion>::namespaced(client.clone(), ns)
        .get("echo-1.0.0")
        .await
        .expect("get");
    assert_eq!(
        kept.spec.execution.and_then(|e| e.image).as_deref(),
        Some("echo:1.0.0")
    );
    // A draft may change, and may be released by turning it formal; after that it is frozen.
    patch_raw::<PluginVersion>(
        &client,
        ns,
        "echo-1.1.0-rc.1",
        json!({"spec": {"execution": {"image": "echo:1.1.0-rc.1-fixed"}}}),
    )
    .await
    .expect("a draft can be edited");
    patch_raw::<PluginVersion>(
        &client,
        ns,
        "echo-1.1.0-rc.1",
        json!({"spec": {"attribution": "formal"}}),
    )
    .await
    .expect("a draft can be released");
    let frozen = patch_raw::<PluginVersion>(
        &client,
        ns,
        "echo-1.1.0-rc.1",
        json!({"spec": {"description": "changed after release"}}),
    )
    .await
    .expect_err("released means frozen");
    assert!(frozen.contains("immutable"), "{frozen}");
}
