//! End-to-end tests of the local control plane's API server itself (`just cluster-up`): the
//! behaviour our locally built release must share with a released one.
use std::time::Duration;

use devtools::testkit::{TestNamespace, client, wait_until};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// Long enough for a busy machine; a CRD is normally served within a second.
const DEADLINE: Duration = Duration::from_secs(30);
const KIND: &str = "Probe";
const PLURAL: &str = "probes";
const MANAGER: &str = "devtools-apiserver-test";

/// A CRD made for one test (CRDs are cluster-scoped, so the test namespace does not take it
/// along), deleted when the guard drops, with the objects of its kind.
struct TestCrd {
    name: String,
}

impl Drop for TestCrd {
    fn drop(&mut self) {
        // As in `TestNamespace`: the test's runtime is gone or blocked here, so delete from a
        // thread of our own with a client of its own.
        let name = self.name.clone();
        let deleter = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let api: Api<CustomResourceDefinition> = Api::all(client().await);
                let params = DeleteParams::background();
                let delete = api.delete(&name, &params);
                let _ = tokio::time::timeout(Duration::from_secs(10), delete).await;
            });
        });
        let _ = deleter.join();
    }
}

/// Creates a namespaced `Probe` kind in group `<group>` with a status subresource: typed strings
/// in a map, in objects in a list and directly in a list, plus free-form fields, in both spec
/// and status. Returns once the API server serves it.
async fn create_probe_crd(client: &Client, group: &str, ns: &str) -> (TestCrd, ApiResource) {
    let string = json!({"type": "string"});
    let free = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let string_map = json!({"type": "object", "additionalProperties": string});
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{PLURAL}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "probe", "listKind": "ProbeList"},
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {
                            "labels": string_map,
                            "entries": {"type": "array", "items": {
                                "type": "object",
                                "properties": {"name": string, "value": string},
                            }},
                            "tags": {"type": "array", "items": string},
                            "free": free,
                        }},
                        "status": {"type": "object", "properties": {
                            "conditions": {"type": "array", "items": {
                                "type": "object",
                                "properties": {
                                    "type": string, "status": string,
                                    "reason": string, "message": string,
                                },
                            }},
                            "details": string_map,
                            "free": free,
                        }},
                    },
                }},
            }],
        },
    }))
    .expect("the CRD is well-formed");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create the test CRD");
    let guard = TestCrd {
        name: format!("{PLURAL}.{group}"),
    };

    let resource = ApiResource {
        group: group.to_string(),
        version: "v1".to_string(),
        api_version: format!("{group}/v1"),
        kind: KIND.to_string(),
        plural: PLURAL.to_string(),
    };
    let probes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    wait_until("the test CRD to be served", DEADLINE, || async {
        probes
            .list(&Default::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    (guard, resource)
}

/// What went wrong with one write: refused, or a "" not stored as "".
async fn check_write(
    probes: &Api<DynamicObject>,
    what: &str,
    name: &str,
    written: kube::Result<DynamicObject>,
    empty: &[&str],
) -> Vec<String> {
    match written {
        Ok(_) => {}
        Err(kube::Error::Api(status)) => {
            return vec![format!("{what}: refused: {}", status.message)];
        }
        Err(err) => return vec![format!("{what}: {err}")],
    }
    let stored = match probes.get(name).await {
        Ok(object) => serde_json::to_value(object).expect("an object serializes"),
        Err(err) => return vec![format!("{what}: reading {name} back: {err}")],
    };
    empty
        .iter()
        .filter_map(|pointer| match stored.pointer(pointer) {
            Some(Value::String(s)) if s.is_empty() => None,
            other => Some(format!("{what}: {pointer} stored as {other:?}, want \"\"")),
        })
        .collect()
}

/// kubernetes#99804: an API server whose kube-openapi predates the fix (1.20 built with
/// Go >= 1.16) takes every "" in a custom resource for null and refuses it where the schema says
/// `type: string`. The operator writes such strings; this fails on a server that has the bug.
#[tokio::test]
async fn empty_strings_in_custom_resources_are_stored_as_empty_strings() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "apiserver").await;
    let group = format!("{}.devtools.test", ns.name);
    let (_crd, resource) = create_probe_crd(&client, &group, &ns.name).await;
    let probes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &resource);
    let object = |name: &str, body: Value| DynamicObject::new(name, &resource).data(body);
    let mut problems = Vec::new();

    // CREATE with empty strings nested in a map, in list items and in free-form fields.
    let created = probes
        .create(
            &PostParams::default(),
            &object(
                "created",
                json!({"spec": {
                    "labels": {"a": ""},
                    "entries": [{"name": "e", "value": ""}],
                    "tags": [""],
                    "free": {"nested": {"s": ""}},
                }}),
            ),
        )
        .await;
    let empty = [
        "/spec/labels/a",
        "/spec/entries/0/value",
        "/spec/tags/0",
        "/spec/free/nested/s",
    ];
    problems.extend(check_write(&probes, "create", "created", created, &empty).await);

    // The object the updates and patches change starts without any empty string.
    let name = "probe";
    let mut current = probes
        .create(
            &PostParams::default(),
            &object(
                name,
                json!({"spec": {
                    "labels": {"a": "x"},
                    "entries": [{"name": "e", "value": "x"}],
                    "tags": ["x"],
                    "free": {"nested": {"s": "x"}},
                }}),
            ),
        )
        .await
        .expect("create an object without empty strings");

    // UPDATE (PUT) of the object.
    current.data["spec"] = json!({
        "labels": {"a": "", "b": "x"},
        "entries": [{"name": "e", "value": ""}],
        "tags": ["", "x"],
        "free": {"nested": {"s": ""}, "list": ["", {"k": ""}]},
    });
    let replaced = probes.replace(name, &PostParams::default(), &current).await;
    let empty = [
        "/spec/labels/a",
        "/spec/entries/0/value",
        "/spec/tags/0",
        "/spec/free/nested/s",
        "/spec/free/list/0",
        "/spec/free/list/1/k",
    ];
    problems.extend(check_write(&probes, "update", name, replaced, &empty).await);

    // UPDATE (PUT) of the status subresource.
    let mut current = probes.get(name).await.expect("get the object");
    current.data["status"] = json!({
        "conditions": [{"type": "Ready", "status": "True", "reason": "", "message": ""}],
        "details": {"a": ""},
        "free": {"nested": {"s": ""}},
    });
    let replaced = probes
        .replace_status(name, &PostParams::default(), &current)
        .await;
    let empty = [
        "/status/conditions/0/reason",
        "/status/conditions/0/message",
        "/status/details/a",
        "/status/free/nested/s",
    ];
    problems.extend(check_write(&probes, "update status", name, replaced, &empty).await);

    // JSON merge PATCH of the object and of its status.
    let patch = Patch::Merge(json!({"spec": {
        "labels": {"merged": ""},
        "entries": [{"name": "m", "value": ""}],
    }}));
    let patched = probes.patch(name, &PatchParams::default(), &patch).await;
    let empty = ["/spec/labels/merged", "/spec/entries/0/value"];
    problems.extend(check_write(&probes, "merge patch", name, patched, &empty).await);

    let patch = Patch::Merge(json!({"status": {
        "conditions": [{"type": "Merged", "status": "False", "reason": "", "message": ""}],
        "details": {"merged": ""},
    }}));
    let patched = probes
        .patch_status(name, &PatchParams::default(), &patch)
        .await;
    let empty = [
        "/status/conditions/0/reason",
        "/status/conditions/0/message",
        "/status/details/merged",
    ];
    problems.extend(check_write(&probes, "merge patch status", name, patched, &empty).await);

    // Server-side apply of the object and of its status.
    let apply = PatchParams::apply(MANAGER).force();
    let patch = Patch::Apply(object(
        name,
        json!({"spec": {"labels": {"applied": ""}, "tags": [""]}}),
    ));
    let applied = probes.patch(name, &apply, &patch).await;
    let empty = ["/spec/labels/applied", "/spec/tags/0"];
    problems.extend(check_write(&probes, "apply", name, applied, &empty).await);

    let patch = Patch::Apply(object(
        name,
        json!({"status": {
            "conditions": [{"type": "Applied", "status": "True", "reason": "", "message": ""}],
            "details": {"applied": ""},
        }}),
    ));
    let applied = probes.patch_status(name, &apply, &patch).await;
    let empty = [
        "/status/conditions/0/reason",
        "/status/conditions/0/message",
        "/status/details/applied",
    ];
    problems.extend(check_write(&probes, "apply status", name, applied, &empty).await);

    assert!(
        problems.is_empty(),
        "empty strings were refused or not kept (kubernetes#99804):\n{}",
        problems.join("\n")
    );
}
