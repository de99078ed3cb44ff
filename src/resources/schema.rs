//! Hand-written schema fragments for fields whose Rust type does not describe their CRD schema.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON object, kept as written (`x-kubernetes-preserve-unknown-fields`).
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list of `metav1.Condition`, merged by `type` (server-side apply keeps one entry per type).
pub(crate) fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}
