//! The CEL rules of the CRDs, evaluated in process (kube-cel) so that a rule's edge cases are
//! tested in milliseconds; `tests/crds.rs` proves each rule on the real API server.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::{Plugin, PluginVersion};

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).expect("the schema serializes")
}

/// The messages of the rules that fail for `object` (updated from `old`, when given).
fn failures<K: CustomResourceExt>(object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube_cel::Validator::new().validate(&schema_of::<K>(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn version(attribution: &str, image: &str) -> Value {
    json!({
        "apiVersion": "plugin-operator.dev/v1alpha1",
        "kind": "PluginVersion",
        "metadata": {"name": "billing-1.4.0", "namespace": "tenant-a"},
        "spec": {
            "plugin": "billing",
            "version": "1.4.0",
            "attribution": attribution,
            "execution": {"type": "Container", "image": image},
            "configSchema": {"type": "object"},
        }
    })
}

fn plugin(connection: Value) -> Value {
    json!({
        "apiVersion": "plugin-operator.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": "billing", "namespace": "tenant-a"},
        "spec": {"connection": connection}
    })
}

#[test]
fn an_edited_formal_version_is_refused() {
    let old = version("formal", "billing:1.4.0");
    let new = version("formal", "billing:1.4.1");
    let errors = failures::<PluginVersion>(&new, Some(&old));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("the spec of a formal PluginVersion is immutable"),
        "{errors:?}"
    );
}

#[test]
fn a_formal_version_cannot_become_a_draft() {
    let old = version("formal", "billing:1.4.0");
    let new = version("draft", "billing:1.4.0");
    assert_eq!(failures::<PluginVersion>(&new, Some(&old)).len(), 1);
}

#[test]
fn an_unchanged_formal_version_and_its_metadata_may_be_updated() {
    let old = version("formal", "billing:1.4.0");
    let mut new = old.clone();
    new["metadata"]["labels"] = json!({"team": "payments"});
    assert_eq!(
        failures::<PluginVersion>(&new, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn a_draft_may_be_edited_and_released() {
    let old = version("draft", "billing:1.4.0");
    let edited = version("draft", "billing:1.4.1");
    assert_eq!(
        failures::<PluginVersion>(&edited, Some(&old)),
        Vec::<String>::new()
    );
    let released = version("formal", "billing:1.4.1");
    assert_eq!(
        failures::<PluginVersion>(&released, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn a_new_formal_version_is_accepted() {
    assert_eq!(
        failures::<PluginVersion>(&version("formal", "billing:1.4.0"), None),
        Vec::<String>::new()
    );
}

#[test]
fn a_formal_version_without_attribution_defaults_to_formal_and_is_immutable() {
    let mut old = version("formal", "billing:1.4.0");
    old["spec"]
        .as_object_mut()
        .map(|spec| spec.remove("attribution"));
    let mut new = old.clone();
    new["spec"]["description"] = json!("changed");
    assert_eq!(failures::<PluginVersion>(&new, Some(&old)).len(), 1);
}

#[test]
fn a_container_execution_needs_an_image() {
    let mut object = version("draft", "");
    let errors = failures::<PluginVersion>(&object, None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("execution.image is required"),
        "{errors:?}"
    );
    object["spec"]["execution"] = json!({"type": "Shell"});
    assert_eq!(
        failures::<PluginVersion>(&object, None),
        Vec::<String>::new()
    );
}

#[test]
fn an_external_plugin_needs_an_endpoint() {
    let errors = failures::<Plugin>(&plugin(json!({"mode": "external"})), None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("connection.endpoint is required when connection.mode is external"),
        "{errors:?}"
    );
    let empty = plugin(json!({"mode": "external", "endpoint": ""}));
    assert_eq!(failures::<Plugin>(&empty, None).len(), 1);
    let ok = plugin(json!({"mode": "external", "endpoint": "https://billing.example.com"}));
    assert_eq!(failures::<Plugin>(&ok, None), Vec::<String>::new());
}

#[test]
fn a_supervised_plugin_needs_no_endpoint() {
    assert_eq!(
        failures::<Plugin>(&plugin(json!({"mode": "supervised"})), None),
        Vec::<String>::new()
    );
    let defaulted = json!({
        "apiVersion": "plugin-operator.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": "billing", "namespace": "tenant-a"},
        "spec": {}
    });
    assert_eq!(failures::<Plugin>(&defaulted, None), Vec::<String>::new());
}
