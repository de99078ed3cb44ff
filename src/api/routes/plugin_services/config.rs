//! Answers seed 003: the install's config (`/api/v2/plugin-services/installs/{installId}/config`).

use axum::{
    Json,
    extract::{Request, State},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Map, Value, json};

use crate::{
    api::{
        ApiState,
        error::{ApiError, Issue},
        extract::json_object,
    },
    resources::{PluginInstall, names::FIELD_MANAGER, validate},
    runtime::call::with_timeout,
};

use super::{Data, ErrorBody, Result, ServiceCaller, kube_failed};

async fn fresh_install(state: &ApiState, install: &PluginInstall) -> Result<PluginInstall> {
    let api: Api<PluginInstall> = Api::namespaced(
        state.client().clone(),
        &install.namespace().unwrap_or_default(),
    );
    with_timeout(api.get(&install.name_any()))
        .await
        .map_err(kube_failed("get PluginInstall"))
}

fn config_of(install: &PluginInstall) -> Value {
    match &install.spec.config {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => Value::Object(Map::new()),
    }
}

/// The config the plugin runs with, as the ConfigMap holds it: `spec.config` with the
/// configSchema's defaults filled in (Secret values of `configFrom` are not in it).
fn effective_config(state: &ApiState, install: &PluginInstall) -> Value {
    let mut config = config_of(install);
    if let Some(schema) = config_schema(state, install) {
        validate::apply_config_defaults(&schema, &mut config);
    }
    config
}

/// Get the install's config.
///
/// The effective config: `spec.config` with the defaults of the running version's
/// configSchema (else the one being rolled out) filled in, as in the install's ConfigMap. A
/// plugin token of the install, or a Kubernetes token allowed to `get plugininstalls` on it.
#[utoipa::path(
    get,
    path = "/api/v2/plugin-services/installs/{installId}/config",
    tag = "seed 003",
    params(("installId" = String, Path, description = "The PluginInstall's metadata.uid")),
    responses(
        (status = 200, body = Object, description = "`{data: <config, schema defaults filled in>}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_config(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Data<Value>>> {
    let install = caller
        .install(&state, "installId", &id, "get", "plugininstalls")
        .await?;
    let install = fresh_install(&state, &install).await?;
    Ok(Json(Data {
        data: effective_config(&state, &install),
    }))
}

/// The configSchema of the version the install runs (else the one being rolled out).
fn config_schema(state: &ApiState, install: &PluginInstall) -> Option<Value> {
    let plugin = state.plugin_of(install)?;
    let status = install.status.clone().unwrap_or_default();
    let version = status.running().or(status.rolling_out())?;
    state
        .version_of(&plugin, &version)?
        .spec
        .config_schema
        .clone()
}

/// Checks a merged config against a schema (defaults applied); issues name `config.<field>`.
pub fn check_config(schema: &Value, config: &Value) -> std::result::Result<(), ApiError> {
    let validator = validate::compile_config_schema(schema)
        .map_err(|e| ApiError::Internal(format!("the version's configSchema: {}", e.message)))?;
    let mut value = config.clone();
    validate::apply_config_defaults(schema, &mut value);
    validate::validate_config(&validator, &value).map_err(|errors| {
        ApiError::Invalid(
            errors
                .into_iter()
                .map(|e| {
                    let field = e.field.strip_prefix("spec.").unwrap_or(&e.field).to_owned();
                    Issue::new(field, e.message)
                })
                .collect(),
        )
    })
}

/// Set (merge into) the install's config.
///
/// The body's items are merged into `spec.config` (JSON merge patch: `null` removes a key).
/// The result is checked against the running version's configSchema first: 400 naming the field,
/// and nothing is written. Answers the complete config, defaults filled in (as GET). A plugin token of the install, or a
/// Kubernetes token allowed to `patch plugininstalls` on it.
#[utoipa::path(
    put,
    path = "/api/v2/plugin-services/installs/{installId}/config",
    tag = "seed 003",
    params(("installId" = String, Path, description = "The PluginInstall's metadata.uid")),
    request_body(content = Object, description = "Items to merge; `null` removes one"),
    responses(
        (status = 200, body = Object, description = "`{data: <complete config, schema defaults filled in>}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_config(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Result<Json<Data<Value>>> {
    let install = caller
        .install(&state, "installId", &id, "patch", "plugininstalls")
        .await?;
    let items = Value::Object(json_object(request).await?);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    // The status changes often: a conflict on the resourceVersion means "read and check again".
    for _ in 0..5 {
        let current = fresh_install(&state, &install).await?;
        let mut merged = config_of(&current);
        json_patch::merge(&mut merged, &items);
        if let Some(schema) = config_schema(&state, &current) {
            check_config(&schema, &merged)?;
        }
        let api: Api<PluginInstall> = Api::namespaced(
            state.client().clone(),
            &current.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "spec": {"config": items},
        });
        match with_timeout(api.patch(&current.name_any(), &params, &Patch::Merge(&patch))).await {
            Ok(patched) => {
                return Ok(Json(Data {
                    data: effective_config(&state, &patched),
                }));
            }
            Err(err) if err.is_conflict() => {}
            Err(err) => return Err(kube_failed("patch PluginInstall")(err)),
        }
    }
    Err(ApiError::Conflict("the install changed concurrently too often; send again".into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_name_the_field() {
        let schema =
            json!({"type": "object", "properties": {"retries": {"type": "integer", "maximum": 5}}});
        assert!(check_config(&schema, &json!({"retries": 3})).is_ok());
        let err = check_config(&schema, &json!({"retries": 9})).expect_err("invalid");
        assert_eq!(err.field(), Some("config.retries"));
    }
}
